"""A request and everything decided before the model runs (the dry-run path).

:func:`prepare` turns what the user typed into the categorised tags, the pass plan and the
exact model input of the first pass, without a model: ``python -m tipo --dry-run`` prints it,
and the pipeline starts from it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from tipo.bans import BanList
from tipo.categorise import Lookup, TagMap, categorise
from tipo.engine.base import SamplingSettings
from tipo.errors import BanPatternError, InvalidArgument
from tipo.formats import template_for
from tipo.plan import LENGTHS, Length, Mode, Pass, plan_passes
from tipo.render import MetaLines, aspect_ratio_text, general_text, meta_lines, render_input
from tipo.syntax import Kind, ParsedPrompt, clean_text, parse_prompt

__all__ = ["ExpandRequest", "Prepared", "prepare", "resolve_seed", "pass_seed", "RANDOM_SEED"]

#: The seed value that asks for a random seed (reported back in the result).
RANDOM_SEED = -1
_MAX_SIDE = 1 << 16


@dataclass(frozen=True)
class ExpandRequest:
    """One prompt to expand, with every setting that shapes its expansion."""

    prompt: str = ""
    nl_prompt: str = ""
    mode: Mode = Mode.BOTH_TAG_FIRST
    template: str = ""
    tag_length: Length = "long"
    nl_length: Length = "long"
    width: int = 1024
    height: int = 1024
    ban_tags: tuple[str, ...] = ()
    ban_nl: tuple[str, ...] = ()
    seed: int = RANDOM_SEED
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    protected_words: tuple[str, ...] = ()
    max_retry: int = 10

    def __post_init__(self) -> None:
        problems = []
        for name in ("prompt", "nl_prompt", "template"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name}={getattr(self, name)!r} (a string)")
        for name in ("ban_tags", "ban_nl", "protected_words"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(isinstance(item, str) for item in value):
                problems.append(f"{name}={value!r} (a tuple of strings)")
        if not isinstance(self.sampling, SamplingSettings):
            problems.append(f"sampling={self.sampling!r} (a SamplingSettings)")
        if not isinstance(self.mode, Mode):
            problems.append(f"mode={self.mode!r} (one of {', '.join(m.value for m in Mode)})")
        for name in ("tag_length", "nl_length"):
            if getattr(self, name) not in LENGTHS:
                problems.append(f"{name}={getattr(self, name)!r} (one of {', '.join(LENGTHS)})")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_SIDE:
                problems.append(f"{name}={value!r} (an integer in [1, {_MAX_SIDE}])")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            problems.append(f"seed={self.seed!r} (an integer; -1 picks one)")
        if not (isinstance(self.max_retry, int) and not isinstance(self.max_retry, bool) and 0 <= self.max_retry <= 10):
            problems.append(f"max_retry={self.max_retry!r} (an integer in [0, 10])")
        if self.mode is Mode.CUSTOM and isinstance(self.template, str) and not self.template.strip():
            problems.append("template is empty (mode 'custom' needs a template)")
        if problems:
            raise InvalidArgument("invalid request: " + "; ".join(problems))


@dataclass(frozen=True)
class Prepared:
    """A request read and planned: what the model will be fed."""

    request: ExpandRequest
    parsed: ParsedPrompt
    tag_map: TagMap
    nl: str
    meta: MetaLines
    passes: tuple[Pass, ...]
    template: str
    bans: BanList

    @property
    def tags(self) -> str:
        """The ``tag`` field of the first pass."""
        return general_text(self.tag_map)

    def first_input(self) -> str:
        return render_input(self.meta, self.tags, self.nl, self.passes[0])


def resolve_seed(seed: int) -> int:
    """``-1`` becomes a fresh random seed; every other integer (0 included) is kept."""
    return secrets.randbelow(2**31 - 1) if seed == RANDOM_SEED else seed


def pass_seed(seed: int, pass_index: int, attempt: int) -> int:
    """A generation seed for one try of one pass, from the request seed alone."""
    digest = hashlib.blake2b(f"{seed}:{pass_index}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def join_sentences(texts: list[str]) -> str:
    """NL texts as one paragraph; a text without an end mark gets a period before the next."""
    parts = [text.strip() for text in texts if text.strip()]
    return " ".join(p if i == len(parts) - 1 or p[-1] in ".!?" else p + "." for i, p in enumerate(parts))


def _first_subprompt(parsed: ParsedPrompt) -> ParsedPrompt:
    """Pieces before the first ``AND``: only that sub-prompt is expanded."""
    for index, piece in enumerate(parsed.pieces):
        if piece.kind is Kind.AND:
            return ParsedPrompt(parsed.pieces[:index])
    return parsed


def _check_encodable(request: ExpandRequest) -> None:
    """An unpaired surrogate (JSON's ``"\\ud800"`` reaches Python as one) cannot be encoded for
    the tokenizer; refused here, so that the row fails alone with its prompt kept."""
    for name in ("prompt", "nl_prompt"):
        try:
            getattr(request, name).encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidArgument(
                f"{name} holds an unpaired surrogate {error.object[error.start]!r} at index {error.start}; "
                f"it is not valid text (send the character itself or a valid escape pair)"
            ) from None


def prepare(request: ExpandRequest, lookup: Lookup) -> Prepared:
    """Read, categorise and plan one request (no model needed)."""
    _check_encodable(request)
    parsed = parse_prompt(request.prompt, protected_words=request.protected_words)
    head = _first_subprompt(parsed)
    tag_map = categorise(head.tags, lookup)
    nl = join_sentences(head.sentences + [clean_text(request.nl_prompt)])
    template = template_for(request.mode, request.template)
    meta = meta_lines(tag_map, aspect_ratio_text(request.width, request.height))
    passes = plan_passes(
        request.mode,
        has_tags=bool(general_text(tag_map).strip()),
        has_nl=bool(nl),
        tag_length=request.tag_length,
        nl_length=request.nl_length,
        template=template,
    )
    try:
        bans = BanList.compile(request.ban_tags, request.ban_nl)
    except BanPatternError as error:  # only tag bans are patterns: name the field
        raise BanPatternError(f"ban_tags: {error}") from error
    return Prepared(request, parsed, tag_map, nl, meta, passes, template, bans)
