"""The preview's diff: what TIPO kept, added and removed, and its HTML (tipo/diff.py)."""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tipo.diff import (
    Piece,
    css_class,
    diff_prompt,
    render_diff_html,
    render_preview_html,
    split_pieces,
)


def kinds(original: str, expanded: str) -> list[tuple[str, str]]:
    return [(p.kind, p.text) for p in diff_prompt(original, expanded) if p.kind != "separator"]


def visible_text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup.replace("<br>", "\n")))


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("1girl, solo", ["1girl", ", ", "solo"]),
        ("(a, b:1.2), <lora:x:0.5>, c", ["(a, b:1.2)", ", ", "<lora:x:0.5>", ", ", "c"]),
        ("a,\n\nA girl walks. She smiles", ["a", ",\n\n", "A girl walks.", " ", "She smiles"]),
        ("score 1.5, x", ["score 1.5", ", ", "x"]),
        ("\\(a\\), b", ["\\(a\\)", ", ", "b"]),
        ("", [""]),
        (", a,", ["", ", ", "a", ",", ""]),
    ],
)
def test_split_keeps_brackets_and_escapes_whole(text, parts):
    assert split_pieces(text) == parts
    assert "".join(split_pieces(text)) == text


def test_reordered_tags_are_kept_and_new_ones_added():
    assert kinds("1girl, solo, (smile:1.2)", "solo, 1girl, long hair, (smile:1.2), blue eyes") == [
        ("kept", "solo"), ("kept", "1girl"), ("added", "long hair"), ("kept", "(smile:1.2)"), ("added", "blue eyes"),
    ]  # fmt: skip


def test_case_spacing_and_underscores_do_not_count_as_changes():
    assert kinds("Long_Hair,  blue  eyes", "long hair, blue eyes") == [("kept", "long hair"), ("kept", "blue eyes")]


def test_a_continued_sentence_is_split_into_kept_and_added():
    assert kinds("1girl, A girl walks", "1girl,\n\nA girl walks in the rain. She smiles.") == [
        ("kept", "1girl"), ("kept", "A girl walks"), ("added", "in the rain."), ("added", "She smiles."),
    ]  # fmt: skip
    assert kinds("A girl walks.", "A girl walks. She smiles.") == [("kept", "A girl walks."), ("added", "She smiles.")]
    assert kinds("cat", "catgirl") == [("added", "catgirl"), ("removed", "cat")], "a word boundary is needed"


def test_repeated_pieces_are_matched_as_a_multiset():
    assert kinds("a, a", "a, b, a, a") == [("kept", "a"), ("added", "b"), ("kept", "a"), ("added", "a")]


def test_pieces_missing_from_the_expansion_are_listed_as_removed():
    assert kinds("1girl, hat, solo", "1girl, solo") == [("kept", "1girl"), ("kept", "solo"), ("removed", "hat")]


def test_html_highlights_added_pieces_and_escapes_everything():
    markup = render_diff_html(diff_prompt("<b>, 1girl", "<b>, 1girl, <script>x</script>, a & b"))
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    assert f'<span class="{css_class("diff", "added")}">a &amp; b</span>' in markup
    assert f'<span class="{css_class("diff", "kept")}">&lt;b&gt;</span>' in markup
    assert "2 added, 2 kept" in markup and css_class("diff", "toggle") in markup


def test_preview_html_names_the_seed_or_the_error():
    assert "TIPO seed 42" in visible_text(render_preview_html("a", "a, b", 42, None))
    failed = render_preview_html("a", "a", None, "model <x> not found")
    assert "TIPO kept the prompt: model <x> not found" in visible_text(failed) and "<x>" not in failed
    assert css_class("diff") not in failed


def test_css_classes_share_one_prefix():
    assert css_class("diff", "added") == "tipo-diff-added" and css_class("nl", "prompt") == "tipo-nl-prompt"


_TEXT = st.lists(st.sampled_from(list("ab ,.\n()<>:\\_") + ["girl", "Sun"]), max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@given(_TEXT, _TEXT)
def test_the_diff_shows_the_expansion_exactly_and_accounts_for_every_typed_piece(original, expanded):
    pieces = diff_prompt(original, expanded)
    assert "".join(p.text for p in pieces if p.kind != "removed") == expanded
    assert visible_text(render_diff_html(pieces)).count("\n") >= expanded.count("\n")
    assert all(isinstance(p, Piece) and p.text for p in pieces)
    typed = [item for item in split_pieces(original)[::2] if " ".join(item.replace("_", " ").split()).rstrip(".!?").strip()]
    assert sum(p.kind in ("kept", "removed") for p in pieces) == len(typed), "each typed piece is kept or removed, once"
    if original.strip() and original == expanded:
        assert not [p for p in pieces if p.kind in ("added", "removed")]


def test_an_extra_network_parted_by_a_space_is_its_own_piece():
    """The restored prompt may join a LoRA to the tag before it with a space; it is still kept."""
    assert split_pieces("a <lora:x:0.8>, b") == ["a", " ", "<lora:x:0.8>", ", ", "b"]
    assert split_pieces("<lora:x:0.8> a, b") == ["<lora:x:0.8>", " ", "a", ", ", "b"]
    kinds = [(p.text, p.kind) for p in diff_prompt("a, <lora:x:0.8>", "a <lora:x:0.8>, b") if p.kind != "separator"]
    assert kinds == [("a", "kept"), ("<lora:x:0.8>", "kept"), ("b", "added")]
