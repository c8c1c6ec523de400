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

__all__ = [
    "Kind", "Piece", "ParsedPrompt", "parse_prompt", "clean_text", "escape_tag", "literal_text", "is_token",
    "opens_network", "leaves_open",
]  # fmt: skip

_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_WILDCARD = re.compile(r"__[^\s_,][^\s,]*?__")
_BREAK_OR_AND = re.compile(r"\b(BREAK|AND)\b")
_TOKEN = re.compile(r"<\|[^|<>]*\|>")
_OPEN_NETWORK = re.compile(r"<\w+:")
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


def is_token(text: str) -> bool:
    """Whether ``text`` is a ``<|…|>`` token (the reference drops such model tags)."""
    return _TOKEN.fullmatch(text) is not None


def literal_text(text: str) -> str:
    """Model-written ``text`` as plain words to the WebUI: brackets and braces escaped (A1111
    drops a backslash before any other character, so ``\\{`` reads ``{``), and what would be
    other syntax defused: extra networks and ``<|…|>`` tokens removed (until none is left: a
    removal can join a new one), a ``<`` that could open a network dropped, runs of ``_``
    shortened to one (no ``__wildcard__``), ``AND``/``BREAK`` lowercased. Only the user's own
    text carries syntax."""
    previous = None
    while previous != text:
        previous, text = text, _TOKEN.sub("", _NETWORK.sub("", text))
    text = re.sub(r"<(?=\w+:)", "", re.sub("_{2,}", "_", text))  # nor can one start here
    text = _BREAK_OR_AND.sub(lambda m: m.group(0).lower(), text)
    return re.sub(r"([()\[\]{}\\])", r"\\\1", text)


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

    Extra networks are skipped whole wherever they are (A1111 reads them before brackets).
    Brackets are counted as A1111 counts them (escaped ones are text; a closer without an
    opener is text; ``(`` and ``[`` on stacks of their own), so ``(red hair, blue eyes:1.2)``
    stays one chunk, and an unclosed ``(`` keeps the rest of the prompt in one chunk, as its
    weight would.
    """
    open_count = {"(": 0, "[": 0, "{": 0}  # one stack per kind, as A1111 keeps them
    closes = {")": "(", "]": "[", "}": "{"}
    start = 0
    i = 0
    n = len(prompt)
    while i < n:
        char = prompt[i]
        if char == "\\":
            i += 2
            continue
        if char == "<":  # A1111 reads extra networks first, at any bracket depth
            network = _NETWORK.match(prompt, i)
            if network:  # its braces still count: Dynamic Prompts knows no networks
                for brace in re.findall(r"[{}]", network.group(0)):
                    open_count["{"] = open_count["{"] + 1 if brace == "{" else max(open_count["{"] - 1, 0)
                i = network.end()
                continue
        top = not any(open_count.values())
        if char in open_count:
            open_count[char] += 1
        elif char in closes and open_count[closes[char]]:
            open_count[closes[char]] -= 1
        elif char == "," and top:
            yield from _split_break_and(prompt[start:i])
            start = i + 1
        elif char in "BA" and top:
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


def opens_network(text: str) -> bool:
    """Whether ``text`` ends inside an unclosed ``<name:`` (the next ``>`` would close it)."""
    return _OPEN_NETWORK.search(text, text.rfind(">") + 1) is not None


def leaves_open(text: str) -> bool:
    """Whether ``text`` leaves a ``(``, ``[`` or ``<name:`` open, which would take in whatever
    follows it (emphasis; an extra network at the next ``>``)."""
    rounds = squares = 0
    for match in _ATTENTION.finditer(_NETWORK.sub(" ", text)):
        token = match.group(0)
        rounds += token == "("
        squares += token == "["
        if rounds and (token == ")" or match.group(1) is not None):
            rounds -= 1
        elif squares and token == "]":
            squares -= 1
    return bool(rounds or squares) or opens_network(text)


def _classify_chunk(chunk: str, protected: frozenset[str]) -> list[Piece]:
    """Split extra networks off a chunk and decide what the rest is. The chunk stays whole
    where moving its networks behind the rest would change what the WebUI reads: an unclosed
    ``<name:`` (a moved network would close it), a network with unbalanced brackets in it."""
    networks = [m.group(0) for m in _NETWORK.finditer(chunk)]
    if opens_network(chunk) or not all(_balanced(network) for network in networks):
        return [Piece(Kind.PROTECTED, chunk)]
    rest = _NETWORK.sub(" ", chunk).strip() if networks else chunk
    rest = re.sub(r"[ \t]{2,}", " ", rest) if networks else rest
    pieces: list[Piece] = []
    if rest:
        pieces.append(_classify_text(rest, protected))
    pieces.extend(Piece(Kind.NETWORK, network) for network in networks)
    return pieces


def _balanced(text: str) -> bool:
    for opener, closer in ("()", "[]", "{}"):
        depth = 0
        for char in text:
            depth += (char == opener) - (char == closer)
            if depth < 0:
                return False
        if depth:
            return False
    return True


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
