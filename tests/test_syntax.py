"""Reading WebUI prompt syntax, and keeping every piece of it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tipo.formats import TEMPLATES
from tipo.plan import Mode
from tipo.restore import compose_prompt
from tipo.syntax import Kind, clean_text, escape_tag, parse_prompt


def kinds(prompt: str) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(p.kind.value, p.text, p.tags) for p in parse_prompt(prompt).pieces]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("1girl, solo", [("tags", "1girl", ("1girl",)), ("tags", "solo", ("solo",))]),
        ("(1girl:1.2), [solo], ((smile))", [("tags", "(1girl:1.2)", ("1girl",)), ("tags", "[solo]", ("solo",)), ("tags", "((smile))", ("smile",))]),
        ("(red hair, blue eyes:1.2)", [("tags", "(red hair, blue eyes:1.2)", ("red hair", "blue eyes"))]),
        (r"saber \(fate\)", [("tags", r"saber \(fate\)", ("saber (fate)",))]),
        ("saber (fate)", [("tags", "saber (fate)", ("saber (fate)",))]),
        ("1girl <lora:x:0.8>", [("tags", "1girl", ("1girl",)), ("network", "<lora:x:0.8>", ())]),
        ("<hypernet:h:1>, solo", [("network", "<hypernet:h:1>", ()), ("tags", "solo", ("solo",))]),
        ("a BREAK b", [("tags", "a", ("a",)), ("break", "BREAK", ()), ("tags", "b", ("b",))]),
        ("BREAK, a", [("break", "BREAK", ()), ("tags", "a", ("a",))]),
        ("a AND b", [("tags", "a", ("a",)), ("and", "AND", ()), ("tags", "b", ("b",))]),
        ("BREAKFAST, ANDROID", [("tags", "BREAKFAST", ("BREAKFAST",)), ("tags", "ANDROID", ("ANDROID",))]),
        ("__colors__ hair, {red|blue, green} eyes", [("protected", "__colors__ hair", ()), ("protected", "{red|blue, green} eyes", ())]),
        ("", []),
        (" , ,, ", []),
        ("((((", [("protected", "((((", ())]),
        ("x:1.2)", [("tags", "x:1.2)", ("x:1.2)",))]),
        ("tag\nwith newline, b", [("tags", "tag\nwith newline", ("tag\nwith newline",)), ("tags", "b", ("b",))]),
    ],
)
def test_pieces(prompt, expected):
    assert kinds(prompt) == expected


def test_protected_words_are_not_sent_to_the_model():
    parsed = parse_prompt("easynegative, 1girl", protected_words=["easynegative"])
    assert [p.kind for p in parsed.pieces] == [Kind.PROTECTED, Kind.TAGS]
    assert parsed.tags == ["1girl"]


@pytest.mark.parametrize(
    ("prompt", "sentences", "tags"),
    [
        ("1girl, A girl stands in the rain.", ["A girl stands in the rain."], ["1girl"]),
        ("A girl, standing in the rain, looks up., solo", ["A girl, standing in the rain, looks up."], ["solo"]),
        ("a girl standing alone in the quiet rain", ["a girl standing alone in the quiet rain"], []),
        ("looking at viewer, Hatsune Miku", [], ["looking at viewer", "Hatsune Miku"]),
        ("(smiling:1.2) girl walks home. She is happy., 1girl", ["smiling girl walks home. She is happy."], ["1girl"]),
    ],
)
def test_sentences_are_told_from_tags(prompt, sentences, tags):
    parsed = parse_prompt(prompt)
    assert parsed.sentences == sentences
    assert parsed.tags == tags


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("(a:1.3)", "a"),
        ("[[a]]", "a"),
        (r"\(a\) \[b\] \\", r"(a) [b] \ "[:-1]),
        ("a) b]", "a) b]"),
        ("(a:bad)", "a:bad"),
        ("a BREAK b", "a   b"),
    ],
)
def test_clean_text_reads_like_the_webui(text, clean):
    assert clean_text(text) == clean


def test_escape_tag():
    assert escape_tag("saber (fate)") == r"saber \(fate\)"
    assert escape_tag("[a]\\") == r"\[a\]\\"


# -- property: no user token is ever lost ---------------------------------------------------

_word = st.text(st.characters(codec="utf-8", exclude_characters="()[]{}<>:,\\|_\n\r"), min_size=1, max_size=12).map(str.strip).filter(bool)
_piece = st.one_of(
    _word,
    st.tuples(_word, st.floats(0.1, 2.0).map(lambda f: f"{f:.1f}")).map(lambda t: f"({t[0]}:{t[1]})"),
    _word.map(lambda w: f"[{w}]"),
    _word.map(lambda w: f"(({w}))"),
    _word.map(lambda w: f"{w} \\(x\\)"),
    st.tuples(st.sampled_from(["lora", "lyco", "hypernet"]), st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)).map(lambda t: f"<{t[0]}:{t[1]}:0.8>"),
    st.just("BREAK"),
    st.from_regex(r"__[a-z]{1,6}__", fullmatch=True),
    st.from_regex(r"\{[a-z]{1,4}\|[a-z]{1,4}\}", fullmatch=True),
)
_model_tags = st.lists(st.sampled_from(["long hair", "smile", "sky", "saber (fate)", "1girl", "<|empty|>"]), max_size=6)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_piece, max_size=12), new=_model_tags, mode=st.sampled_from(list(TEMPLATES)))
def test_every_user_piece_survives_composition(pieces, new, mode):
    prompt = ", ".join(pieces)
    parsed = parse_prompt(prompt)
    final = {"general": new, "extended": "A new sentence. Another one", "generated": "Long text here"}
    output = compose_prompt(parsed.pieces, "", final, TEMPLATES[mode], lambda _: None)
    for piece in parsed.pieces:
        if not (mode is Mode.NL_ONLY and piece.kind is Kind.TAGS):
            assert piece.text in output, (prompt, piece, output)
    assert output.count("BREAK") >= prompt.count("BREAK")
