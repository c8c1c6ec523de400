"""Output templates and how they are filled (format sheet, "Output formats").

A template holds placeholders ``<|special|>``, ``<|characters|>``, ``<|copyrights|>``,
``<|artist|>``, ``<|general|>``, ``<|meta|>``, ``<|quality|>``, ``<|rating|>``,
``<|generated|>`` and ``<|extended|>``. Lists are joined with ``, ``; ``<|extended|>`` falls
back to ``<|generated|>`` when empty (and the other way round); an empty placeholder vanishes
with the separator after it (``,`` or ``.``: the reference left a lone ``.``), and lines left
with only separators vanish; a value that ends a sentence (``.``, ``!``, ``?``) takes no
template ``.`` after it. Runs of blank lines and spaces in the template collapse; the
values are never touched (the reference also collapsed spaces inside the user's tags). All
placeholders are filled in one pass, so a value that looks like a placeholder is never
expanded again.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence, Union

from tipo.plan import Mode

__all__ = ["PLACEHOLDERS", "TEMPLATES", "template_for", "apply_template"]

PLACEHOLDERS = (
    "special", "characters", "copyrights", "artist", "general",
    "meta", "quality", "rating", "generated", "extended",
)  # fmt: skip

_TAGS_HEAD = "<|special|>, <|characters|>, <|copyrights|>,\n<|artist|>,\n\n"
_TAGS_TAIL = "\n\n<|quality|>, <|meta|>, <|rating|>"

#: The reference's five presets, their layout unchanged, plus one per task mode.
TEMPLATES: dict[Mode, str] = {
    Mode.TAG_ONLY: _TAGS_HEAD + "<|general|>," + _TAGS_TAIL,
    Mode.NL_ONLY: "<|extended|>.",
    Mode.BOTH_TAG_FIRST: _TAGS_HEAD + "<|general|>,\n\n<|extended|>." + _TAGS_TAIL,
    Mode.BOTH_NL_FIRST: _TAGS_HEAD + "<|extended|>.\n\n<|general|>," + _TAGS_TAIL,
    Mode.BOTH_GENERATED: _TAGS_HEAD + "<|generated|>.\n\n<|general|>,\n\n<|extended|>." + _TAGS_TAIL,
    Mode.TAGS: _TAGS_HEAD + "<|general|>,\n\n<|extended|>." + _TAGS_TAIL,
    Mode.TAG_TO_LONG: _TAGS_HEAD + "<|general|>,\n\n<|generated|>." + _TAGS_TAIL,
    Mode.LONG_TO_TAG: _TAGS_HEAD + "<|general|>,\n\n<|extended|>." + _TAGS_TAIL,
    Mode.SHORT_TO_TAG: _TAGS_HEAD + "<|general|>,\n\n<|extended|>." + _TAGS_TAIL,
    Mode.SHORT_TO_LONG: _TAGS_HEAD + "<|general|>,\n\n<|generated|>." + _TAGS_TAIL,
    Mode.TAG_TO_SHORT_TO_LONG: _TAGS_HEAD + "<|general|>,\n\n<|generated|>." + _TAGS_TAIL,
    Mode.SHORT_TO_TAG_TO_LONG: _TAGS_HEAD + "<|general|>,\n\n<|generated|>." + _TAGS_TAIL,
    Mode.SHORT_TO_LONG_TO_TAG: _TAGS_HEAD + "<|general|>,\n\n<|generated|>." + _TAGS_TAIL,
}

_PLACEHOLDER = re.compile(r"<\|([a-z_]+)\|>")


def template_for(mode: Mode, custom: str = "") -> str:
    """``custom`` when given (a custom template replaces any mode's), else the mode's own."""
    if custom.strip() or mode is Mode.CUSTOM:
        return custom
    return TEMPLATES[mode]


Value = Union[str, Sequence[str]]


def _text(value: Value | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    items = (item.strip() for item in value)
    return ", ".join(item for item in items if item)


def apply_template(template: str, values: Mapping[str, Value]) -> str:
    """Fill ``template``; see the module docstring for the rules."""
    template = template.translate({0: None, 1: None, 2: None})  # our markers below
    filled = {name: _text(values.get(name)) for name in PLACEHOLDERS}
    if not filled["extended"]:
        filled["extended"] = filled["generated"]
    elif not filled["generated"] and "<|extended|>" not in template:
        filled["generated"] = filled["extended"]

    # Values go in as opaque markers, so the clean-up below touches only the template's own
    # text and never a user's tag (a tag "." or a double space stays as typed).
    values_in: list[str] = []

    def fill(match: re.Match[str]) -> str:
        value = filled.get(match.group(1), "")
        if not value:
            return "\0"
        values_in.append(value)
        return f"\x01{len(values_in) - 1}\x02"

    text = _PLACEHOLDER.sub(fill, template)
    text = re.sub(r"\0[ \t]*[,.]?", "", text)
    lines = []
    for line in text.split("\n"):
        line = re.sub(r"[ \t]{2,}", " ", line).strip()
        line = re.sub(r"^(?:[,.][ \t]*)+", "", line)
        line = re.sub(r"(?:,[ \t]*){2,}", ", ", line)
        lines.append(line)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip().strip(",").strip()

    def ends_sentence(match: re.Match[str]) -> str:
        """A template's "." after a value that already ends a sentence ("Wait...") is dropped."""
        return match.group(1) if values_in[int(match.group(2))][-1] in ".!?" else match.group(0)

    text = re.sub("(\x01(\\d+)\x02)\\.", ends_sentence, text)
    return re.sub("\x01(\\d+)\x02", lambda m: values_in[int(m.group(1))], text)
