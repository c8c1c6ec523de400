"""The Python API: an :class:`Expander` owns one model and expands batches of requests.

>>> from tipo import Expander, ExpandRequest          # doctest: +SKIP
>>> expander = Expander("KBlueLeaf/TIPO-200M-ft2")     # doctest: +SKIP
>>> expander.expand([ExpandRequest("1girl, solo", seed=42)])[0].prompt  # doctest: +SKIP

The model is resolved (Hub download or local folder) and loaded on first use, once, even when
many threads call at the same time. Each call's bans, seeds and settings live in its requests:
two threads never see each other's.

Between calls the model stays where :class:`Residency` says: on its device (fastest), on the
CPU (frees the GPU for the image model; moved back before the next call), or dropped after some
idle minutes. A batch that runs out of GPU memory is split by the pipeline; a single row that
still does not fit runs on the CPU.
"""

from __future__ import annotations

import enum
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from tipo.engine.base import Control, GenerationRequest, GenerationResult
from tipo.errors import InvalidArgument, UnsupportedModelError
from tipo.models.registry import DEFAULT_MODEL
from tipo.pipeline import Expansion, expand_batch
from tipo.request import ExpandRequest

__all__ = ["Expander", "Residency", "DEFAULT_MODEL"]

logger = logging.getLogger(__name__)


class Residency(str, enum.Enum):
    """Where the model waits between calls (the WebUI's "VRAM policy" setting)."""

    KEEP = "keep"  #: on its device: no transfer, holds its memory
    OFFLOAD = "offload"  #: moved to the CPU after each call, back before the next
    UNLOAD = "unload_idle"  #: dropped after ``idle_minutes`` without a call (0: after each call)


class Expander:
    """Expands prompts with one TIPO model (a Hub repo id of the registry, or a local folder)."""

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        *,
        device: str | None = None,
        dtype: str | None = None,
        lookup: Callable[[str], str | None] | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool | None = None,
        residency: Residency | str = Residency.KEEP,
        idle_minutes: float = 10.0,
    ) -> None:
        self.model = str(model)
        self._device = device
        self._dtype = dtype
        self._lookup = lookup
        self._cache_dir = cache_dir
        self._local_files_only = local_files_only
        try:
            self.residency = Residency(residency)
        except ValueError:
            choices = ", ".join(r.value for r in Residency)
            raise InvalidArgument(f"residency={residency!r} (must be one of {choices})") from None
        if not (isinstance(idle_minutes, (int, float)) and 0 <= idle_minutes < float("inf")):
            raise InvalidArgument(f"idle_minutes={idle_minutes!r} (must be a number >= 0)")
        self.idle_minutes = float(idle_minutes)
        self._lock = threading.Lock()
        self._engine: Any = None
        self._home: Any = None  # the device the engine runs on (it may wait elsewhere)
        self._tokenizer: Any = None
        self._users = 0
        self._idle_timer: threading.Timer | None = None

    @property
    def is_loaded(self) -> bool:
        return self._engine is not None

    @property
    def device(self) -> Any:
        """Where the model is now (``None`` when not loaded)."""
        engine = self._engine
        return None if engine is None else engine.device

    def _ready(self) -> tuple[Any, Any, Callable[[str], str | None]]:
        """Load or bring back the engine and count this caller as a user of it."""
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            if self._engine is None:
                from tipo.models.resolve import resolve_model

                folder = resolve_model(self.model, cache_dir=self._cache_dir, local_files_only=self._local_files_only)
                self._engine, self._tokenizer = _load_engine(folder, self._device, self._dtype)
                self._home = self._engine.device
            elif self._engine.device != self._home:
                self._engine = self._engine.to(self._home)
            if self._lookup is None:
                from tipo.tagdb import default_database

                self._lookup = default_database().category
            self._users += 1
            return self._engine, self._tokenizer, self._lookup

    def _release(self) -> None:
        """The last user out applies the residency policy."""
        with self._lock:
            self._users -= 1
            if self._users or self._engine is None:
                return
            if self.residency is Residency.OFFLOAD and self._engine.device.type != "cpu":
                self._engine = self._engine.to("cpu")
                _free_device_cache(self._home)
            elif self.residency is Residency.UNLOAD:
                if self.idle_minutes == 0:
                    self._drop()
                else:
                    self._idle_timer = threading.Timer(self.idle_minutes * 60, self._unload_if_idle)
                    self._idle_timer.daemon = True
                    self._idle_timer.start()

    def _unload_if_idle(self) -> None:
        with self._lock:
            if not self._users:
                logger.info("TIPO model %s unloaded after %g idle minute(s)", self.model, self.idle_minutes)
                self._drop()

    def _drop(self) -> None:
        home, self._engine, self._tokenizer, self._home = self._home, None, None, None
        _free_device_cache(home)

    def unload(self) -> None:
        """Drop the model now (it loads again on the next call); refused while a call runs."""
        with self._lock:
            if self._users:
                raise InvalidArgument("unload() while an expansion is running; call it afterwards")
            self._drop()

    def expand(
        self, requests: Sequence[ExpandRequest], *, strict: bool = False, control: Control | None = None
    ) -> list[Expansion]:
        """Expand every request in batched passes; see :func:`tipo.pipeline.expand_batch`.

        Loading errors (model missing, Hub unreachable) are raised: the caller decides whether to
        keep the original prompts (the WebUI glue does, unless strict). ``control`` reports
        progress and stops between decode steps (:class:`tipo.engine.base.Control`).
        """
        engine, tokenizer, lookup = self._ready()
        try:
            return expand_batch(requests, _CpuFallback(engine), tokenizer, lookup, strict=strict, control=control)
        finally:
            self._release()


class _CpuFallback:
    """The engine, except that a single row which does not fit in GPU memory runs on the CPU.

    Batches of several rows re-raise the out-of-memory error, so the pipeline splits them first;
    the CPU copy is made once per call, on the first such row, and dropped with the call.
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._cpu: Any = None
        self.context_length = engine.context_length

    def generate(self, requests: Sequence[GenerationRequest], control: Control | None = None) -> list[GenerationResult]:
        import torch

        try:
            return self._engine.generate(requests, control=control)
        except torch.cuda.OutOfMemoryError:
            # HFEngine.to() moves the shared transformers model itself: no CPU copy to make there.
            if len(requests) > 1 or self._engine.device.type == "cpu" or not getattr(self._engine, "copies_on_move", False):
                raise
        logger.warning("TIPO: out of GPU memory for a single prompt; running it on the CPU")
        _free_device_cache(self._engine.device)
        if self._cpu is None:
            self._cpu = self._engine.to("cpu")
        return self._cpu.generate(requests, control=control)


def _free_device_cache(device: Any) -> None:
    """Return the allocator's cached blocks, so the image model can use the memory."""
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


def _load_engine(folder: Path, device: str | None, dtype: str | None) -> tuple[Any, Any]:
    """The fast engine; transformers' ``generate`` (HFEngine) for a checkpoint it cannot run."""
    from tipo.engine.fast import load_fast_engine

    try:
        return load_fast_engine(folder, device, dtype)
    except UnsupportedModelError as error:
        logger.warning("TIPO fast engine cannot run %s (%s); using transformers' generate", folder, error)
    from tipo.engine.hf import HFEngine
    from tipo.models.load import load_model

    loaded = load_model(folder, device, dtype)
    return HFEngine(loaded.model, loaded.tokenizer, loaded.device, loaded.dtype), loaded.tokenizer
