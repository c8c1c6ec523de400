"""Generation engines: they turn token ids into continuations, batched, one seed per row."""

from __future__ import annotations

from tipo.engine.base import Engine, GenerationRequest, GenerationResult, SamplingSettings

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "SamplingSettings"]
