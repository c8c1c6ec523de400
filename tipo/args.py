"""The one argument schema: every user setting named once.

Each field of :class:`TipoArgs` carries its UI label, help text, bounds or choices, infotext
key and API/CLI name in its metadata. The CLI flags, the API's positional order and named dict,
the infotext and the WebUI controls are all derived from it, so they cannot disagree.
Validation happens once, here, at the boundary; inside :mod:`tipo` the values are trusted.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, get_args

from tipo.bans import split_ban_text
from tipo.engine.base import SamplingSettings
from tipo.errors import InvalidArgument
from tipo.models.registry import DEFAULT_MODEL
from tipo.plan import LENGTHS, Mode
from tipo.request import ExpandRequest

__all__ = ["TipoArgs", "FieldSpec", "spec", "fields", "webui_fields", "Timing", "TIMINGS", "Presampling", "PRESAMPLINGS"]

#: When the WebUI glue expands: after the WebUI applied styles and other extensions rewrote the
#: prompts (wildcards), every image's prompt; or before all that, once, on the prompt as typed.
Timing = Literal["after", "before"]
TIMINGS: tuple[Timing, ...] = get_args(Timing)
#: Which images share one expansion seed: each image its own, or the images of one batch.
Presampling = Literal["per_image", "per_batch"]
PRESAMPLINGS: tuple[Presampling, ...] = get_args(Presampling)


@dataclass(frozen=True)
class FieldSpec:
    label: str
    help: str
    infotext: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: Meaningful only inside a WebUI generation (the CLI and the Python API ignore it).
    webui_only: bool = False


def _field(default: Any, label: str, help: str, infotext: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"spec": FieldSpec(label, help, infotext, **bounds)})


_MODES = tuple(m.value for m in Mode)


@dataclass(frozen=True)
class TipoArgs:
    """User settings of one TIPO run (UI, API, infotext and CLI share these names)."""

    enabled: bool = _field(False, "Enable TIPO", "Expand every prompt of the generation with TIPO.", "TIPO")
    mode: str = _field(
        Mode.BOTH_TAG_FIRST.value, "Mode",
        "What to write: the reference presets (tags, NL, both) or one TIPO task.", "TIPO mode",
        choices=_MODES,
    )  # fmt: skip
    template: str = _field(
        "", "Custom format", "Output template with <|general|>, <|extended|>… placeholders; "
        "empty uses the mode's own.", "TIPO format",
    )  # fmt: skip
    tag_length: str = _field("long", "Tag length", "How many tags to aim for.", "TIPO tag length", choices=LENGTHS)
    nl_length: str = _field("long", "NL length", "How many sentences to aim for.", "TIPO NL length", choices=LENGTHS)
    ban_tags: str = _field(
        "", "Ban tags", "Tags TIPO must not add: names, * globs or /regex/, comma-separated.", "TIPO ban tags"
    )
    ban_nl: str = _field("", "Ban phrases", "Generated sentences holding these phrases are dropped.", "TIPO ban NL")
    nl_prompt: str = _field("", "NL prompt", "Extra natural-language prompt for TIPO.", "TIPO NL prompt")
    seed: int = _field(-1, "TIPO seed", "Seed of the expansion; -1 picks one.", "TIPO seed", minimum=-1)
    model: str = _field(DEFAULT_MODEL, "Model", "Hub repo id or local folder.", "TIPO model")
    temperature: float = _field(0.5, "Temperature", "Higher is more random.", "TIPO temperature", minimum=0.01, maximum=5.0)
    top_p: float = _field(0.95, "Top-p", "Nucleus sampling mass.", "TIPO top p", minimum=0.01, maximum=1.0)
    top_k: int = _field(80, "Top-k", "Sample among the k likeliest tokens; 0 turns it off.", "TIPO top k", minimum=0, maximum=1000)
    min_p: float = _field(0.1, "Min-p", "Drop tokens below this share of the likeliest one.", "TIPO min p", minimum=0.0, maximum=0.99)
    repetition_penalty: float = _field(
        1.17, "Repetition penalty", "Above 1 discourages repeats.", "TIPO repetition penalty", minimum=0.5, maximum=2.0
    )
    max_new_tokens: int = _field(512, "Max new tokens", "Tokens one pass may write.", "TIPO max new tokens", minimum=1, maximum=1024)
    strict: bool = _field(False, "Strict", "Fail instead of keeping the original prompt.", "TIPO strict")
    # WebUI-only settings: appended last so the API's positional order of the others is kept.
    timing: str = _field(
        "after", "Timing", "after: expand each image's prompt after styles and wildcards are applied; "
        "before: expand the prompt as typed, once for the whole generation, then apply them.",
        "TIPO timing", choices=TIMINGS, webui_only=True,
    )  # fmt: skip
    presampling: str = _field(
        "per_image", "Presampling", "per_image: every image its own expansion (seeded by its image seed); "
        "per_batch: the images of one batch share theirs. Timing 'after' only.",
        "TIPO presampling", choices=PRESAMPLINGS, webui_only=True,
    )  # fmt: skip

    def __post_init__(self) -> None:
        problems = [problem for f in fields() if (problem := _check(f, getattr(self, f.name)))]
        if problems:
            raise InvalidArgument("invalid TIPO arguments: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TipoArgs:
        """Named form (API dict, JSON): unknown keys are errors naming the allowed ones."""
        if not isinstance(values, Mapping):
            raise InvalidArgument(f"TIPO arguments must be an object of named values; got {type(values).__name__}")
        names = {f.name for f in fields()}
        unknown = sorted((key for key in values if key not in names), key=repr)
        if unknown:
            raise InvalidArgument(f"unknown TIPO argument(s) {unknown}; allowed: {sorted(names)}")
        return cls(**{key: _coerce(key, value) for key, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, max_new_tokens=self.max_new_tokens,
        )  # fmt: skip

    def request(self, prompt: str, *, width: int = 1024, height: int = 1024, seed: int | None = None,
                protected_words: tuple[str, ...] = ()) -> ExpandRequest:  # fmt: skip
        """The core request for one prompt; ``seed`` overrides the TIPO seed (per-image seeds)."""
        return ExpandRequest(
            prompt=prompt, nl_prompt=self.nl_prompt, mode=Mode(self.mode), template=self.template,
            tag_length=self.tag_length, nl_length=self.nl_length,  # type: ignore[arg-type]
            width=width, height=height, ban_tags=tuple(split_ban_text(self.ban_tags)),
            ban_nl=tuple(split_ban_text(self.ban_nl)), seed=self.seed if seed is None else seed,
            sampling=self.sampling(), protected_words=protected_words,
        )  # fmt: skip


def fields() -> tuple[dataclasses.Field, ...]:  # type: ignore[type-arg]
    return dataclasses.fields(TipoArgs)


def webui_fields() -> tuple[dataclasses.Field, ...]:  # type: ignore[type-arg]
    """The fields that only the WebUI glue reads; the CLI has no flag for them."""
    return tuple(f for f in fields() if f.metadata["spec"].webui_only)


def spec(name: str) -> FieldSpec:
    return next(f.metadata["spec"] for f in fields() if f.name == name)


def _type_of(name: str) -> type:
    return type(next(f.default for f in fields() if f.name == name))


def _coerce(name: str, value: Any) -> Any:
    """Accept what JSON and the WebUI send: ints as floats (``3.0``), numbers as strings."""
    kind = _type_of(name)
    if kind is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind in (int, float) and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if kind is int and number.is_integer() else number
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return _as_float(value)
    return value


def _as_float(value: int) -> float:
    """An int as a float; one too large for a float becomes infinite (then refused by name)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _check(f: dataclasses.Field, value: Any) -> str | None:  # type: ignore[type-arg]
    info: FieldSpec = f.metadata["spec"]
    kind = type(f.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = _as_float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        return f"{f.name}={value!r} (expected {kind.__name__})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{f.name}={value!r} (must be finite)"
    if info.choices is not None and value not in info.choices:
        return f"{f.name}={value!r} (one of {', '.join(info.choices)})"
    if info.minimum is not None and value < info.minimum:
        return f"{f.name}={value!r} (minimum {info.minimum:g})"
    if info.maximum is not None and value > info.maximum:
        return f"{f.name}={value!r} (maximum {info.maximum:g})"
    return None
