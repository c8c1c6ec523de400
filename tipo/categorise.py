"""Sort tags into TIPO's categories exactly as the reference does (format sheet, "Input categories").

Order of the checks: the tag-database lists (meta, artist, characters, copyrights; disjoint
and without ``_``, which ``tools/build_tagdb.py`` asserts, so one lookup stands for all four),
then ``special``, ``quality``, ``rating``; in each, the tag as written first, then with ``_``
replaced by a space. Anything else is ``general``, with ``_`` replaced by spaces when it has
four or more characters. Lookups are case-sensitive.
"""

from __future__ import annotations

from typing import Callable, Iterable

__all__ = [
    "CATEGORIES",
    "LIST_CATEGORIES",
    "SPECIAL",
    "QUALITY",
    "RATING",
    "TagMap",
    "categorise",
    "empty_tag_map",
]

#: Every category, in the order the reference's output dict lists them.
CATEGORIES = ("special", "quality", "rating", "meta", "artist", "characters", "copyrights", "general")
#: Categories whose values are the meta lines of the model input (format sheet, "apply prompt").
LIST_CATEGORIES = ("meta", "rating", "artist", "characters", "copyrights", "quality")

SPECIAL = frozenset(
    f"{n}{kind}" for kind in ("girls", "boys", "others") for n in ("2", "3", "4", "5", "6+")
) | frozenset(
    {"1girl", "1boy", "1other", "multiple girls", "multiple boys", "multiple others", "male focus"}
)
QUALITY = frozenset(
    {
        "masterpiece", "best quality", "great quality", "good quality", "normal quality",
        "low quality", "worse quality", "very aesthetic", "aesthetic", "displeasing",
        "very displeasing", "newest", "recent", "mid", "early", "old",
        "score_9", "score_8_up", "score_7_up", "score_6_up", "score_5_up", "score_4_up",
        "source_anime", "source_cartoon", "source_furry", "source_pony",
    }
)  # fmt: skip
RATING = frozenset({"safe", "general", "sfw", "sensitive", "nsfw", "explicit"})

TagMap = dict[str, list[str]]
Lookup = Callable[[str], "str | None"]


def empty_tag_map() -> TagMap:
    return {category: [] for category in CATEGORIES}


def categorise_tag(tag: str, lookup: Lookup) -> tuple[str, str]:
    """``(category, tag as stored)`` of one stripped, non-empty tag."""
    spaced = tag.replace("_", " ")
    found = lookup(tag)
    if found is not None:
        return found, tag
    if spaced != tag:
        found = lookup(spaced)
        if found is not None:
            return found, spaced
    for category, names in (("special", SPECIAL), ("quality", QUALITY), ("rating", RATING)):
        if tag in names:
            return category, tag
        if spaced in names:
            return category, spaced
    return "general", (tag if len(tag) < 4 else spaced)


def categorise(tags: Iterable[str], lookup: Lookup) -> TagMap:
    """Split tags into categories, keeping their order and duplicates (as the reference does)."""
    tag_map = empty_tag_map()
    for raw in tags:
        tag = raw.strip()
        if tag:
            category, stored = categorise_tag(tag, lookup)
            tag_map[category].append(stored)
    return tag_map
