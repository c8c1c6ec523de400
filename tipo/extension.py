"""The WebUI glue's logic as plain values and functions: no gradio, no ``modules.*``.

``scripts/tipo_script.py`` reads the WebUI's processing object and control values into the
values here, calls :func:`run_job` and writes the result back. Everything that can be decided
without a WebUI (argument forms, seeds, which prompts share an expansion, fallbacks, infotext)
is decided here and tested without one. Facts about the WebUIs cited below are in
``shared/reference/webui-facts.md`` ("The API and extension args", "Order of things").
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

from tipo.args import TipoArgs, fields, spec
from tipo.errors import GenerationError, InvalidArgument, TipoError
from tipo.pipeline import Expansion
from tipo.request import ExpandRequest, resolve_seed

__all__ = [
    "TITLE", "ORIGINAL_PROMPT_KEY", "ORIGINAL_HR_PROMPT_KEY", "ERROR_KEY", "Job", "JobResult",
    "ExpanderPool", "Setting", "SETTINGS", "parse_script_args", "default_values", "derive_seed",
    "expansion_seeds", "run_job", "infotext_params", "encode_value", "decode_value",
    "paste_values", "restore_original_prompts", "environment_report", "check_api_payload",
    "resolve_tipo_seed", "seed_from_generation_info",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: The script's title: the API's ``alwayson_scripts`` key. Never versioned (style sheet, 2).
TITLE = "TIPO"
ORIGINAL_PROMPT_KEY = "TIPO original prompt"
ORIGINAL_HR_PROMPT_KEY = "TIPO original hires prompt"
ERROR_KEY = "TIPO error"
#: Marks an infotext value that would not survive the WebUI's quoting as it is (see encode_value).
_ENCODED = "json:"
_MAX_REASON = 300


class SupportsExpand(Protocol):
    def expand(self, requests: Sequence[ExpandRequest], *, strict: bool = False) -> list[Expansion]: ...


# -- arguments -------------------------------------------------------------------------------


def default_values() -> list[Any]:
    """The script's positional args with their defaults, in ``ui()`` order (= the schema's):
    what an API request that names no args gets."""
    return [f.default for f in fields()]


def parse_script_args(values: Sequence[Any]) -> TipoArgs | None:
    """The settings from what ``process()`` receives, validated; ``None`` when TIPO is off.

    Two forms: the positional list in ``ui()`` order, or a dict of named args in the first slot
    laid over the other slots (the WebUI hands ``{"args": [{...}]}`` to the script as its first
    value). A dict means enabled unless it says ``"enabled": false``. A positional list with
    TIPO off is not validated: a disabled extension never stops a generation.
    """
    names = [f.name for f in fields()]
    if len(values) > len(names):
        raise InvalidArgument(f"TIPO takes at most {len(names)} args ({', '.join(names)}); got {len(values)}")
    first = values[0] if values else False
    rest = dict(zip(names[1:], values[1:]))
    if isinstance(first, Mapping):
        keys = [key for key in first if not isinstance(key, str)]
        if keys:
            raise InvalidArgument(f"TIPO named args need string keys; got {keys!r}")
        args = TipoArgs.from_dict({**rest, "enabled": True, **first})
    elif isinstance(first, bool):
        if not first:
            return None
        args = TipoArgs.from_dict({**rest, "enabled": True})
    else:
        raise InvalidArgument(
            f"TIPO args[0] must be true/false (enabled) or an object of named args such as "
            f'{{"enabled": true, "seed": 42}}; got {type(first).__name__} {first!r}'
        )
    _check_usable(args)
    return args if args.enabled else None


def _check_usable(args: TipoArgs) -> None:
    """What only a request can tell (a custom mode without template, a ban pattern that does
    not compile): found before any prompt changes, reported by name."""
    from tipo.bans import BanList

    request = args.request("")
    BanList.compile(request.ban_tags, request.ban_nl)


def check_api_payload(payload: Any) -> None:
    """Validate TIPO's entry of a txt2img/img2img API request body before the WebUI runs it.

    The WebUI copies ``alwayson_scripts`` args into the script without looking, and a bare dict
    instead of the list fails inside it with ``KeyError: 0``; this names the problem instead.
    """
    scripts = payload.get("alwayson_scripts") if isinstance(payload, Mapping) else None
    if not isinstance(scripts, Mapping):
        return
    for title, entry in scripts.items():
        if not (isinstance(title, str) and title.lower() == TITLE.lower()) or not isinstance(entry, Mapping):
            continue
        args = entry.get("args", [])
        if isinstance(args, Mapping):
            raise InvalidArgument(
                f'alwayson_scripts["{title}"]["args"] must be a list; put the named args inside one: '
                f'{{"args": [{json.dumps(args)[:200]}]}}'
            )
        if not isinstance(args, list):
            raise InvalidArgument(f'alwayson_scripts["{title}"]["args"] must be a list; got {type(args).__name__}')
        parse_script_args(args)


# -- seeds -----------------------------------------------------------------------------------


def derive_seed(tipo_seed: int, image_seed: int, variation_seed: int | None = None) -> int:
    """The expansion seed of one image: a hash of the TIPO seed and the image's own seed, so
    images differ, one image seed always gives the same expansion, and every integer (0
    included) is a seed. The variation seed takes part only where the WebUI uses it."""
    key = f"{tipo_seed}:{image_seed}" + ("" if variation_seed is None else f":{variation_seed}")
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"tipo-image").digest()
    return int.from_bytes(digest, "little") >> 1


def expansion_seeds(
    image_seeds: Sequence[int],
    tipo_seed: int,
    *,
    per_batch: bool = False,
    batch_size: int = 1,
    variation_seeds: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Per image: its own derived seed; per batch: the seed of the batch's first image."""
    if per_batch and batch_size < 1:
        raise InvalidArgument(f"batch_size={batch_size!r} (must be >= 1)")
    seeds = []
    for index in range(len(image_seeds)):
        source = index - index % batch_size if per_batch else index
        variation = None if variation_seeds is None else variation_seeds[source]
        seeds.append(derive_seed(tipo_seed, image_seeds[source], variation))
    return tuple(seeds)


