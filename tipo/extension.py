"""The WebUI glue's logic as plain values and functions: no gradio, no ``modules.*``.

``scripts/tipo_script.py`` reads the WebUI's processing object and control values into the
values here, calls :func:`run_job` and writes the result back. Everything that can be decided
without a WebUI (argument forms, seeds, which prompts share an expansion, fallbacks, progress,
the preview) is decided here and tested without one; the infotext lives in :mod:`tipo.infotext`,
the Settings and the model holder in :mod:`tipo.settings`, the X/Y/Z plot axes in
:mod:`tipo.xyz`, the HTTP routes in :mod:`tipo.routes`. Facts about the WebUIs cited below are in
``shared/reference/webui-facts.md`` ("The API and extension args", "Order of things").
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from tipo.args import TipoArgs, fields, spec
from tipo.engine.base import Control, Progress
from tipo.errors import GenerationError, InvalidArgument, TipoError
from tipo.infotext import (
    ERROR_KEY,
    ORIGINAL_HR_PROMPT_KEY,
    ORIGINAL_PROMPT_KEY,
    decode_value,
    encode_value,
    image_infotext,
    infotext_params,
    paste_values,
    restore_original_prompts,
    upscale_reuse,
    written_prompt,
)
from tipo.pipeline import Expansion
from tipo.request import resolve_seed
from tipo.settings import (
    SETTINGS,
    ExpanderPool,
    Setting,
    SupportsExpand,
    environment_report,
)

__all__ = [
    "TITLE", "Job", "JobResult", "Preview", "parse_script_args", "default_values", "derive_seed",
    "expansion_seeds", "run_job", "check_api_payload", "resolve_tipo_seed", "seed_from_generation_info",
    "webui_control", "progress_text", "preview",
    # re-exported from tipo.infotext and tipo.settings, where they live
    "ORIGINAL_PROMPT_KEY", "ORIGINAL_HR_PROMPT_KEY", "ERROR_KEY", "encode_value", "decode_value",
    "infotext_params", "paste_values", "restore_original_prompts", "upscale_reuse", "written_prompt", "ExpanderPool", "Setting", "SETTINGS",
    "environment_report",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: The script's title: the API's ``alwayson_scripts`` key. Never versioned (style sheet, 2).
TITLE = "TIPO"
_MAX_REASON = 300


# -- arguments -------------------------------------------------------------------------------


def default_values() -> list[Any]:
    """The script's positional args with their defaults, in ``ui()`` order (= the schema's):
    what an API request that names no args gets."""
    return [f.default for f in fields()]


def parse_script_args(values: Sequence[Any], overrides: Mapping[str, Any] | None = None) -> TipoArgs | None:
    """The settings from what ``process()`` receives, validated; ``None`` when TIPO is off.

    Two forms: the positional list in ``ui()`` order, or a dict of named args in the first slot
    laid over the other slots (the WebUI hands ``{"args": [{...}]}`` to the script as its first
    value). A dict means enabled unless it says ``"enabled": false``. A positional list with
    TIPO off is not validated: a disabled extension never stops a generation.

    ``overrides`` (named values an X/Y/Z plot axis set on ``p``, :mod:`tipo.xyz`) are laid over
    both forms and switch TIPO on unless they say ``"enabled": false``: a plot over a TIPO
    setting with TIPO off would draw the same image in every cell.
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
        named = {**rest, "enabled": True, **first}
    elif isinstance(first, bool):
        named = {**rest, "enabled": first}
    else:
        raise InvalidArgument(
            f"TIPO args[0] must be true/false (enabled) or an object of named args such as "
            f'{{"enabled": true, "seed": 42}}; got {type(first).__name__} {first!r}'
        )
    if overrides:
        named = {**named, "enabled": True, **overrides}
    elif not isinstance(first, Mapping) and not first:
        return None
    args = TipoArgs.from_dict(named)
    _check_usable(args)
    return args if args.enabled else None


