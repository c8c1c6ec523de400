"""What TIPO changed in a prompt: kept, added and removed pieces, and their HTML for the preview.

A piece is a tag or a sentence: the prompt is cut at commas, newlines and sentence ends outside
brackets and escapes (``(a, b:1.2)``, ``<lora:x:0.5>`` and ``\\(`` stay whole). TIPO reorders
tags, so pieces are matched as a multiset, by text with case, spacing, underscores and a final
sentence mark ignored. A sentence of the user's that TIPO continued (``A girl walks`` →
``A girl walks in the rain.``) is split into its kept start and the added rest.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from typing import Literal

__all__ = ["Piece", "PieceKind", "css_class", "split_pieces", "diff_prompt", "render_diff_html", "render_preview_html"]

PieceKind = Literal["kept", "added", "removed", "separator"]
_OPENERS, _CLOSERS = "([{<", ")]}>"
_SENTENCE_END = ".!?"


def css_class(*names: str) -> str:
    """The one spelling of TIPO's CSS classes and DOM names (``tipo-diff-added``): prefixed, so
    they never meet another extension's; ``javascript/tipo.js`` and ``style.css`` use the same."""
    return "-".join(("tipo", *names))


@dataclass(frozen=True)
class Piece:
    text: str
    kind: PieceKind


def split_pieces(text: str) -> list[str]:
    """Items and separators, alternating, starting with an item (possibly empty); joined they
    give ``text`` back exactly."""
    parts: list[str] = []
    start = depth = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "<" and depth == 0 and text[start:index].strip():
            # An extra network is an item of its own, even when only a space parts it from a tag.
            gap = len(text[start:index]) - len(text[start:index].rstrip())
            if gap:
                parts += [text[start : index - gap], text[index - gap : index]]
                start = index
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth = max(0, depth - 1)
            if char == ">" and depth == 0 and index + 1 < len(text) and text[index + 1] == " ":
                end = index + 1
                while end < len(text) and text[end] == " ":
                    end += 1
                if end < len(text) and text[end] not in ",\n":
                    parts += [text[start : index + 1], text[index + 1 : end]]
                    start = index = end
                    continue
        elif depth == 0 and (char in ",\n" or (char in _SENTENCE_END and index + 1 < len(text) and text[index + 1].isspace())):
            cut = index + (char in _SENTENCE_END)  # a sentence keeps its mark
            end = cut
            while end < len(text) and (text[end] in ",\n" or text[end].isspace()):
                end += 1
            parts += [text[start:cut], text[cut:end]]
            start = index = end
            continue
        index += 1
    parts.append(text[start:])
    return parts


def _key(item: str) -> str:
    return " ".join(item.replace("_", " ").lower().split()).rstrip(_SENTENCE_END).strip()


def _continued(item: str, original: str) -> int:
    """Length of ``original`` at the start of ``item`` when TIPO continued it (0 if not)."""
    head = original.strip()
    if len(head) < 2 or not item.lower().startswith(head.lower().rstrip(_SENTENCE_END)):
        return 0
    size = len(head.rstrip(_SENTENCE_END))
    return size if size < len(item) and not item[size].isalnum() else 0


def diff_prompt(original: str, expanded: str) -> list[Piece]:
    """The expanded prompt's pieces marked kept or added, in its order, then the pieces of the
    original missing from it (marked removed; TIPO removes nothing typed, so these come from
    other rewriting or a different prompt)."""
    typed = [item for item in split_pieces(original)[::2] if _key(item)]
    left = Counter(_key(item) for item in typed)
    pieces: list[Piece] = []
    for index, part in enumerate(split_pieces(expanded)):
        if index % 2:
            pieces.append(Piece(part, "separator"))
            continue
        key = _key(part)
        if not key:
            if part:
                pieces.append(Piece(part, "separator"))
            continue
        if left[key] > 0:
            left[key] -= 1
            pieces.append(Piece(part, "kept"))
            continue
        match = next((t for t in typed if left[_key(t)] > 0 and _continued(part, t)), None)
        if match is None:
            pieces.append(Piece(part, "added"))
            continue
        left[_key(match)] -= 1
        size = _continued(part, match)
        rest = part[size:]
        gap = len(rest) - len(rest.lstrip())  # the space before the continuation is no addition
        pieces.append(Piece(part[:size], "kept"))
        pieces += [Piece(text, kind) for text, kind in ((rest[:gap], "separator"), (rest[gap:], "added")) if text]
    for item in typed:
        if left[_key(item)] > 0:
            left[_key(item)] -= 1
            pieces.append(Piece(item.strip(), "removed"))
    return pieces


_KIND_CLASSES = {
    "kept": css_class("diff", "kept"), "added": css_class("diff", "added"),
    "removed": css_class("diff", "removed"), "separator": css_class("diff", "sep"),
}  # fmt: skip


def _span(piece: Piece) -> str:
    text = html.escape(piece.text).replace("\n", "<br>")
    return f'<span class="{_KIND_CLASSES[piece.kind]}">{text}</span>'


def render_diff_html(pieces: list[Piece]) -> str:
    """The expanded prompt with added pieces highlighted, a count, and the removed pieces."""
    counts = Counter(p.kind for p in pieces)
    shown = "".join(_span(p) for p in pieces if p.kind != "removed")
    removed = [p for p in pieces if p.kind == "removed"]
    summary = f'{counts["added"]} added, {counts["kept"]} kept' + (f", {len(removed)} removed" if removed else "")
    toggle = (  # style.css shows one label, after the view javascript/tipo.js toggles
        f'<button type="button" class="{css_class("diff", "toggle")}" title="Show only what TIPO added, or the whole '
        f'expansion"><span class="{css_class("diff", "show", "added")}">added only</span>'
        f'<span class="{css_class("diff", "show", "all")}">whole expansion</span></button>'
    )
    parts = [f'<div class="{css_class("diff", "head")}"><span>{summary}</span>{toggle}</div>',
             f'<div class="{css_class("diff", "body")}">{shown}</div>']  # fmt: skip
    if removed:
        gone = "".join(_span(p) for p in removed)
        parts.append(f'<div class="{css_class("diff", "removed", "list")}">not in the expansion: {gone}</div>')
    return f'<div class="{css_class("diff")}">{"".join(parts)}</div>'


def render_preview_html(original: str, expanded: str, seed: int | None, error: str | None) -> str:
    """The "Expand now" result: the diff, the seed used (to reuse it), or why there is none."""
    if error is not None:
        return f'<div class="{css_class("preview", "error")}">TIPO kept the prompt: {html.escape(error)}</div>'
    note = "" if seed is None else f'<div class="{css_class("preview", "seed")}">TIPO seed {seed}</div>'
    return render_diff_html(diff_prompt(original, expanded)) + note

