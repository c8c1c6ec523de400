"""Read a model's text (input + continuation) back into fields (format sheet, "Output parsing").

The text is read as ``key: value`` blocks: a line that has a colon after at least one character
starts a block, and a value runs on over the following lines that do not. The first block of a
key wins. ``tag`` values are re-categorised and their categories are added to the meta-line
lists of the same name; ``long`` becomes ``generated`` and ``short`` becomes ``extended``;
``<|empty|>`` or empty NL is ignored; every other key becomes a comma list.

Unlike the reference, the text is never stripped of the *characters* ``<``, ``s``, ``>``,
``/`` (its defect turned ``glass`` into ``gla``): BOS and EOS are dropped as tokens when
decoding, so nothing needs stripping here.
"""

from __future__ import annotations

import re
from typing import Union

from tipo.categorise import Lookup, categorise

__all__ = ["Parsed", "parse_output", "NL_KEYS"]

Parsed = dict[str, Union[list[str], str]]
NL_KEYS = {"short": "extended", "long": "generated"}
_KEY_LINE = re.compile(r"([^:\n]+):(.*)")


def _blocks(text: str) -> list[tuple[str, str]]:
    blocks: list[tuple[str, list[str]]] = []
    for line in text.strip().split("\n"):
        match = _KEY_LINE.match(line)
        if match:
            blocks.append((match.group(1), [match.group(2)]))
        elif blocks:
            blocks[-1][1].append(line)
    return [(key.strip(), "\n".join(lines).strip()) for key, lines in blocks]


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_output(text: str, lookup: Lookup) -> Parsed:
    """Fields of a model text; see the module docstring."""
    parsed: Parsed = {}
    for key, value in _blocks(text):
        name = NL_KEYS.get(key, key)
        if name in parsed:
            continue
        if key == "tag":
            tags = _comma_list(value)
            for category, found in categorise(tags, lookup).items():
                existing = parsed.get(category)
                if isinstance(existing, list):
                    existing.extend(found)
                elif existing is not None:
                    parsed[category] = [existing, *found]
                else:
                    parsed[category] = list(found)
            parsed["tag"] = tags
        elif key in NL_KEYS:
            if value and value != "<|empty|>":
                parsed[name] = value
        else:
            parsed[name] = _comma_list(value)
    return parsed
