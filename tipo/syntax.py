"""Read a prompt as the WebUI writes it, and keep every piece of the user's own syntax.

A prompt is cut into *pieces* at top-level commas (a comma inside brackets or ``{}`` does not
cut), at ``BREAK`` and at ``AND``. Each piece keeps its verbatim text, so the final prompt can
put it back exactly as typed, weights and escapes included; the model only sees the *clean
tags* of a piece, read the way A1111's attention parser reads them (format sheet, "Input
categories"): brackets and weights removed, ``\\(`` ``\\)`` unescaped. One deliberate
difference: an unescaped ``saber (fate)`` is read as the Danbooru name ``saber (fate)`` (the
reference reads two tags, ``saber`` and ``fate``), since that is what users who paste tags mean.

Pieces the model must not see are *protected* and travel with their neighbour: extra networks
(``<lora:name:0.8>``), wildcards (``__name__``), variants (``{a|b}``) and the embedding names
the caller passes in.

Natural-language sentences typed among the tags are recognised by a heuristic, documented on
:func:`_mark_sentences`; the explicit NL prompt is always NL.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

__all__ = ["Kind", "Piece", "ParsedPrompt", "parse_prompt", "clean_text", "escape_tag"]

_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_WILDCARD = re.compile(r"__[^\s_,][^\s,]*?__")
_BREAK_OR_AND = re.compile(r"\b(BREAK|AND)\b")
# A1111's attention grammar: escapes, brackets, ':weight)' closers, plain text, a lone ':'.
_ATTENTION = re.compile(
    r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:",
)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
_WORD = re.compile(r"[^\W\d_][\w'-]*")
# ``saber (fate)`` typed unescaped: a Danbooru name with its qualifier, not emphasis.
_QUALIFIED_NAME = re.compile(r"([^()\[\]\\:,<>]*[^\s()\[\]\\:,<>])\s+\(([^()\[\]\\:,<>]+)\)")


class Kind(str, enum.Enum):
    """What a piece is; only ``TAGS`` and ``NL`` pieces reach the model."""

    TAGS = "tags"
    NL = "nl"
    NETWORK = "network"
    PROTECTED = "protected"
    BREAK = "break"
    AND = "and"


@dataclass(frozen=True)
class Piece:
    """One piece of the user's prompt: verbatim ``text`` and what the model sees of it."""

    kind: Kind
    text: str
    tags: tuple[str, ...] = ()

    @property
    def clean(self) -> str:
        """The model-facing text of an NL piece (its tags joined back with commas)."""
        return ", ".join(self.tags)


@dataclass(frozen=True)
class ParsedPrompt:
    """The pieces of one prompt, in the order typed."""

    pieces: tuple[Piece, ...]

    @property
    def tags(self) -> list[str]:
        """Clean tags of every tag piece, in order, for categorisation."""
        return [tag for piece in self.pieces if piece.kind is Kind.TAGS for tag in piece.tags]

    @property
    def sentences(self) -> list[str]:
        """The clean text of each NL piece, in order."""
        return [piece.clean for piece in self.pieces if piece.kind is Kind.NL]

    def verbatim(self) -> str:
        """The prompt re-assembled from its pieces (whitespace normalised around commas)."""
        return join_pieces(self.pieces)


def escape_tag(tag: str) -> str:
    """Escape brackets so the WebUI reads a model tag literally (``saber (fate)``)."""
    return re.sub(r"([()\[\]\\])", r"\\\1", tag)


def clean_text(text: str) -> str:
    """The text A1111's attention parser keeps: no brackets, weights or escapes.

    Unmatched closers stay literal, as in the WebUI; ``BREAK`` words are dropped.
    """
    out: list[str] = []
    rounds = squares = 0
    for match in _ATTENTION.finditer(text):
        token = match.group(0)
        if token.startswith("\\"):
            out.append(token[1:])
        elif token == "(":
            rounds += 1
        elif token == "[":
            squares += 1
        elif match.group(1) is not None and rounds:
            rounds -= 1
        elif token == ")" and rounds:
            rounds -= 1
        elif token == "]" and squares:
            squares -= 1
        else:
            out.append(token)
    return _BREAK_OR_AND.sub(" ", "".join(out))


def parse_prompt(
    prompt: str, *, protected_words: Iterable[str] = (), detect_sentences: bool = True
) -> ParsedPrompt:
    """Cut ``prompt`` into pieces; see the module docstring for the rules."""
    protected = frozenset(word.strip() for word in protected_words if word.strip())
    pieces: list[Piece] = []
    for chunk in _split_top_level(prompt):
        if chunk in ("BREAK", "AND"):
            pieces.append(Piece(Kind.BREAK if chunk == "BREAK" else Kind.AND, chunk))
            continue
        pieces.extend(_classify_chunk(chunk, protected))
    if detect_sentences:
        pieces = _mark_sentences(pieces)
    return ParsedPrompt(tuple(pieces))


