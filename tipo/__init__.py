"""TIPO prompt expansion: from a WebUI prompt to the exact TIPO model input and back.

``import tipo`` is cheap: torch, transformers and the tag database load only when a model or a
lookup is needed. Public names resolve lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Expander", "ExpandRequest", "Expansion", "Mode", "SamplingSettings", "TipoArgs", "prepare", "__version__"]
__version__ = "0.1.0"

_LAZY = {
    "Expander": "tipo.api",
    "ExpandRequest": "tipo.request",
    "prepare": "tipo.request",
    "Expansion": "tipo.pipeline",
    "Mode": "tipo.plan",
    "SamplingSettings": "tipo.engine.base",
    "TipoArgs": "tipo.args",
}

if TYPE_CHECKING:
    from tipo.api import Expander
    from tipo.args import TipoArgs
    from tipo.engine.base import SamplingSettings
    from tipo.pipeline import Expansion
    from tipo.plan import Mode
    from tipo.request import ExpandRequest, prepare


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tipo' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