def _check_usable(args: TipoArgs) -> None:
    """What only a request can tell (a custom mode without template, a ban pattern that does
    not compile): found before any prompt changes, reported by name."""
    from tipo.bans import BanList
    from tipo.errors import BanPatternError

    request = args.request("")
    try:
        BanList.compile(request.ban_tags, request.ban_nl)
    except BanPatternError as error:  # only tag bans are patterns: name the field
        raise BanPatternError(f"ban_tags: {error}") from error


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


def run_job(
    job: Job,
    args: TipoArgs,
    expander: SupportsExpand,
    *,
    report: Callable[[], str] = lambda: "",
    control: Control | None = None,
) -> JobResult:
    """Expand every prompt of the job in one batched call and return the new prompts.

    A text is expanded once per seed: an image's hires prompt equal to its prompt takes the
    prompt's expansion, and a separate hires prompt is expanded in the same call with the
    image's seed. An image whose expansion fails keeps its original prompt (and says why),
    unless ``args.strict``: then :class:`GenerationError` carries ``report()`` (versions,
    model, device) and the cause. ``control`` shows progress and stops between decode steps
    (Interrupt/Skip); stopped rows keep their prompts, strict or not (it is no failure).
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
        expansions = expander.expand(requests, strict=args.strict, control=control)
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
    infotext = {**infotext_params(args, job.tipo_seed), **image_infotext(job.prompts, job.hr_prompts, errors)}
    return JobResult(prompts, hr_prompts, tuple(errors), infotext)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 1] + "…"


# -- seeds of the UI ------------------------------------------------------------------------


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


# -- progress, Interrupt and Skip ------------------------------------------------------------


def progress_text(progress: Progress) -> str:
    """The WebUI's progress line during TIPO's decoding ("TIPO: pass 2, step 37/256, 8 prompts")."""
    rows = f"{progress.rows} prompt" + ("" if progress.rows == 1 else "s")
    return f"TIPO: pass {max(progress.round, 1)}, step {progress.step + 1}/{progress.steps}, {rows}"


def webui_control(state: Any) -> Control:
    """A :class:`Control` over the WebUI's ``shared.state``: Interrupt and Skip stop TIPO
    between decode steps (Skip skips TIPO: the images are drawn from the prompts as typed);
    the progress line and step counter show TIPO's decoding until the sampler takes them over.
    "Stop generating" (Forge) lets the current image finish, and that needs its prompt expanded.
    """

    def should_stop() -> bool:
        return bool(getattr(state, "interrupted", False) or getattr(state, "skipped", False))

    def on_progress(progress: Progress) -> None:
        state.textinfo = progress_text(progress)
        state.sampling_step, state.sampling_steps = progress.step, progress.steps

    return Control(should_stop=should_stop, on_progress=on_progress)


# -- "Expand now" ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    """The result of "Expand now": the expansion of the prompt box, or why there is none."""

    original: str
    prompt: str
    seed: int | None = None
    error: str | None = None


def preview(
    prompt: str,
    values: Sequence[Any],
    expander_for: Callable[[TipoArgs], SupportsExpand],
    *,
    width: int = 1024,
    height: int = 1024,
    protected_words: tuple[str, ...] = (),
    control: Control | None = None,
) -> Preview:
    """Expand the prompt box with the current controls (TIPO's checkbox ignored), without a
    generation. The TIPO seed itself seeds it (there is no image seed yet); ``-1`` draws one,
    reported in the result. Never raises: every problem comes back as ``error``."""
    try:
        args = parse_script_args([True, *values[1:]])
        assert args is not None  # enabled by construction
        seed = resolve_tipo_seed(args.seed)
        request = args.request(prompt, width=int(width), height=int(height), seed=seed, protected_words=protected_words)
    except (TipoError, TypeError, ValueError) as error:
        return Preview(prompt, prompt, error=_one_line(str(error)))
    try:
        [result] = expander_for(args).expand([request], strict=False, control=control)
    except Exception as error:  # the glue's broad guard (style sheet, section 5)
        logger.warning("TIPO preview failed: %s", error, exc_info=True)
        return Preview(prompt, prompt, seed, _one_line(f"{type(error).__name__}: {error}"))
    return Preview(prompt, result.prompt, result.seed, None if result.ok else _one_line(result.error or "unknown error"))
