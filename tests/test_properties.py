"""Property tests of the text stages on open-ended input: categorise, plan, render, parse,
post-process and formats accept anything and keep their invariants."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tipo.bans import BanList
from tipo.categorise import CATEGORIES, categorise
from tipo.formats import PLACEHOLDERS, TEMPLATES, apply_template
from tipo.parse import parse_output
from tipo.plan import LENGTHS, Mode, Pass, Task, plan_passes
from tipo.postprocess import TAG_TARGETS, PassInput, post_process
from tipo.render import MetaLines, render_input
from tipo.request import ExpandRequest, prepare

NAMES = {"hatsune miku": "characters", "wlop": "artist", "highres": "meta", "vocaloid": "copyrights"}
text = st.text(max_size=200)
tag = st.one_of(st.sampled_from([*NAMES, "1girl", "masterpiece", "safe", "long_hair", "a_b", "score_9"]), st.text(max_size=20))
length = st.sampled_from(LENGTHS)


@given(st.lists(tag, max_size=30))
def test_categorise_keeps_every_nonblank_tag_once(tags):
    out = categorise(tags, NAMES.get)
    assert list(out) == list(CATEGORIES)
    assert sum(len(v) for v in out.values()) == sum(1 for t in tags if t.strip())


@given(st.sampled_from(list(Mode)), st.booleans(), st.booleans(), length, length, text)
def test_plan_is_never_empty_and_uses_the_right_lengths(mode, has_tags, has_nl, tag_len, nl_len, template):
    passes = plan_passes(mode, has_tags=has_tags, has_nl=has_nl, tag_length=tag_len, nl_length=nl_len, template=template)
    assert 1 <= len(passes) <= 3
    for step in passes:
        assert step.length == (tag_len if step.task.writes_tags else nl_len)


@given(st.sampled_from(list(Task)), length, st.booleans(), text, text, text)
def test_render_layout(task, length, expand, tags, nl, artist):
    out = render_input(MetaLines(artist=artist.replace("\n", " ")), tags, nl, Pass(task, length, expand))
    assert f"target: <|{length}|>" in out
    if task.token:
        assert task.token in out
    if not expand:
        assert out.endswith(f"{task.fields[-1]}:")


@settings(max_examples=300)
@given(text)
def test_parse_accepts_any_text(body):
    parsed = parse_output(body, NAMES.get)
    for key, value in parsed.items():
        assert isinstance(value, (list, str)), key


@settings(max_examples=200)
@given(st.lists(tag, max_size=20), st.lists(tag, max_size=80), st.sampled_from(list(Task)), length)
def test_post_process_keeps_inputs_and_bounds(inputs, generated, task, length):
    fed = ", ".join(t.strip() for t in inputs if t.strip() and "," not in t)
    body = "tag: " + ", ".join(t for t in generated if "\n" not in t) + "\nshort: One. Two\nlong: Three"
    out = post_process(parse_output(body, NAMES.get), PassInput(fed, ""), task, length, BanList())
    general = out["general"]
    assert len(general) == len(set(general))
    fed_tags = {x.strip() for x in fed.split(",")}
    kept = [t for t in general if t in fed_tags]
    assert len(general) - len(kept) <= max(TAG_TARGETS[length][1] - len(kept), 0)
    seen = parse_output(body, NAMES.get).get("general", [])
    assert set(kept) == {t for t in seen if t in fed_tags}, "every input tag the model kept is kept"


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(PLACEHOLDERS), st.one_of(text, st.lists(text, max_size=5))), st.sampled_from([*TEMPLATES.values(), "<|general|>, <|extended|>.", "x <|nope|> <|general|>"]))
def test_templates_leave_no_known_placeholder(values, template):
    out = apply_template(template, values)
    from_values = "".join(v if isinstance(v, str) else "".join(v) for v in values.values())
    for name in PLACEHOLDERS:
        if f"<|{name}|>" not in from_values:
            assert f"<|{name}|>" not in out
    assert not re.search(r"\n{3,}", out.replace("\x00", "")) or "\n\n\n" in from_values


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=60), st.sampled_from(list(Mode)), length, length)
def test_prepare_accepts_any_prompt(prompt, nl, mode, tag_len, nl_len):
    request = ExpandRequest(prompt, nl_prompt=nl, mode=mode, template="<|general|>" if mode is Mode.CUSTOM else "",
                            tag_length=tag_len, nl_length=nl_len, seed=0)  # fmt: skip
    prepared = prepare(request, NAMES.get)
    first = prepared.first_input()
    assert "target: <|" in first and prepared.passes