# -- one generation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """The prompts of one generation as plain values, one entry per image.

    ``hr_prompts`` are the hires-pass prompts (``None`` without hires); ``seeds`` the
    expansion seeds (:func:`expansion_seeds`); ``tipo_seed`` the TIPO seed they came from.
    """

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    tipo_seed: int
    hr_prompts: tuple[str, ...] | None = None
    width: int = 1024
    height: int = 1024
    protected_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        sizes = {len(self.prompts), len(self.seeds)} | ({len(self.hr_prompts)} if self.hr_prompts is not None else set())
        if len(sizes) != 1:
            raise InvalidArgument(f"a job needs one prompt, seed and hires prompt per image; got {sorted(sizes)} of them")


@dataclass(frozen=True)
class JobResult:
    """The new prompts; ``errors[i]`` says why image ``i`` kept its original prompt."""

    prompts: tuple[str, ...]
    hr_prompts: tuple[str, ...] | None
    errors: tuple[str | None, ...]
    infotext: dict[str, Any]

    @property
    def failed(self) -> int:
        return sum(error is not None for error in self.errors)


def run_job(job: Job, args: TipoArgs, expander: SupportsExpand, *, report: Callable[[], str] = lambda: "") -> JobResult:
    """Expand every prompt of the job in one batched call and return the new prompts.

    A text is expanded once per seed: an image's hires prompt equal to its prompt takes the
    prompt's expansion, and a separate hires prompt is expanded in the same call with the
    image's seed. An image whose expansion fails keeps its original prompt (and says why),
    unless ``args.strict``: then :class:`GenerationError` carries ``report()`` (versions,
    model, device) and the cause.
    """
    keys: dict[tuple[str, int], int] = {}
    for index, prompt in enumerate(job.prompts):
        keys.setdefault((prompt, job.seeds[index]), len(keys))
        if job.hr_prompts is not None:
            keys.setdefault((job.hr_prompts[index], job.seeds[index]), len(keys))
    requests = [
        args.request(text, width=job.width, height=job.height, seed=seed, protected_words=job.protected_words)
        for text, seed in keys
    ]  # fmt: skip
    try:
        expansions = expander.expand(requests, strict=args.strict)
        results: list[Expansion | None] = list(expansions)
        reasons = [None if r.ok else _one_line(r.error or "unknown error") for r in expansions]
    except Exception as error:  # the glue's one broad guard (style sheet, section 5)
        if args.strict:
            raise GenerationError(f"TIPO failed and strict mode is on: {type(error).__name__}: {error}\n{report()}") from error
        logger.warning("TIPO failed; every image keeps its original prompt: %s", error, exc_info=True)
        results, reasons = [None] * len(requests), [_one_line(f"{type(error).__name__}: {error}")] * len(requests)
        expansions = []

    def pick(text: str, seed: int) -> tuple[str, str | None]:
        slot = keys[(text, seed)]
        result = results[slot]
        return (result.prompt, None) if result is not None and reasons[slot] is None else (text, reasons[slot])

    picked = [pick(text, seed) for text, seed in zip(job.prompts, job.seeds)]
    prompts, errors = tuple(text for text, _ in picked), [error for _, error in picked]
    hr_prompts = None
    if job.hr_prompts is not None:
        picked_hr = [pick(text, seed) for text, seed in zip(job.hr_prompts, job.seeds)]
        hr_prompts = tuple(text for text, _ in picked_hr)
        errors = [e or (f"hires prompt: {h}" if h else None) for e, (_, h) in zip(errors, picked_hr)]
    failed = sorted({e for e in errors if e})
    if failed and expansions:  # (the guard above has logged the other case, with its traceback)
        logger.warning(
            "TIPO kept the original prompt of %d of %d image(s): %s",
            sum(e is not None for e in errors), len(prompts), "; ".join(failed[:3]),
        )  # fmt: skip
    infotext = {**infotext_params(args, job.tipo_seed), **_image_infotext(job, errors)}
    return JobResult(prompts, hr_prompts, tuple(errors), infotext)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 1] + "…"


# -- infotext --------------------------------------------------------------------------------


def encode_value(value: Any, key: str = "") -> Any:
    """An infotext value that comes back unchanged through the WebUI's quoting.

    The WebUI writes a value as is unless it holds ``,``, ``:`` or a newline (then as JSON),
    and its parser strips leading spaces, JSON-decodes any value in double quotes and cannot
    read an empty one; a value equal to its ``key`` is written as the bare key. Such strings
    are written as ``json:"…"``, which the colon makes the WebUI quote; :func:`decode_value`
    undoes it. Everything else is written as it is.
    """
    if not isinstance(value, str):
        return value
    risky = (
        value != value.strip() or not value or value == key or value.startswith(_ENCODED)
        or (len(value) > 1 and value[0] == value[-1] == '"')
    )  # fmt: skip
    return _ENCODED + json.dumps(value, ensure_ascii=False) if risky else value


def decode_value(text: Any) -> Any:
    if isinstance(text, str) and text.startswith(_ENCODED):
        try:
            decoded = json.loads(text[len(_ENCODED) :])
        except ValueError:
            return text
        return decoded if isinstance(decoded, str) else text
    return text


def infotext_params(args: TipoArgs, seed: int) -> dict[str, Any]:
    """Every setting under its schema key (``TIPO mode``…), the seed being the one used;
    empty texts (their default) are left out."""
    values = {**args.to_dict(), "seed": seed}
    return {spec(f.name).infotext: encode_value(values[f.name], spec(f.name).infotext) for f in fields() if values[f.name] != ""}


def _image_infotext(job: Job, errors: Sequence[str | None]) -> dict[str, Any]:
    """Per-image entries: the WebUI writes ``value[i]`` of a list into image ``i``'s infotext
    and leaves ``None`` out; a list whose entries are all equal is written as one value."""
    entries: dict[str, list[Any]] = {
        ORIGINAL_PROMPT_KEY: [encode_value(p, ORIGINAL_PROMPT_KEY) if e is None else None for p, e in zip(job.prompts, errors)],
        ERROR_KEY: list(errors),
    }
    if job.hr_prompts is not None:
        entries[ORIGINAL_HR_PROMPT_KEY] = [
            encode_value(h, ORIGINAL_HR_PROMPT_KEY) if e is None and h != p else None
            for p, h, e in zip(job.prompts, job.hr_prompts, errors)
        ]  # fmt: skip
    out: dict[str, Any] = {}
    for key, values in entries.items():
        if any(v is not None for v in values):
            out[key] = values[0] if all(v == values[0] for v in values) else values
    return out


def restore_original_prompts(params: dict[str, Any]) -> None:
    """The paste callback: the prompt boxes get the prompts as typed (the image's prompt is
    the expansion), so Generate with the pasted TIPO seed reproduces the expansion."""
    original = params.get(ORIGINAL_PROMPT_KEY)
    if isinstance(original, str):
        params["Prompt"] = decode_value(original)
    original_hr = params.get(ORIGINAL_HR_PROMPT_KEY)
    if isinstance(original_hr, str):
        params["Hires prompt"] = decode_value(original_hr)


def paste_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """Control values from a parsed infotext, tolerant: a missing or unreadable key gives the
    default (only ``float``/``int``/``bool`` parsing, never ``eval``).

    No ``TIPO`` key means the image was made without TIPO: TIPO is switched off and the other
    controls are left alone. When the prompt being pasted is still the expansion (the API's
    ``infotext`` field does not run the paste callback), TIPO is off too: expanding an expanded
    prompt again would not reproduce the image.
    """
    if spec("enabled").infotext not in params:
        return {"enabled": False}
    values: dict[str, Any] = {}
    for f in fields():
        raw = params.get(spec(f.name).infotext)
        if raw is None or f.name == "enabled":
            values[f.name] = f.default
            continue
        try:
            values[f.name] = getattr(TipoArgs.from_dict({f.name: decode_value(raw)}), f.name)
        except TipoError as error:
            logger.warning("TIPO: ignoring pasted %s (%s)", spec(f.name).infotext, error)
            values[f.name] = f.default
    original = params.get(ORIGINAL_PROMPT_KEY)
    values["enabled"] = not isinstance(original, str) or params.get("Prompt") == decode_value(original)
    return values


# -- environment, settings, models -----------------------------------------------------------


def environment_report(args: TipoArgs, device: str | None) -> str:
    """What a bug report needs: versions, model, device, settings (strict mode's error)."""
    import importlib.metadata

    versions = []
    for dist in ("tipo", "torch", "transformers", "huggingface_hub", "gradio"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} -")
    return (
        f"versions: python {sys.version.split()[0]}, {', '.join(versions)}\n"
        f"model: {args.model}; device: {device or 'auto'}\n"
        f"args: {json.dumps(args.to_dict(), ensure_ascii=False)}"
    )


@dataclass(frozen=True)
class Setting:
    """One WebUI option in the TIPO section of Settings (the script registers it)."""

    key: str
    default: Any
    label: str
    choices: tuple[str, ...] | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("tipo_device", "auto", "Device for TIPO: auto (the WebUI's device), cpu, cuda, cuda:1, mps…"),
    Setting("tipo_dtype", "auto", "Weights type for TIPO (auto: bfloat16/float16 on GPU, float32 on CPU)",
            ("auto", "float32", "float16", "bfloat16")),
    Setting("tipo_models_dir", "", "Folder for downloaded TIPO models (empty: the WebUI's models/TIPO)"),
    Setting("tipo_unload_after_use", False, "Unload the TIPO model after each generation (frees memory, reloads each time)"),
)  # fmt: skip


