"""One test per defect of the reference listed in the format sheet: we do not reproduce them."""

from __future__ import annotations

import pytest

from tipo.bans import BanList
from tipo.errors import BanPatternError
from tipo.formats import TEMPLATES
from tipo.parse import parse_output
from tipo.plan import Mode, Task, plan_passes
from tipo.postprocess import PassInput, post_process
from tipo.request import ExpandRequest, pass_seed, prepare, resolve_seed
from tipo.restore import compose_prompt
from tipo.syntax import parse_prompt


def lookup(name: str) -> str | None:
    return {"dre": "artist"}.get(name)


def test_final_tag_ending_in_s_keeps_its_letters():
    """Reference: str.strip('<s>') turned a final 'glass' into 'gla'."""
    assert parse_output("target: <|long|>\ntag: 1girl, glass", lookup)["general"] == ["glass"]


def test_final_tag_keeps_its_category():
    """Reference: 'dress</s>' became 'dre', an artist name."""
    parsed = parse_output("tag: solo, dress", lookup)
    assert parsed["general"] == ["solo", "dress"] and parsed["artist"] == []


def test_empty_token_is_kept_whole():
    """Reference: the strip also ate the '>' of a final '<|empty|>'."""
    assert "extended" not in parse_output("tag: a\nshort: <|empty|>", lookup)


def test_new_tags_are_cut_with_the_tag_maximum_not_the_nl_maximum():
    """Reference: kept 8 - inputs (NL max of 'long') instead of 54 - inputs."""
    new = ", ".join(f"t{i}" for i in range(60))
    out = post_process(parse_output(f"tag: a, {new}", lookup), PassInput("a", ""), Task.TAGS, "long", BanList())
    assert len(out["general"]) == 54


def test_invalid_regex_is_a_clear_error_not_a_dead_request():
    with pytest.raises(BanPatternError, match="/\\[/"):
        prepare(ExpandRequest("1girl", ban_tags=("/[/",)), lookup)


def test_seed_zero_is_a_seed():
    """Reference: seed 0 meant 'random'."""
    assert resolve_seed(0) == 0
    assert pass_seed(0, 0, 0) == pass_seed(0, 0, 0) != pass_seed(1, 0, 0)
    assert resolve_seed(-1) >= 0


def test_break_before_the_first_tag():
    """Reference: IndexError."""
    pieces = parse_prompt("BREAK, 1girl, solo").pieces
    out = compose_prompt(pieces, "", {"general": ["smile"]}, TEMPLATES[Mode.TAG_ONLY], lookup)
    assert out.startswith("BREAK 1girl")


def test_break_inside_nl_stays_a_separate_word():
    """Reference: 'figuresBREAKa'."""
    pieces = parse_prompt("Two figures stand here. BREAK A cat sleeps on the wall.").pieces
    out = compose_prompt(pieces, "", {}, TEMPLATES[Mode.BOTH_TAG_FIRST], lookup)
    assert " BREAK " in out and "BREAKA" not in out and "hereBREAK" not in out


def test_weighted_nl_missing_from_the_output_does_not_crash():
    """Reference: crashed when the output no longer held '(smiling:1.2)'."""
    pieces = parse_prompt("1girl, A girl is (smiling:1.2) at the sea.").pieces
    out = compose_prompt(pieces, "", {"extended": "Something else entirely"}, TEMPLATES[Mode.BOTH_TAG_FIRST], lookup)
    assert "(smiling:1.2)" in out


@pytest.mark.parametrize("blank", [" ", "( )", "\n\t"])
def test_blank_nl_is_no_nl(blank):
    """Reference: a blank NL switched off the extended pass, and NL output then crashed."""
    prepared = prepare(ExpandRequest("1girl", nl_prompt=blank), lookup)
    assert [p.task for p in prepared.passes] == [Task.TAGS, Task.TAG_TO_LONG]
    out = post_process(parse_output("tag: 1girl\nshort: New text", lookup), PassInput("1girl", ""), Task.SHORT_TO_TAG, "long", BanList())
    assert out["extended"] == "New text"


def test_nl_is_checked_against_the_nl_ban_list():
    """Reference: NL was never checked."""
    bans = BanList.compile(nl_bans=["umbrella"])
    out = post_process(parse_output("tag: a\nlong: She holds an umbrella. The sky is blue", lookup), PassInput("a", ""), Task.TAG_TO_LONG, "long", bans)
    assert out["generated"] == "The sky is blue"


def test_nl_input_is_stripped_in_the_model_input():
    """Reference: wrote the NL as given, trailing newline and all."""
    prepared = prepare(ExpandRequest("1girl", nl_prompt="  A cat.  \n", mode=Mode.BOTH_TAG_FIRST), lookup)
    assert "short: A cat.\n" in prepared.first_input()


def test_plan_is_the_reference_plan_for_every_preset():
    for mode in (Mode.TAG_ONLY, Mode.BOTH_NL_FIRST):
        passes = plan_passes(mode, has_tags=True, has_nl=True, tag_length="long", nl_length="long", template=TEMPLATES[mode])
        assert [p.task for p in passes] == [Task.SHORT_TO_TAG, Task.TAG_TO_LONG]
