"""The state one decode step of :class:`tipo.engine.fast.FastEngine` works on, and its CUDA graphs.

Why static buffers: a CUDA graph replays kernels on the addresses it captured, so everything a
step reads or writes besides weights and cache lives in :class:`StepBuffers`, allocated once per
batch bucket and refilled by each call; :class:`StepGraphs` captures one step per shape and
sampling signature and replays it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Sequence

import torch

from tipo.engine.base import GenerationRequest, SamplingSettings
from tipo.engine.forward import decode_step
from tipo.engine.hf import MIN_NEW_TOKENS
from tipo.engine.llama import KVCache, LlamaWeights
from tipo.engine.sampling import (
    RowParams,
    race,
    race_candidates,
    seen_tokens,
    warp_candidates,
    warp_logits,
)

__all__ = ["NOISE_BLOCK", "StepBuffers", "StepGraphs"]

#: Each row draws its sampling noise for this many steps at once (one kernel per row per block).
NOISE_BLOCK = 16


class StepBuffers:
    """Every tensor one decode step reads or writes besides weights and cache, for ``rows`` rows.

    Static, so that a captured step finds them at the same addresses in every call: each call
    copies its rows in (:meth:`load`); spare rows (beyond the call's) are marked finished and
    sample from zero logits. Shapes: ``[R, V]`` logits (float32), seen, banned; ``[R]`` lengths,
    limits, finished; ``[R, context]`` out; ``[R, NOISE_BLOCK, V]`` noise; ``[1]`` step index.
    """

    def __init__(self, rows: int, vocab: int, max_steps: int, device: torch.device) -> None:
        self.rows = rows
        self.logits = torch.zeros((rows, vocab), dtype=torch.float32, device=device)
        self.seen = torch.zeros((rows, vocab), dtype=torch.bool, device=device)
        self.banned = torch.zeros((rows, vocab), dtype=torch.bool, device=device)
        self.banned_with_eos = torch.zeros((rows, vocab), dtype=torch.bool, device=device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.limits = torch.zeros(rows, dtype=torch.long, device=device)
        self.finished = torch.ones(rows, dtype=torch.bool, device=device)
        self.out = torch.zeros((rows, max_steps), dtype=torch.long, device=device)
        self.noise = torch.ones((rows, NOISE_BLOCK, vocab), dtype=torch.float32, device=device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)  # [1]: a 0-d index would sync
        self.row_index = torch.arange(rows, device=device)
        self.params = RowParams.build([SamplingSettings()] * rows, device)
        self.eos_id = 0

    def load(
        self,
        requests: Sequence[GenerationRequest],
        limits: list[int],
        logits: torch.Tensor,
        banned_ids: tuple[int, ...],
        eos_id: int,
    ) -> RowParams:
        """Copy one call's rows in; the call's settings as a RowParams over the static tensors."""
        rows, device = len(requests), self.logits.device
        settings = [r.sampling for r in requests]
        fresh = RowParams.build(settings + [settings[0]] * (self.rows - rows), device)
        for field in dataclasses.fields(RowParams):
            value = getattr(self.params, field.name)
            if isinstance(value, torch.Tensor):
                value.copy_(getattr(fresh, field.name))
        self.logits.zero_()
        self.logits[:rows] = logits
        prompts = [r.input_ids for r in requests]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([list(p) + [0] * (width - len(p)) for p in prompts], dtype=torch.long, device=device)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        valid = torch.arange(width, device=device) < lengths[:, None]
        self.seen.zero_()
        self.seen[:rows] = seen_tokens(ids, valid, self.seen.shape[1])
        self.banned.zero_()
        if banned_ids:
            self.banned[:, list(banned_ids)] = True
        self.banned_with_eos.copy_(self.banned)
        self.banned_with_eos[:, eos_id] = True
        self.eos_id = eos_id
        self.lengths.zero_()
        self.lengths[:rows] = lengths
        self.limits.zero_()
        self.limits[:rows] = torch.tensor(limits, device=device)
        self.finished.fill_(True)
        self.finished[:rows] = False
        self.step_index.zero_()
        return dataclasses.replace(fresh, **{f.name: getattr(self.params, f.name) for f in dataclasses.fields(RowParams)
                                             if isinstance(getattr(self.params, f.name), torch.Tensor)})  # fmt: skip

    def step(
        self, weights: LlamaWeights, cache: KVCache, params: RowParams, length: int, kernels: bool, candidates: bool
    ) -> None:
        """Sample every row's next token from ``logits``, record it, feed it: new ``logits``.
        Tensor operations only (no host sync), so a CUDA graph can capture it."""
        k = self.step_index
        banned = torch.where(k < MIN_NEW_TOKENS, self.banned_with_eos, self.banned)
        noise = self.noise[self.row_index, k % NOISE_BLOCK]
        if candidates and params.max_top_k > 0:
            token = race_candidates(*warp_candidates(self.logits, params, banned, self.seen), noise)  # [R]
            if not params.all_top_k:  # rows without top-k sample over the whole vocabulary, as they would alone
                whole = race(warp_logits(self.logits, None, None, params, banned, seen=self.seen), noise)
                token = torch.where(params.top_k > 0, token, whole)
        else:
            token = race(warp_logits(self.logits, None, None, params, banned, seen=self.seen), noise)  # [R]
        self.out[self.row_index, k] = token
        self.finished |= (token == self.eos_id) | (self.limits <= k + 1)
        self.seen.scatter_(1, token.unsqueeze(1), True)  # a scalar, not a host tensor to copy over
        # Rows past their end keep running (fixed shapes); clamping keeps them inside the cache.
        positions = (self.lengths + k).clamp(max=cache.length - 1)
        self.logits.copy_(decode_step(weights, cache, token, positions, length, kernels=kernels))
        self.step_index += 1


class StepGraphs:
    """CUDA graphs of one decode step, keyed by shapes and sampling signature, one memory pool.

    A key's first step runs eagerly (that is the warm-up: library handles, allocator), its
    second is captured, later ones replay. Graphs never run concurrently, so sharing the pool is
    safe; dropping them all drops the pool too, and the next capture starts a new one.
    """

    def __init__(self) -> None:
        self._graphs: dict[tuple[Any, ...], Any] = {}
        self._warm: set[tuple[Any, ...]] = set()
        self._pool: Any = None

    def clear(self) -> None:
        self._graphs.clear()
        self._warm.clear()
        self._pool = None

    def run(self, key: tuple[Any, ...], step: Callable[[], None]) -> bool:
        """Replay (capturing first if due) and return True, or False: run ``step`` eagerly."""
        graph = self._graphs.get(key)
        if graph is None:
            if key not in self._warm:
                self._warm.add(key)
                return False
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            options: dict[str, Any] = {"pool": self._pool}
            if "capture_error_mode" in inspect.signature(torch.cuda.graph).parameters:
                options["capture_error_mode"] = "thread_local"  # other threads may use the GPU meanwhile
            with torch.cuda.graph(graph, **options):
                step()  # recorded, not run
            self._graphs[key] = graph
        graph.replay()
        return True