def join_pieces(pieces: Iterable[Piece]) -> str:
    """Join pieces back into WebUI syntax: commas between content pieces; networks, ``BREAK``
    and ``AND`` glued on with spaces."""
    out = ""
    glue = (Kind.NETWORK, Kind.BREAK, Kind.AND)
    previous: Kind | None = None
    for piece in pieces:
        if not piece.text:
            continue
        if previous is None:
            out = piece.text
        elif piece.kind in glue or previous in (Kind.BREAK, Kind.AND):
            out += " " + piece.text
        else:
            out += ", " + piece.text
        previous = piece.kind
    return out


def _split_top_level(prompt: str) -> Iterator[str]:
    """Yield stripped chunks cut at depth-0 commas and around ``BREAK``/``AND`` words.

    Brackets are counted as A1111 counts them (escaped ones are text; a closer without an
    opener is text), so ``(red hair, blue eyes:1.2)`` stays one chunk, and an unclosed
    ``(`` keeps the rest of the prompt in one chunk, as its weight would.
    """
    depth = braces = 0
    start = 0
    i = 0
    n = len(prompt)
    while i < n:
        char = prompt[i]
        if char == "\\":
            i += 2
            continue
        if char == "<" and depth == 0 and braces == 0:
            network = _NETWORK.match(prompt, i)
            if network:
                i = network.end()
                continue
        if char in "([":
            depth += 1
        elif char in ")]" and depth:
            depth -= 1
        elif char == "{":
            braces += 1
        elif char == "}" and braces:
            braces -= 1
        elif char == "," and depth == 0 and braces == 0:
            yield from _split_break_and(prompt[start:i])
            start = i + 1
        elif char in "BA" and depth == 0 and braces == 0:
            word = _BREAK_OR_AND.match(prompt, i)
            if word and (i == 0 or not (prompt[i - 1].isalnum() or prompt[i - 1] == "_")):
                yield from _split_break_and(prompt[start:i])
                yield word.group(1)
                i = start = word.end()
                continue
        i += 1
    yield from _split_break_and(prompt[start:])


def _split_break_and(chunk: str) -> Iterator[str]:
    chunk = chunk.strip()
    if chunk:
        yield chunk


def _classify_chunk(chunk: str, protected: frozenset[str]) -> list[Piece]:
    """Split extra networks off a chunk and decide what the rest is."""
    networks = [m.group(0) for m in _NETWORK.finditer(chunk)]
    rest = _NETWORK.sub(" ", chunk).strip() if networks else chunk
    rest = re.sub(r"[ \t]{2,}", " ", rest) if networks else rest
    pieces: list[Piece] = []
    if rest:
        pieces.append(_classify_text(rest, protected))
    pieces.extend(Piece(Kind.NETWORK, network) for network in networks)
    return pieces


def _classify_text(text: str, protected: frozenset[str]) -> Piece:
    if _WILDCARD.search(text) or ("{" in text and "}" in text):
        return Piece(Kind.PROTECTED, text)
    qualified = _QUALIFIED_NAME.fullmatch(text)
    if qualified:
        tags: tuple[str, ...] = (f"{qualified.group(1).strip()} ({qualified.group(2).strip()})",)
    else:
        tags = tuple(tag.strip() for tag in clean_text(text).split(",") if tag.strip())
    if not tags or any(tag in protected for tag in tags):
        return Piece(Kind.PROTECTED, text)
    return Piece(Kind.TAGS, text, tags)


def _words(text: str) -> int:
    return sum(1 for word in text.split() if _WORD.match(word))


def _mark_sentences(pieces: list[Piece]) -> list[Piece]:
    """Turn tag pieces that read as natural language into NL pieces.

    Danbooru tags are lowercase and short, so a piece is a sentence when it has six or more
    words, or three or more and a sentence break (``". "``); a run of pieces is one sentence when it
    starts with a capitalised word, ends with ``.``, ``!`` or ``?`` and holds four or more
    words in all (``A girl, standing in the rain, looks up.``).
    """
    out = list(pieces)
    i = 0
    while i < len(out):
        piece = out[i]
        if piece.kind is not Kind.TAGS:
            i += 1
            continue
        text = piece.clean
        words = _words(text)
        if words >= 6 or (words >= 3 and ". " in text):
            out[i] = Piece(Kind.NL, piece.text, piece.tags)
            i += 1
            continue
        end = _sentence_run_end(out, i)
        if end is None:
            i += 1
            continue
        run = out[i : end + 1]
        merged = Piece(Kind.NL, ", ".join(p.text for p in run), tuple(t for p in run for t in p.tags))
        out[i : end + 1] = [merged]
        i += 1
    return out


def _sentence_run_end(pieces: list[Piece], start: int) -> int | None:
    first = pieces[start].clean
    if not (first[:1].isupper() and first[1:2].islower() or first.startswith(("A ", "I "))):
        return None
    words = 0
    for j in range(start, len(pieces)):
        if pieces[j].kind is not Kind.TAGS:
            return None
        text = pieces[j].clean
        words += _words(text)
        if _SENTENCE_END.search(text):
            return j if words >= 4 else None
    return None
