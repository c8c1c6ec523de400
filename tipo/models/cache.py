"""Keep loaded models between generations, so a WebUI batch or CLI run loads each one once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tipo.errors import InvalidArgument
from tipo.models.load import LoadedModel, load_model, load_plan

if TYPE_CHECKING:
    import torch


class ModelCache:
    """Loads each (folder, device, dtype) once and keeps the ``max_models`` most recently used.

    Thread-safe: concurrent callers asking for the same model wait for one load; different
    models load in parallel. One instance per owner (the WebUI script, the CLI), never global.
    """

    def __init__(self, loader: Callable[..., LoadedModel] = load_model, *, max_models: int = 1) -> None:
        if max_models < 1:
            raise InvalidArgument(f"max_models={max_models!r} (must be >= 1)")
        self._loader = loader
        self._max_models = max_models
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, str, str], threading.Lock] = {}

    def get(
        self, path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None
    ) -> LoadedModel:
        folder, _, target_device, target_dtype = load_plan(Path(path).expanduser().resolve(), device, dtype)
        key = (str(folder), str(target_device), str(target_dtype))
        with self._lock:
            cached = self._take(key)
            if cached is not None:
                return cached
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                cached = self._take(key)
            if cached is not None:
                return cached
            try:
                loaded = self._loader(folder, device=target_device, dtype=target_dtype)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._entries[key] = loaded
                while len(self._entries) > self._max_models:
                    self._entries.popitem(last=False)
        return loaded

    def _take(self, key: tuple[str, str, str]) -> LoadedModel | None:
        """Cached entry marked as most recently used; caller holds ``_lock``."""
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
        return cached

    def clear(self) -> None:
        """Forget every model (their memory is freed once no engine holds them)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
