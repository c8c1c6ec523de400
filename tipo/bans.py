"""Ban lists: tags and sentences the user never wants TIPO to add.

Tag bans, one entry each:

* ``umbrella``: an exact tag name; case-insensitive, ``_`` and space are the same.
* ``*text*``: a glob over the whole tag, ``*`` being any run of characters.
* ``/official.*/``: a regular expression that must match the whole tag.

NL bans are phrases: a generated sentence holding one (case-insensitive) is dropped.

Bans only remove what the model added; the user's own tags and sentences always stay. Unlike
the reference (which tried every entry as a substring and as ``re.match``, so ``hat`` removed
``chat``, and whose bad regex killed the request), every pattern is compiled up front and a
bad one is reported by name. Regexes run on the ``regex`` package (a dependency of
transformers) with a time limit per match: a pattern that backtracks catastrophically is
switched off for the request with a warning instead of hanging the process. Compiling is
bounded too: ``regex`` unrolls counted repeats, so ``/a{1000000000}/`` would take all memory;
patterns whose repeat counts multiply past :data:`MAX_REPEAT_PRODUCT` are refused.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

import regex

from tipo.errors import BanPatternError

__all__ = ["BanList", "split_ban_text"]

logger = logging.getLogger(__name__)

#: Seconds one regex may spend on one tag before it is switched off.
MATCH_TIMEOUT_S = 0.05
#: Seconds all regexes and globs of one request may spend in total (many patterns each just
#: under the timeout would add up); past it they are all switched off for the request.
MATCH_BUDGET_S = 1.0
_MAX_PATTERN_CHARS = 500
#: Largest product of a regex's counted repeats (``{m}``, ``{m,n}``): ``(?:a{10}){1000}`` takes
#: 3 MB to compile, ``(?:a{1000}){1000}`` 2.7 GB. Tags are a few words long.
MAX_REPEAT_PRODUCT = 10_000
_COUNTED_REPEAT = re.compile(r"(?<!\\)\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def split_ban_text(text: str) -> list[str]:
    """Entries of a comma- or newline-separated ban box; a ``/regex/`` may hold commas."""
    entries: list[str] = []
    for line in text.splitlines():
        for entry in _split_keeping_regex(line):
            if entry.strip():
                entries.append(entry.strip())
    return entries


def _split_keeping_regex(line: str) -> Iterable[str]:
    start, inside, i = 0, False, 0
    while i < len(line):
        char = line[i]
        if char == "\\" and inside:
            i += 2
            continue
        if char == "/" and (inside or not line[start:i].strip()):
            inside = not inside
        elif char == "," and not inside:
            yield line[start:i]
            start = i + 1
        i += 1
    yield line[start:]


def _repeat_product(pattern: str) -> int:
    """Product of the counts of every ``{m}``, ``{m,}``, ``{,n}`` and ``{m,n}`` in ``pattern``
    (the largest number each allows): an upper bound of how far ``regex`` unrolls them."""
    product = 1
    for low, high in _COUNTED_REPEAT.findall(pattern):
        count = int(high or low or 1)
        product *= max(count, 1)
        if product > MAX_REPEAT_PRODUCT:
            return product
    return product


def _normal(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


class _Budget:
    """Matching time left to one request's patterns; thread-safe."""

    def __init__(self, seconds: float) -> None:
        self._left = seconds
        self._lock = threading.Lock()

    @property
    def left(self) -> float:
        return self._left

    def spend(self, seconds: float) -> bool:
        """Take ``seconds``; True for the call that used the last of it."""
        with self._lock:
            had = self._left > 0
            self._left -= seconds
            return had and self._left <= 0


@dataclass(frozen=True)
class BanList:
    """Compiled bans of one request; immutable apart from the switched-off regexes and the
    matching time left (:data:`MATCH_BUDGET_S`)."""

    names: frozenset[str] = frozenset()
    patterns: tuple[tuple[str, "regex.Pattern[str]"], ...] = ()
    phrases: tuple[str, ...] = ()
    _disabled: set[str] = field(default_factory=set, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    _budget: _Budget = field(default_factory=lambda: _Budget(MATCH_BUDGET_S), compare=False, repr=False)

    @classmethod
    def compile(cls, tag_bans: Iterable[str] = (), nl_bans: Iterable[str] = ()) -> BanList:
        """Compile every entry; raise :class:`BanPatternError` listing all bad ones."""
        names: set[str] = set()
        patterns: list[tuple[str, regex.Pattern[str]]] = []
        problems: list[str] = []
        for raw in tag_bans:
            entry = raw.strip()
            if not entry:
                continue
            if len(entry) > _MAX_PATTERN_CHARS:
                problems.append(f"{entry[:40]!r}… is longer than {_MAX_PATTERN_CHARS} characters")
            elif len(entry) >= 2 and entry.startswith("/") and entry.endswith("/"):
                repeats = _repeat_product(entry[1:-1])
                if repeats > MAX_REPEAT_PRODUCT:
                    problems.append(f"{entry[:60]!r} repeats {repeats} times in all (at most {MAX_REPEAT_PRODUCT})")
                    continue
                try:
                    patterns.append((entry, regex.compile(entry[1:-1], regex.IGNORECASE | regex.V0)))
                except (regex.error, ValueError, OverflowError, RecursionError) as error:
                    problems.append(f"{entry!r} is not a valid regular expression ({error})")
            elif "*" in entry:
                glob = ".*".join(re.escape(_normal(part)) for part in entry.split("*"))
                patterns.append((entry, regex.compile(glob, regex.IGNORECASE | regex.DOTALL)))
            else:
                names.add(_normal(entry))
        if problems:
            raise BanPatternError("invalid ban pattern: " + "; ".join(problems))
        phrases = tuple(_normal(p) for p in nl_bans if p.strip())
        return cls(frozenset(names), tuple(patterns), phrases)

    def __bool__(self) -> bool:
        return bool(self.names or self.patterns or self.phrases)

    def bans_tag(self, tag: str) -> bool:
        """Whether ``tag`` is banned."""
        key = _normal(tag)
        if key in self.names:
            return True
        for source, pattern in self.patterns:
            left = self._budget.left
            if source in self._disabled or left <= 0:
                continue
            subject = key if not source.startswith("/") else tag
            started = time.perf_counter()
            try:
                matched = pattern.fullmatch(subject, timeout=min(MATCH_TIMEOUT_S, left)) is not None
            except TimeoutError:
                matched = False
                if left > MATCH_TIMEOUT_S:
                    with self._lock:
                        self._disabled.add(source)
                    logger.warning(
                        "Ban pattern %r took over %.0f ms on %r and is switched off for this request",
                        source, MATCH_TIMEOUT_S * 1000, tag,
                    )  # fmt: skip
            if self._budget.spend(time.perf_counter() - started):
                logger.warning(
                    "Ban patterns took %.1f s in all; every regex and glob is switched off for this request",
                    MATCH_BUDGET_S,
                )  # fmt: skip
            if matched:
                return True
        return False

    def bans_sentence(self, sentence: str) -> bool:
        """Whether a sentence holds a banned phrase."""
        key = _normal(sentence)
        return any(phrase in key for phrase in self.phrases)