class ExpanderPool:
    """Holds the expander of the model used last (one TIPO model in memory), shared by the
    txt2img and img2img scripts; thread-safe. Its owner is the entry script."""

    def __init__(self, factory: Callable[..., SupportsExpand] | None = None) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._expander: SupportsExpand | None = None

    def get(self, model: str, *, device: str | None = None, dtype: str | None = None, cache_dir: str | None = None) -> SupportsExpand:
        key = (model, device, dtype, cache_dir)
        with self._lock:
            if self._expander is None or self._key != key:
                factory = self._factory
                if factory is None:
                    from tipo.api import Expander

                    factory = Expander
                self._expander, self._key = factory(model, device=device, dtype=dtype, cache_dir=cache_dir), key
            return self._expander

    def clear(self) -> None:
        with self._lock:
            self._expander = self._key = None


def resolve_tipo_seed(seed: int) -> int:
    """The TIPO seed of a generation: ``-1`` draws one (reported in the infotext)."""
    return resolve_seed(seed)


def seed_from_generation_info(text: str) -> int | None:
    """The TIPO seed of the last generation, from the WebUI's generation-info JSON (its
    ``extra_generation_params``), for the ♻ button; ``None`` when there is none."""
    try:
        info = json.loads(text or "{}")
    except ValueError:
        return None
    params = info.get("extra_generation_params") if isinstance(info, dict) else None
    value = params.get(spec("seed").infotext) if isinstance(params, dict) else None
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
