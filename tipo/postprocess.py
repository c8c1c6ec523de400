"""Clean one pass's parsed output: fields the task has, bans, order, duplicates, lengths.

Follows the reference's post-processing (format sheet, "Output parsing" and "Length targets")
except its defects: new tags are cut at the *tag* maximum (the reference used the NL sentence
maximum), bans never remove the user's own tags or sentences, new tags keep the model's order
(the reference shuffled them; order is part of a TIPO expansion), a blank NL input is no NL,
and an NL sentence is counted as a sentence (``"".split(".")`` is not one sentence).
"""

from __future__ import annotations

from dataclasses import dataclass

from tipo.bans import BanList
from tipo.parse import Parsed
from tipo.plan import Length, Task

__all__ = ["TAG_TARGETS", "NL_TARGETS", "split_sentences", "post_process", "meets_target", "dedupe"]

#: Tag count bounds (minimum, maximum) per length target; the minimum counts special + general
#: tags, the maximum general tags only.
TAG_TARGETS: dict[str, tuple[int, int]] = {
    "very_short": (6, 18),
    "short": (18, 36),
    "long": (36, 54),
    "very_long": (54, 72),
}
#: Sentence count bounds; ``very_long`` has no maximum.
NL_TARGETS: dict[str, tuple[int, int | None]] = {
    "very_short": (1, 2),
    "short": (2, 4),
    "long": (4, 8),
    "very_long": (8, None),
}


def dedupe(items: list[str]) -> list[str]:
    """Drop repeats, keeping the first of each."""
    return list(dict.fromkeys(items))


def split_sentences(text: str) -> list[str]:
    """Sentences of an NL text, split on ``.`` as the reference does (stripped, no blanks)."""
    return [part.strip() for part in text.split(".") if part.strip()]


def _cap(items: list[str], keep: int, limit: int | None) -> list[str]:
    """Cut ``items`` (new content) so that ``keep`` inputs plus the rest fit in ``limit``."""
    if limit is None or keep + len(items) <= limit:
        return items
    return items[: max(limit - keep, 0)]


@dataclass(frozen=True)
class PassInput:
    """What a pass was fed: its ``tag`` field and NL input (stripped)."""

    tags: str
    nl: str

    @property
    def tag_list(self) -> list[str]:
        return [tag.strip() for tag in self.tags.split(",")]

    @property
    def sentences(self) -> list[str]:
        return split_sentences(self.nl)


def post_process(parsed: Parsed, fed: PassInput, task: Task, length: Length, bans: BanList) -> Parsed:
    """The cleaned fields of one pass (a new dict; ``parsed`` is left alone)."""
    out: Parsed = dict(parsed)
    fields = task.fields
    if "long" not in fields:
        out.pop("generated", None)
    if "short" not in fields:
        out.pop("extended", None)
    input_sentences = fed.sentences
    if "generated" in out and input_sentences and not str(out.get("extended", "")).strip():
        out["extended"] = out.pop("generated")

    input_tags = set(fed.tag_list)
    for key, value in list(out.items()):
        if isinstance(value, list) and key != "tag":
            out[key] = [tag for tag in value if tag in input_tags or not bans.bans_tag(tag)]

    general = out.get("general", [])
    assert isinstance(general, list)
    kept = [tag for tag in general if tag in input_tags]
    new = [tag for tag in general if tag not in input_tags]
    out["general"] = dedupe(kept + _cap(new, len(kept), TAG_TARGETS[length][1]))

    nl_max = NL_TARGETS[length][1]
    extended = [
        s for s in split_sentences(str(out.get("extended", "")))
        if s not in input_sentences and not bans.bans_sentence(s)
    ]  # fmt: skip
    if extended and input_sentences and input_sentences[-1] in extended[0]:
        # The model lengthened the last input sentence: keep the longer one in its place.
        input_sentences = input_sentences[:-1] + [extended.pop(0)]
    out["extended"] = ". ".join(dedupe(input_sentences + _cap(extended, len(input_sentences), nl_max)))

    if "generated" in out:
        generated = [
            s for s in split_sentences(str(out["generated"]))
            if s not in input_sentences and not bans.bans_sentence(s)
        ]  # fmt: skip
        if generated:
            out["generated"] = ". ".join(dedupe(_cap(generated, 0, nl_max)))
    return out


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def meets_target(out: Parsed, task: Task, length: Length) -> bool:
    """Whether the pass reached the minimum of what its task writes (else it is retried).

    The checked field is the task's last one; a ``long`` task that produced no ``generated``
    text is judged on ``extended``, as in the reference.
    """
    target = task.fields[-1]
    if target == "long" and "generated" not in out:
        target = "short"
    if target == "tag":
        special, general = out.get("special", []), out.get("general", [])
        return len(special) + len(general) >= TAG_TARGETS[length][0]
    key = "extended" if target == "short" else "generated"
    return count_sentences(str(out.get(key, ""))) >= NL_TARGETS[length][0]
