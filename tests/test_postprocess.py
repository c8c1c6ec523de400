"""Post-processing of one pass: fields, order, duplicates, length bounds, retry criterion."""

from __future__ import annotations

from tipo.bans import BanList
from tipo.parse import parse_output
from tipo.plan import Task
from tipo.postprocess import PassInput, meets_target, post_process, split_sentences

NONE = BanList()


def lookup(name: str) -> str | None:
    return {"wlop": "artist", "hatsune miku": "characters"}.get(name)


def run(text: str, tags: str = "", nl: str = "", task: Task = Task.TAGS, length="long", bans: BanList = NONE):
    return post_process(parse_output(text, lookup), PassInput(tags, nl), task, length, bans)


def test_user_tags_first_in_their_order_then_new_in_model_order():
    out = run("tag: b, a, new1, a, new2, new1", tags="a, b")
    assert out["general"] == ["b", "a", "new1", "new2"]


def test_new_tags_are_cut_at_the_tag_maximum():
    new = ", ".join(f"t{i}" for i in range(80))
    out = run(f"tag: a, b, {new}", tags="a, b", length="very_short")
    assert len(out["general"]) == 18
    out = run(f"tag: a, b, {new}", tags="a, b", length="very_long")
    assert len(out["general"]) == 72


def test_sentences_are_cut_at_the_nl_maximum_and_inputs_kept():
    text = "short: " + ". ".join(f"S{i}" for i in range(12))
    out = run(text, nl="S0", task=Task.SHORT_TO_TAG, length="short")
    assert split_sentences(out["extended"]) == ["S0", "S1", "S2", "S3"]


def test_task_keeps_only_its_nl_fields():
    text = "tag: a\nshort: s1\nlong: l1"
    assert "extended" not in run(text) or run(text)["extended"] == ""
    out = run(text, task=Task.TAG_TO_LONG)
    assert out["generated"] == "l1" and out["extended"] == ""


def test_bans_remove_new_tags_but_never_the_users():
    out = run("tag: hat, cap, solo", tags="hat", bans=BanList.compile(["hat", "cap"]))
    assert out["general"] == ["hat", "solo"]


def test_meets_target_counts_special_and_general_for_tags():
    assert meets_target({"special": ["1girl"] * 2, "general": ["x"] * 4}, Task.TAGS, "very_short")
    assert not meets_target({"general": ["x"] * 5}, Task.TAGS, "very_short")


def test_meets_target_counts_real_sentences():
    """The reference counted an empty text as one sentence."""
    assert not meets_target({"extended": ""}, Task.TAG_TO_LONG, "very_short")
    assert meets_target({"extended": "One"}, Task.TAG_TO_LONG, "very_short")
    assert not meets_target({"generated": "One. Two. Three"}, Task.TAG_TO_LONG, "long")
    assert meets_target({"extended": "1. 2. 3. 4"}, Task.TAG_TO_LONG, "long"), "long without generated: judged on short"
