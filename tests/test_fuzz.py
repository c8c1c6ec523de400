"""Fuzzing, CI profile (issue 6, item 1): a few thousand drawn prompts and arguments through the
argument schema, the dry run, the pipeline with hostile model text and the pipeline with the
tiny real model; the oracles live in ``tests/strategies.py``. ``benchmarks/fuzz.py`` runs the
same with 100,000 cases of each kind. Regression tests for what fuzzing found come last, each
named after its defect."""

from __future__ import annotations

from pathlib import Path

import pytest
import strategies as s
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tipo.args import TipoArgs
from tipo.engine.base import SamplingSettings
from tipo.errors import InvalidArgument
from tipo.pipeline import expand_batch
from tipo.plan import Mode
from tipo.request import ExpandRequest, prepare
from tipo.syntax import Kind, literal_text, parse_prompt
from tipo.tokenizer import TipoTokenizer

FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "tipo-tokenizer"
NAMES = {"hatsune miku": "characters", "wlop": "artist", "highres": "meta", "vocaloid": "copyrights"}
lookup = NAMES.get


def fuzz(examples: int) -> settings:
    """No deadline (2 shared CI cores) and big drawn prompts are the point."""
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )


@pytest.fixture(scope="module")
def tokenizer() -> TipoTokenizer:
    return TipoTokenizer.from_dir(FIXTURE_TOKENIZER)


def assert_no_failures(found: list[s.Failure], case: object) -> None:
    assert not found, f"{found} for {case!r}"[:3000]


# -- the fuzz profile ------------------------------------------------------------------------


@fuzz(500)
@given(s.args_dicts())
def test_named_args_are_valid_or_refused_by_name(drawn):
    assert_no_failures(s.check_args(*drawn, lookup), drawn)


@fuzz(500)
@given(s.request_kwargs())
def test_request_fields_are_valid_or_refused_by_name(drawn):
    assert_no_failures(s.check_request_kwargs(*drawn, lookup), drawn)


@fuzz(300)
@given(s.pipeline_requests(max_chars=4000))
def test_dry_run_accepts_any_prompt(request):
    try:
        prepared = prepare(request, lookup)
    except InvalidArgument as error:
        assert any(name in str(error) for name in s.expected_errors(request)), error
        return
    assert not s.expected_errors(request)
    assert "target: <|" in prepared.first_input()
    for piece in prepared.parsed.pieces:
        assert piece.text, "no empty pieces"
        assert piece.kind is not Kind.TAGS or piece.tags


@fuzz(300)
@given(s.pipeline_requests(max_chars=3000, max_new_tokens=96), s.continuations())
def test_hostile_model_text_keeps_every_user_piece(tokenizer, request, continuation):
    (result,) = expand_batch([request], s.HostileEngine(tokenizer, continuation), tokenizer, lookup)
    assert_no_failures(s.check_expansion(request, result, lookup), (request, continuation))


def test_tiny_model_batches_keep_every_user_piece(tiny_model_dir):
    """Seeded cases in the product's batched calls, as benchmarks/fuzz.py runs them."""
    from tipo.engine.fast import load_fast_engine

    engine, tokenizer = load_fast_engine(tiny_model_dir, "cpu")
    requests = [s.draw_pipeline_request(s.RandomSource(f"ci:{i}"), max_new_tokens=3) for i in range(48)]
    long_tags = ", ".join(f"(tag{i}:1.1), <lora:n{i}:1>, solo" for i in range(700))[:20_000]
    requests.append(ExpandRequest(long_tags, seed=1, sampling=SamplingSettings(max_new_tokens=2), max_retry=0))
    for first in (0, 25):
        batch = requests[first : first + 25]
        for request, result in zip(batch, expand_batch(batch, engine, tokenizer, lookup)):
            assert_no_failures(s.check_expansion(request, result, lookup), request)
    assert len(requests[-1].prompt) == 20_000



def test_overlong_meta_lines_are_cut_for_the_model(tokenizer):
    """20,000 characters of artist names: the artist line alone overflows the context."""
    request = ExpandRequest(", ".join(["wlop"] * 4000), seed=1, max_retry=0)
    (result,) = expand_batch([request], s.HostileEngine(tokenizer, ", smile"), tokenizer, lookup)
    assert result.ok, result.error



