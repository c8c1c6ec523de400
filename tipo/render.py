"""The exact text a TIPO model reads (format sheet, "The model input").

Byte for byte what the models were trained on: every difference here silently degrades real
weights, so ``tests/test_differential.py`` compares this module with the reference on thousands
of requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from tipo.categorise import TagMap
from tipo.plan import Length, Pass, Task

__all__ = ["MetaLines", "meta_lines", "aspect_ratio_text", "general_text", "render_input"]

_META_ORDER = ("meta", "rating", "artist", "characters", "copyrights", "quality", "aspect_ratio")


@dataclass(frozen=True)
class MetaLines:
    """The ``key: value`` lines above ``target:``; empty values are not written."""

    meta: str = ""
    rating: str = ""
    artist: str = ""
    characters: str = ""
    copyrights: str = ""
    quality: str = ""
    aspect_ratio: str = ""

    def text(self) -> str:
        return "".join(f"{key}: {getattr(self, key)}\n" for key in _META_ORDER if getattr(self, key))


def aspect_ratio_text(width: int, height: int) -> str:
    """``round(width / height, 1)`` as Python prints it (half-even on the binary value:
    1280×1024 → ``1.2``, 64×4096 → ``0.0``)."""
    return f"{width / height:.1f}"


def meta_lines(tag_map: TagMap, aspect_ratio: str = "") -> MetaLines:
    """Meta lines of a request, from its categorised tags."""
    return MetaLines(
        meta=", ".join(tag_map["meta"]),
        rating=", ".join(tag_map["rating"]).strip(),
        artist=", ".join(tag_map["artist"]).strip(),
        characters=", ".join(tag_map["characters"]).strip(),
        copyrights=", ".join(tag_map["copyrights"]).strip(),
        quality=", ".join(tag_map["quality"]),
        aspect_ratio=aspect_ratio,
    )


def general_text(tag_map: TagMap) -> str:
    """The ``tag`` field: special then general tags (the reference's join and strip)."""
    return ", ".join(tag_map["special"] + tag_map["general"]).strip().strip(",")


def _target_line(task: Task, length: Length) -> str:
    token = task.token
    return f"target: <|{length}|>" + (f" {token}" if token else "") + "\n"


def render_input(meta: MetaLines, tags: str, nl: str, step: Pass) -> str:
    """The model input of one pass.

    ``tags`` is the ``tag`` field; ``nl`` goes into ``short`` when the task has a short field,
    else into ``long``. Fields with content are ``key: content``; an empty field that is not
    the last is ``key: `` (with the space); an empty last field is left out. Expand mode strips
    the text (the model lengthens the last field); otherwise ``key:`` of the last field ends it.
    """
    fields = step.task.fields
    content = {"tag": tags, ("short" if "short" in fields else "long"): nl}
    text = meta.text() + _target_line(step.task, step.length)
    for index, key in enumerate(fields):
        value = content.get(key, "")
        if value.strip():
            text += f"{key}: {value}\n"
        elif index < len(fields) - 1:
            text += f"{key}: \n"
    if step.expand:
        return text.strip()
    return text + f"{fields[-1]}:"

