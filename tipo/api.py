"""The Python API: an :class:`Expander` owns one model and expands batches of requests.

>>> from tipo import Expander, ExpandRequest          # doctest: +SKIP
>>> expander = Expander("KBlueLeaf/TIPO-200M-ft2")     # doctest: +SKIP
>>> expander.expand([ExpandRequest("1girl, solo", seed=42)])[0].prompt  # doctest: +SKIP

The model is resolved (Hub download or local folder) and loaded on first use, once, even when
many threads call at the same time. Each call's bans, seeds and settings live in its requests:
two threads never see each other's.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from tipo.errors import UnsupportedModelError
from tipo.models import DEFAULT_MODEL
from tipo.pipeline import Expansion, expand_batch
from tipo.request import ExpandRequest

__all__ = ["Expander", "DEFAULT_MODEL"]

logger = logging.getLogger(__name__)


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
    ) -> None:
        self.model = str(model)
        self._device = device
        self._dtype = dtype
        self._lookup = lookup
        self._cache_dir = cache_dir
        self._local_files_only = local_files_only
        self._lock = threading.Lock()
        self._engine: Any = None
        self._tokenizer: Any = None

    def _ready(self) -> tuple[Any, Any, Callable[[str], str | None]]:
        with self._lock:
            if self._engine is None:
                from tipo.models import resolve_model

                folder = resolve_model(self.model, cache_dir=self._cache_dir, local_files_only=self._local_files_only)
                self._engine, self._tokenizer = _load_engine(folder, self._device, self._dtype)
            if self._lookup is None:
                from tipo.tagdb import default_database

                self._lookup = default_database().category
            return self._engine, self._tokenizer, self._lookup

    def expand(self, requests: Sequence[ExpandRequest], *, strict: bool = False) -> list[Expansion]:
        """Expand every request in batched passes; see :func:`tipo.pipeline.expand_batch`.

        Loading errors (model missing, Hub unreachable) are raised: the caller decides whether to
        keep the original prompts (the WebUI glue does, unless strict).
        """
        engine, tokenizer, lookup = self._ready()
        return expand_batch(requests, engine, tokenizer, lookup, strict=strict)


def _load_engine(folder: Path, device: str | None, dtype: str | None) -> tuple[Any, Any]:
    """The fast engine; transformers' ``generate`` (HFEngine) for a checkpoint it cannot run."""
    from tipo.engine.fast import load_fast_engine

    try:
        return load_fast_engine(folder, device, dtype)
    except UnsupportedModelError as error:
        logger.warning("TIPO fast engine cannot run %s (%s); using transformers' generate", folder, error)
    from tipo.engine.hf import HFEngine
    from tipo.models import load_model

    loaded = load_model(folder, device, dtype)
    return HFEngine(loaded.model, loaded.tokenizer, loaded.device, loaded.dtype), loaded.tokenizer