def test_input_one_token_short_of_the_context_does_not_sink_the_batch(tiny_model_dir):
    """max_new_tokens=1 let the input fill 1,023 of 1,024 tokens; the engine, which writes at
    least 2, refused the call, and every row of the batch kept its prompt."""
    from tipo.engine.fast import load_fast_engine

    engine, tokenizer = load_fast_engine(tiny_model_dir, "cpu")
    one = SamplingSettings(max_new_tokens=1)
    full = ExpandRequest(
        "1girl, " + ", ".join(["solo"] * 499) + ", xyz", mode=Mode.TAGS, seed=1, max_retry=0, sampling=one
    )
    assert len(tokenizer.encode(prepare(full, lookup).first_input())) == 1023
    results = expand_batch([full, ExpandRequest("1girl", seed=2, max_retry=0, sampling=one)], engine, tokenizer, lookup)
    assert all(r.ok for r in results), [r.error for r in results]


# -- regressions found by fuzzing ------------------------------------------------------------


def test_unpaired_surrogate_fails_its_row_alone(tokenizer):
    """An unpaired surrogate (JSON "\\ud800") made the tokenizer raise and sank the whole batch."""
    engine = s.HostileEngine(tokenizer, ", smile")
    bad, good = expand_batch(
        [ExpandRequest("1girl, \ud800 x", seed=1), ExpandRequest("1girl", seed=2)], engine, tokenizer, lookup
    )
    assert bad.prompt == "1girl, \ud800 x" and "prompt" in bad.error and "surrogate" in bad.error
    assert good.ok and "smile" in good.prompt


def test_user_text_that_looks_like_a_placeholder_is_kept(tokenizer):
    """A typed '<|general|>' or '<||>' was dropped with the model's <|…|> tags."""
    request = ExpandRequest("1girl, <|general|>, <||>, solo", seed=1, max_retry=0)
    (result,) = expand_batch([request], s.HostileEngine(tokenizer, ", <|quality|>, smile"), tokenizer, lookup)
    assert "<|general|>" in result.prompt and "<||>" in result.prompt
    assert "<|quality|>" not in result.prompt and "smile" in result.prompt


def test_sentence_without_a_slot_keeps_what_it_carried(tokenizer):
    """A template with no NL or general slot dropped the sentence and its LoRA with it."""
    request = ExpandRequest("A girl walks in the rain today and smiles, <lora:x:1>, __w__", mode=Mode.CUSTOM,
                            template="<|special|>", seed=1, max_retry=0)  # fmt: skip
    (result,) = expand_batch([request], s.HostileEngine(tokenizer, ""), tokenizer, lookup)
    assert result.ok and "<lora:x:1>" in result.prompt and "__w__" in result.prompt


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("<|extended|>", "Wait..."),
        ("<|extended|>.", "Wait..."),
        ("<|extended|>.", "She runs!"),
        ("<|extended|>.", "A girl walks in the rain."),
    ],
)
def test_sentence_end_typed_by_the_user_is_kept(tokenizer, template, expected):
    """The user's final '.', '...' or '!' was stripped (and a template '.' then doubled)."""
    request = ExpandRequest("1girl", nl_prompt=expected, mode=Mode.CUSTOM, template=template, seed=1, max_retry=0)
    (result,) = expand_batch([request], s.HostileEngine(tokenizer, ""), tokenizer, lookup)
    assert result.prompt == expected


def test_model_text_cannot_add_webui_syntax():
    """Model tags and sentences went in unescaped: '(' opened emphasis, '<lora:…>' loaded a LoRA."""
    assert literal_text("a (b:1.2) [c] {d|e} \\") == r"a \(b:1.2\) \[c\] \{d|e\} \\"
    assert literal_text("x <lora:a:1> <<lora:b:1>lora:c:1> <d:e") == "x   d:e", "removed until none is left"
    assert literal_text("__w__, ___v___, AND, BREAKING BREAK") == "_w_, _v_, and, BREAKING break"
    assert literal_text("<|general|>, <|<|x|>|>, >_<") == ", , >_<"
    text = literal_text("a (b) {c|d} <lora:x:1> __w__ AND BREAK <|general|> [e] <ab:c")
    assert s.syntax_counts(text) == dict.fromkeys(
        ["()", "[]", "{}", "network", "wildcard", "keyword", "placeholder"], 0
    )


def test_hostile_model_text_is_literal_in_the_output(tokenizer):
    continuation = ", (evil:1.5), <lora:evil:1>, __wild__, {a|b}, AND x\nlong: A (loud) day. BREAK here <|general|>"
    request = ExpandRequest("1girl, (solo:1.2)", seed=1, max_retry=0, sampling=SamplingSettings(max_new_tokens=200))
    (result,) = expand_batch([request], s.HostileEngine(tokenizer, continuation), tokenizer, lookup)
    assert result.ok and "(solo:1.2)" in result.prompt and r"\(evil:1.5\)" in result.prompt
    assert_no_failures(s.check_expansion(request, result, lookup), result.prompt)


