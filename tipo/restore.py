"""Put the user's own syntax back around what the model added.

Every piece the user typed comes back verbatim, weights, escapes and all: a tag piece sits in
the template slot of its first tag's category, in the order typed, before the model's new tags
of that category (escaped, so ``saber (fate)`` stays a name; all model text is made literal, see
:func:`tipo.syntax.literal_text`); extra networks, wildcards,
``BREAK`` and embedding names travel with the piece they followed; NL pieces lead the
``<|extended|>`` text. Whatever follows the first ``AND`` is appended unchanged. A template
without a category's slot (``nl_only``) drops the user's tags of that category, never the
networks, wildcards or ``BREAK`` they carried: those are appended.
The reference instead rebuilt tags from the model's output and re-applied weights only to tags
it found unchanged, so underscore tags lost theirs (format sheet, "Output formats").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tipo.categorise import Lookup, categorise_tag
from tipo.formats import Value, apply_template
from tipo.parse import Parsed
from tipo.postprocess import dedupe, split_sentences
from tipo.syntax import Kind, Piece, is_token, join_pieces, leaves_open, literal_text

__all__ = ["compose_prompt"]

_TAG_SLOTS = ("special", "characters", "copyrights", "artist", "general", "meta", "quality", "rating")
_CONTENT = (Kind.TAGS, Kind.NL)


@dataclass
class _Unit:
    """A content piece with the protected pieces attached to it."""

    piece: Piece
    before: list[Piece] = field(default_factory=list)
    after: list[Piece] = field(default_factory=list)

    def text(self) -> str:
        return join_pieces([*self.before, self.piece, *self.after])


def _units(pieces: tuple[Piece, ...]) -> tuple[list[_Unit], list[Piece]]:
    """Attach each non-content piece to the content piece before it (or after, at the start).
    Returns the units and the pieces left over when there is no content at all."""
    units: list[_Unit] = []
    pending: list[Piece] = []
    for piece in pieces:
        if piece.kind in _CONTENT:
            units.append(_Unit(piece, before=pending))
            pending = []
        elif units:
            units[-1].after.append(piece)
        else:
            pending.append(piece)
    return units, pending


def _split_at_and(pieces: tuple[Piece, ...]) -> tuple[tuple[Piece, ...], tuple[Piece, ...]]:
    for index, piece in enumerate(pieces):
        if piece.kind is Kind.AND:
            return pieces[:index], pieces[index:]
    return pieces, ()


def _new_sentences(user_sentences: list[str], model_text: str) -> tuple[str, list[str]]:
    """Sentences the model added, and the tail it appended to the user's last sentence."""
    user = set(user_sentences)
    tail = ""
    new = []
    for sentence in split_sentences(model_text):
        if sentence in user:
            continue
        last = user_sentences[-1] if user_sentences else ""
        if last and not tail and sentence.startswith(last) and len(sentence) > len(last):
            tail = sentence[len(last):]
            continue
        new.append(sentence)
    return tail, new


def compose_prompt(
    pieces: tuple[Piece, ...], extra_nl: str, final: Parsed, template: str, lookup: Lookup
) -> str:
    """The final prompt: ``final`` (the last pass's cleaned fields) in ``template``."""
    head, rest = _split_at_and(pieces)
    units, leftover = _units(head)
    last: list[Piece] = []
    slots: dict[str, list[str]] = {slot: [] for slot in _TAG_SLOTS}
    user_keys: set[str] = set()
    nl_texts: list[str] = []
    user_sentences: list[str] = []
    has_nl_slot = "<|extended|>" in template or "<|generated|>" in template
    for unit in units:
        if leaves_open(unit.text()):
            # An unclosed "(" would weigh, an unclosed "<name:" make a network of, whatever
            # follows (A1111 reads networks first, across commas). Such a piece ends its
            # sub-prompt as typed (it takes the rest in), so it goes last, where nothing follows.
            last += [*unit.before, unit.piece, *unit.after]
            user_keys.update(categorise_tag(tag, lookup)[1] for tag in unit.piece.tags if unit.piece.kind is Kind.TAGS)
            continue
        if unit.piece.kind is Kind.NL and not has_nl_slot and "<|general|>" in template:
            slots["general"].append(unit.text())  # a tags-only layout keeps sentences as tags
            continue
        if unit.piece.kind is Kind.NL and not (has_nl_slot or "<|general|>" in template):
            leftover += [*unit.before, *unit.after]  # no slot for sentences: keep what they carried
            continue
        if unit.piece.kind is Kind.NL:
            nl_texts.append(unit.text())
            user_sentences += split_sentences(unit.piece.clean)
            continue
        stored = [categorise_tag(tag, lookup) for tag in unit.piece.tags]
        user_keys.update(name for _, name in stored)
        if f"<|{stored[0][0]}|>" in template:
            slots[stored[0][0]].append(unit.text())
        else:  # the template drops this category: keep what the piece carried all the same
            leftover += [*unit.before, *unit.after]
    open_nl = extra_nl.strip() if has_nl_slot and leaves_open(extra_nl) else ""
    if extra_nl.strip() and not open_nl:
        nl_texts.append(extra_nl.strip())
        user_sentences += split_sentences(extra_nl)

    for slot in _TAG_SLOTS:
        found = final.get(slot, [])
        if isinstance(found, list):
            new = [literal_text(tag) for tag in dedupe(found) if tag not in user_keys and not is_token(tag)]
            slots[slot] += [tag for tag in new if tag.strip()]
            user_keys.update(found)

    tail, new_extended = _new_sentences(user_sentences, str(final.get("extended", "")))
    _, new_generated = _new_sentences(user_sentences, str(final.get("generated", "")))
    user_nl = " ".join(nl_texts)
    if tail and user_nl and user_nl[-1] not in ".!?":
        user_nl += literal_text(tail)  # the model went on with the user's unfinished sentence
    elif tail.strip(" ,;:"):
        new_extended.insert(0, tail.strip(" ,;:"))  # the user's text stays exactly as typed
    new_extended = [literal_text(sentence) for sentence in new_extended]
    generated = ". ".join(literal_text(sentence) for sentence in new_generated)
    if "<|extended|>" not in template and user_nl:
        # A layout with only the generated text still keeps what the user wrote, first.
        generated = _paragraph(user_nl, generated)
    values: dict[str, Value] = {**slots, "extended": _paragraph(user_nl, ". ".join(new_extended)), "generated": generated}
    text = apply_template(template, values)
    leftover += last
    if leftover:
        text = join_pieces([Piece(Kind.TAGS, text), *leftover]) if text else join_pieces(leftover)
    rest += (Piece(Kind.NL, open_nl),) if open_nl else ()  # the NL box's own text leaves one open: very last
    if rest:
        text = join_pieces([Piece(Kind.TAGS, text), *rest]) if text else join_pieces(rest)
    return text


def _paragraph(first: str, then: str) -> str:
    """``first`` (the user's, kept as typed) and ``then`` as one text, a sentence mark between
    them (the templates write the final period, unless the text already ends a sentence)."""
    first, then = first.strip(), then.strip()
    if first and then and first[-1] not in ".!?":
        first += "."
    return " ".join(t for t in (first, then) if t)