def test_unclosed_network_opener_goes_last(tokenizer):
    """'<lora:x' typed without '>' became a network with the next '>' the model wrote (">_<")."""
    request = ExpandRequest("<lora:x, 1girl", seed=1, max_retry=0)
    (result,) = expand_batch([request], s.HostileEngine(tokenizer, ", >_<, smile"), tokenizer, lookup)
    assert result.prompt.endswith("<lora:x, 1girl") and "smile" in result.prompt
    assert s.syntax_counts(result.prompt)["network"] == 0
    assert parse_prompt("a <b:c> (d <e:f").pieces == (parse_prompt("a <b:c> (d <e:f").pieces[0],)


def test_unclosed_bracket_goes_last(tokenizer):
    """'solo, (1girl' came out as '(1girl, …, solo, …': the open '(' then weighed solo and the
    model's tags; as typed it ends the prompt and weighs only itself."""
    request = ExpandRequest("solo, (1girl", seed=1, max_retry=0)
    (result,) = expand_batch([request], s.HostileEngine(tokenizer, ", smile"), tokenizer, lookup)
    assert result.prompt.startswith("solo") and result.prompt.endswith("(1girl")


def test_networks_are_read_first_at_any_depth():
    """A network inside brackets was split at its commas, unlike A1111 which reads networks first."""
    pieces = parse_prompt("w, ([]<a:),((>").pieces
    assert [p.text for p in pieces] == ["w", "([]<a:),((>"] and pieces[1].kind is Kind.PROTECTED
    assert [p.kind for p in parse_prompt("(x <lora:a,b:1>:1.2), y").pieces] == [Kind.TAGS, Kind.NETWORK, Kind.TAGS]


def test_round_and_square_brackets_are_counted_apart():
    """One shared depth cut '(56, [[x]]]], y:-1)' at its inner comma: the ']]' closed the '('
    and the weight lost its text. A1111 keeps a stack per kind."""
    assert [p.text for p in parse_prompt("a, (56, [[x]]]], y:-1), b").pieces] == ["a", "(56, [[x]]]], y:-1)", "b"]


def test_network_with_unbalanced_brackets_stays_in_place():
    """Moving '<a:{>' behind the rest of '<a:{>}' turned a balanced '{…}' inside out."""
    assert [p.text for p in parse_prompt("<a:{>}").pieces] == ["<a:{>}"]
    assert [p.text for p in parse_prompt("x, <a:{>, }").pieces] == ["x", "<a:{>, }"], "its braces count"


@pytest.mark.parametrize(
    ("values", "field"),
    [({1: 2, "x": 3}, "1"), ({None: 1}, "None"), ({"temperature": 10**400}, "temperature"),
     ({"top_p": -(10**400)}, "top_p"), (["seed"], "object")],
)  # fmt: skip
def test_odd_named_args_are_refused_by_name(values, field):
    """Non-string keys raised TypeError from sorted(); ints beyond a float raised OverflowError."""
    with pytest.raises(InvalidArgument, match=field):
        TipoArgs.from_dict(values)


@pytest.mark.parametrize(
    "kwargs",
    [{"prompt": None}, {"nl_prompt": 1}, {"template": b"x"}, {"ban_tags": "hat"}, {"protected_words": None},
     {"sampling": None}, {"max_retry": True}],
)  # fmt: skip
def test_request_fields_of_the_wrong_type_are_refused_by_name(kwargs):
    """They raised TypeError deep in prepare, or (a str of bans) banned single letters."""
    with pytest.raises(InvalidArgument, match=next(iter(kwargs))):
        ExpandRequest(**kwargs)


@pytest.mark.parametrize("kwargs", [{"temperature": "0.5"}, {"top_p": None}, {"min_p": [0.1]}])
def test_sampling_settings_of_the_wrong_type_are_refused_by_name(kwargs):
    """SamplingSettings(temperature="0.5") raised TypeError from '<' instead of naming the field."""
    with pytest.raises(InvalidArgument, match=next(iter(kwargs))):
        SamplingSettings(**kwargs)


def test_script_args_ban_pattern_error_names_ban_tags():
    from tipo.extension import parse_script_args

    with pytest.raises(InvalidArgument, match="ban_tags"):
        parse_script_args([{"ban_tags": "/(/"}])


def test_bad_ban_pattern_error_names_ban_tags():
    with pytest.raises(InvalidArgument, match="ban_tags.*'/\\(/'"):
        prepare(ExpandRequest("1girl", ban_tags=("/(/",)), lookup)


@given(st.text(max_size=40))
def test_literal_text_leaves_no_syntax(text):
    assert s.syntax_counts(literal_text(text)) == s.syntax_counts("")
