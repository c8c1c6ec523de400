"""FastEngine: every row of a call in one batched decode over our own LLaMA forward.

The shape follows gpt-fast (style sheet, section 8), plus what a WebUI batch needs:

- **Static KV cache** (:class:`tipo.engine.llama.KVCache`), allocated for the largest call so
  far and reused while big enough; rows carry no padding: row ``b`` holds its prompt at positions
  ``0 .. len_b - 1`` and writes its ``k``-th new token's keys at ``len_b + k``.
- **Prefill without waste**: the prompts are packed end to end, so the matrix products see only
  real tokens (:func:`tipo.engine.forward.prefill`).
- **Fixed-shape decode step**: one token per row; attention reads the cache only up to the
  longest row rounded up to :data:`LENGTH_BUCKET` positions, not the whole cache. A step is
  sample-then-feed over static buffers (:class:`tipo.engine.steps.StepBuffers`), so on CUDA the whole step, sampling
  included, is captured in one CUDA graph per (batch bucket, length bucket, sampling signature)
  and replayed; if capture fails the engine warns once and stays eager. No ``torch.compile``,
  no transformers cache class: torch 2.1+ and transformers 4.30.2+ are enough.
- **Triton kernels** (:mod:`tipo.engine.kernels`) where Triton imports, on CUDA: five kernels
  a layer instead of about thirty, attention over the positions each row wrote (so one graph
  per batch bucket, whatever the length). Checked against the torch path on the engine's first
  call; if they fail to compile or disagree, the engine logs why and keeps the torch path.
- **Sampling on the device** with :mod:`tipo.engine.sampling` (``warp_logits``, ``race``), each
  row drawing its noise from its own generator, so a row's tokens do not depend on the rows
  beside it. The draws come in blocks of :data:`tipo.engine.steps.NOISE_BLOCK` steps (one kernel per row per
  block, outside the graph: per-row generators cannot be captured on torch 2.1). On the CPU a
  block is the same stream as one draw per step, so FastEngine and HFEngine pick the same tokens
  from the same logits; on CUDA the two engines' streams differ. The repetition penalty's
  seen-token mask is kept up to date per step instead of being rebuilt.
- **Stops**: each row ends at its own EOS or ``max_new_tokens``, tracked on the device; the host
  asks "all rows done?" only every ``stop_check_every`` steps (each ask waits for the device).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from tipo.engine import kernels as kernel_module
from tipo.engine.base import Control, GenerationRequest, GenerationResult, checkpoint
from tipo.engine.forward import decode_step, kernels_support, prefill
from tipo.engine.hf import MIN_NEW_TOKENS, TIPO_V1_CONTEXT, SpecialIds, TokenIds
from tipo.engine.llama import KVCache, LlamaShape, LlamaWeights, pack_rows
from tipo.engine.sampling import RowParams, fill_noise, make_generator
from tipo.engine.steps import NOISE_BLOCK, StepBuffers, StepGraphs
from tipo.errors import GenerationError, InvalidArgument

if TYPE_CHECKING:
    from tipo.tokenizer import TipoTokenizer

__all__ = ["FastEngine", "load_fast_engine", "row_limits", "LENGTH_BUCKET"]

logger = logging.getLogger(__name__)

#: Attention reads cache positions up to the longest row rounded up to a multiple of this.
#: Smaller reads less per step; each bucket costs one CUDA-graph capture per batch bucket.
LENGTH_BUCKET = 64
#: Prefill runs rows in groups of at most this many prompt tokens (padded to the group's
#: longest row), which bounds its activation memory.
PREFILL_TOKENS = 8192
#: ... and at most this many attention scores (rows x heads x width x width): on CUDA the
#: prefill attention is written out (tipo.engine.forward.prefill), float32 scores of 128 MiB.
PREFILL_SCORES = 1 << 25
#: Steps between host checks of "every row done". A check waits for the device, and each step
#: run after the last row stopped is wasted. On the CPU a check costs nothing (all is
#: synchronous); on an H100 with CUDA graphs, checking every 1, 4, 8, 16 or 32 steps measured the
#: same within 1% (benchmarks/README.md), so a small cadence that wastes little wins.
STOP_CHECK_EVERY = {"cuda": 4}


def row_limits(requests: Sequence[GenerationRequest], context_length: int, vocab_size: int) -> list[int]:
    """Each row's own new-token budget within ``context_length``; rejects bad rows by index.

    The same rules and messages as :class:`tipo.engine.hf.HFEngine`.
    """
    limits = []
    for row, request in enumerate(requests):
        length = len(request.input_ids)
        if length == 0:
            raise InvalidArgument(f"row {row}: input_ids is empty (it must start with BOS)")
        if length + MIN_NEW_TOKENS > context_length:
            raise InvalidArgument(
                f"row {row}: input is {length} tokens; with at least {MIN_NEW_TOKENS} new tokens "
                f"it exceeds the model's context of {context_length} tokens. "
                f"Shorten the prompt (at most {context_length - MIN_NEW_TOKENS} tokens)."
            )
        out_of_range = [i for i in request.input_ids if not 0 <= i < vocab_size]
        if out_of_range:
            raise InvalidArgument(
                f"row {row}: token ids {out_of_range[:5]!r} are outside the vocabulary [0, {vocab_size})"
            )
        limits.append(min(request.sampling.max_new_tokens, context_length - length))
    return limits


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class FastEngine:
    """:class:`tipo.engine.base.Engine` over :class:`tipo.engine.llama.LlamaWeights`.

    ``banned_ids`` are never generated. ``use_cuda_graph`` defaults to "on CUDA";
    ``stop_check_every`` to :data:`STOP_CHECK_EVERY` for the device (1 elsewhere); ``kernels``
    (the Triton decode step) to "on CUDA where Triton works"; ``candidates`` (sampling over the
    top-k only, :func:`tipo.engine.sampling.warp_candidates`) to on. Calls are
    serialised by a lock: one cache, one batch at a time.
    """

    def __init__(
        self,
        weights: LlamaWeights,
        token_ids: SpecialIds,
        *,
        context_length: int = TIPO_V1_CONTEXT,
        banned_ids: Sequence[int] = (),
        use_cuda_graph: bool | None = None,
        stop_check_every: int | None = None,
        kernels: bool | None = None,
        candidates: bool | None = None,
    ) -> None:
        self._weights = weights
        self._vocab_size = weights.shape.vocab_size
        cadence_option = stop_check_every
        if token_ids.eos_id is None:
            raise InvalidArgument("the tokenizer has no EOS token; rows could never stop")
        eos = int(token_ids.eos_id)
        pad = eos if token_ids.pad_id is None else int(token_ids.pad_id)
        self._ids = TokenIds(eos if token_ids.bos_id is None else int(token_ids.bos_id), eos, pad)
        if not 2 < context_length <= weights.shape.max_positions:
            raise InvalidArgument(f"context_length={context_length!r} (must be in (2, {weights.shape.max_positions}])")
        self.context_length = int(context_length)
        bad = [i for i in banned_ids if not 0 <= i < self._vocab_size]
        if bad:
            raise InvalidArgument(f"banned_ids={bad!r} (must be in [0, {self._vocab_size}))")
        self._banned_ids = tuple(sorted(set(int(i) for i in banned_ids)))
        on_cuda = weights.device.type == "cuda"
        if use_cuda_graph and not on_cuda:
            raise InvalidArgument(f"use_cuda_graph=True but the weights are on {weights.device}")
        self._use_graph = on_cuda if use_cuda_graph is None else bool(use_cuda_graph)
        if stop_check_every is None:
            stop_check_every = STOP_CHECK_EVERY.get(weights.device.type, 1)
        self._check_every = int(stop_check_every)
        if self._check_every < 1:
            raise InvalidArgument(f"stop_check_every={stop_check_every!r} (must be >= 1)")
        kernels_run_here = on_cuda and kernel_module.available() and kernels_support(weights.shape, weights.dtype)
        if kernels and not kernels_run_here:
            raise InvalidArgument(
                "kernels=True needs CUDA half-precision weights, Triton and a power-of-two head size "
                f"(device {weights.device}, Triton {'present' if kernel_module.available() else 'missing'}, "
                f"dtype {weights.dtype}, head size {weights.shape.head_dim})"
            )
        # None: on where they can run, after a check against the torch path on first use.
        self._kernels = kernels is not False and kernels_run_here
        self._kernels_checked = kernels is True or not self._kernels
        # Sampling over the top-k candidates (sampling.warp_candidates); False: transformers'
        # processors over the whole vocabulary, token for token.
        self._candidates = True if candidates is None else bool(candidates)
        self._token_ids = token_ids
        self._options: dict[str, Any] = {  # for to(): what the caller chose, not what this device implied
            "context_length": self.context_length,
            "banned_ids": self._banned_ids,
            "stop_check_every": cadence_option,
            "use_cuda_graph": False if use_cuda_graph is False else None,
            "kernels": False if kernels is False else None,
            "candidates": candidates,
        }
        self._lock = threading.Lock()
        self._cache: KVCache | None = None
        self._batches: dict[int, StepBuffers] = {}
        self._graphs = StepGraphs()

    @classmethod
    def from_model(cls, model: Any, token_ids: SpecialIds, **options: Any) -> FastEngine:
        """Over a loaded transformers ``LlamaForCausalLM`` (its weights are copied, fused)."""
        return cls(LlamaWeights.from_model(model), token_ids, **options)

    @property
    def device(self) -> torch.device:
        return self._weights.device

    @property
    def dtype(self) -> torch.dtype:
        return self._weights.dtype

    @property
    def weights(self) -> LlamaWeights:
        return self._weights

    @property
    def uses_cuda_graph(self) -> bool:
        return self._use_graph

    @property
    def uses_kernels(self) -> bool:
        """Whether decode steps run the Triton kernels (:mod:`tipo.engine.kernels`)."""
        return self._kernels

    #: :meth:`to` leaves this engine as it was (a copy of the weights moves).
    copies_on_move = True

    def to(self, device: torch.device | str) -> FastEngine:
        """A new engine over these weights moved to ``device`` (cache and graphs start afresh).
        Stop-check cadence and CUDA graphs follow the new device unless they were set."""
        with self._lock:
            return FastEngine(self._weights.to(device), self._token_ids, **self._options)

    def cache_bytes(self) -> int:
        return 0 if self._cache is None else self._cache.nbytes()

    def generate(self, requests: Sequence[GenerationRequest], control: Control | None = None) -> list[GenerationResult]:
        """Continue every row in one batched run; results in the order of ``requests``.
        ``control`` is consulted at the stop-check cadence (see :class:`tipo.engine.base.Control`)."""
        if not requests:
            return []
        limits = row_limits(requests, self.context_length, self._vocab_size)
        started = time.perf_counter()
        checkpoint(control, 0, max(limits), len(requests))
        with self._lock, torch.no_grad():
            try:
                tokens, steps = self._run(requests, limits, control)
            except torch.cuda.OutOfMemoryError:
                raise  # as is: the caller may split the batch or move to the CPU
            except (RuntimeError, ValueError, TypeError, IndexError) as error:
                raise GenerationError(f"generation failed for {len(requests)} rows: {error}") from error
            new_tokens = tokens.tolist()  # one device-to-host copy for all rows
        results = [self._result(row, limit) for row, limit in zip(new_tokens, limits, strict=True)]
        logger.debug(
            "generated %d rows in %d steps (up to %d new tokens) in %.2fs",
            len(requests), steps, max(limits), time.perf_counter() - started,
        )  # fmt: skip
        return results

    def _result(self, new_tokens: list[int], limit: int) -> GenerationResult:
        head = new_tokens[:limit]
        if self._ids.eos_id in head:
            return GenerationResult(tuple(head[: head.index(self._ids.eos_id)]), stopped_at_eos=True)
        return GenerationResult(tuple(head), stopped_at_eos=False)

    def _run(
        self, requests: Sequence[GenerationRequest], limits: list[int], control: Control | None = None
    ) -> tuple[torch.Tensor, int]:
        """New tokens ``[B, steps]`` (past a row's end: filler) and the number of steps run."""
        prompts = [r.input_ids for r in requests]
        rows = len(prompts)
        # Batch bucket: one CUDA graph per power of two, not per batch size (spare rows are cheap).
        run_rows = 1 << (rows - 1).bit_length() if self._use_graph else rows
        lengths = [len(p) for p in prompts]
        longest, steps = max(lengths), max(limits)
        # Attention reads up to the longest row + steps so far, rounded up to the bucket: a
        # function of this call alone, never of a cache left larger by an earlier call (on CUDA
        # a longer masked read changes fp16 rounding, so the same call could sample otherwise).
        span = min(_round_up(longest + steps, LENGTH_BUCKET), self.context_length)
        if not self._kernels_checked:
            self._kernels = self._check_kernels()
            self._kernels_checked = True
        cache = self._ensure_cache(run_rows, span)
        if run_rows not in self._batches:
            self._batches[run_rows] = StepBuffers(run_rows, self._vocab_size, self.context_length, self.device)
        batch = self._batches[run_rows]
        params = batch.load(requests, limits, self._prefill(cache, prompts), self._banned_ids, self._ids.eos_id)
        generators = [make_generator(r.seed, self.device) for r in requests]
        for step in range(steps):
            if step % NOISE_BLOCK == 0:
                fill_noise(batch.noise[:rows], generators)
            self._step(cache, batch, params, min(_round_up(longest + step + 1, LENGTH_BUCKET), span))
            if step + 1 == steps:
                break
            if (step + 1) % self._check_every == 0:
                if bool(batch.finished.all()):
                    break
                checkpoint(control, step + 1, steps, rows)
        return batch.out[:rows, : step + 1], step + 1

    def _ensure_cache(self, rows: int, length: int) -> KVCache:
        cache = self._cache
        if cache is None or cache.rows < rows or cache.length < length:
            if cache is not None:
                rows, length = max(rows, cache.rows), max(length, cache.length)
            self._graphs.clear()  # they point into the old cache
            self._cache = None  # free it before allocating the new one
            cache = KVCache.allocate(self._weights.shape, rows, length, self.device, self.dtype)
            self._cache = cache
        return cache

    def _prefill(self, cache: KVCache, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits ``[B, V]`` of each row's last prompt token.

        Identical prompts are run once and their cache rows copied: the images of a WebUI batch
        share one prompt, so their first pass has one prompt ``B`` times, and on the CPU a
        prefill costs as much arithmetic as dozens of decode steps."""
        distinct: dict[tuple[int, ...], int] = {}
        source = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
        if len(distinct) == len(prompts):
            return self._prefill_rows(cache, prompts)
        logits = self._prefill_rows(cache, list(distinct))  # into rows 0 .. len(distinct) - 1
        index = torch.tensor(source, device=self.device)
        width = max(len(p) for p in distinct)
        for part in (cache.k, cache.v):
            part[:, : len(prompts), :, :width] = part[:, index, :, :width]  # the gather copies first
        return logits[index]

    def _prefill_rows(self, cache: KVCache, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """:meth:`_prefill` of rows ``0 .. B-1``, in groups (PREFILL_TOKENS, PREFILL_SCORES)."""
        outputs, first = [], 0
        while first < len(prompts):
            end, width = first + 1, len(prompts[first])
            while end < len(prompts):
                wider = max(width, len(prompts[end]))
                rows = end + 1 - first
                if wider * rows > PREFILL_TOKENS or rows * self._weights.shape.num_heads * wider * wider > PREFILL_SCORES:
                    break
                width = wider
                end += 1
            packed = pack_rows(prompts[first:end], first, self.device)
            outputs.append(prefill(self._weights, cache, packed, kernels=self._kernels))
            first = end
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def _check_kernels(self) -> bool:
        """Decode steps of two short rows, then of one (each product kernel of
        :func:`tipo.engine.kernels.linear`), with the Triton kernels and with torch: True if
        they agree (relative error < 1 %). Anything else (no compiler, a Triton too old, wrong
        numbers) is logged once and the engine keeps the torch path."""
        w = self._weights
        rows = [[self._ids.bos_id, 3, 4, 5], [self._ids.bos_id, 6]]
        try:
            logits = []
            for kernels in (True, False):
                cache = KVCache.allocate(w.shape, len(rows), LENGTH_BUCKET, self.device, self.dtype)
                prefill(w, cache, pack_rows(rows, 0, self.device), kernels=kernels)
                tokens = torch.tensor([7, 8], device=self.device)
                positions = torch.tensor([len(r) for r in rows], device=self.device)
                # Both rows (tensor-core products), then the first alone (one-row products).
                both = decode_step(w, cache, tokens, positions, LENGTH_BUCKET, kernels=kernels)
                alone = decode_step(w, cache, tokens[:1], positions[:1] + 1, LENGTH_BUCKET, kernels=kernels)
                logits.append(torch.cat([both, alone]))
            ours, torch_path = logits
            error = float((ours - torch_path).norm() / torch_path.norm().clamp_min(1e-6))
            if not torch.isfinite(ours).all() or not error < 1e-2:
                raise GenerationError(f"their logits differ from the torch path's (relative error {error:.3g})")
        except Exception as error:  # a compile failure surfaces as many error classes
            logger.warning("Triton kernels unusable here (%s); the fast engine uses torch operations", error)
            return False
        return True

    def _step(self, cache: KVCache, batch: StepBuffers, params: RowParams, length: int) -> None:
        kernels = self._kernels
        if self._use_graph:
            # With the kernels, attention reads what each row wrote whatever ``length`` is.
            key = (batch.rows, 0 if kernels else length, kernels, self._candidates, params.signature)
            try:
                if self._graphs.run(key, lambda: batch.step(self._weights, cache, params, length, kernels, self._candidates)):
                    return
            except RuntimeError as error:
                logger.warning("CUDA graph capture failed (%s); the fast engine runs eagerly from now on", error)
                self._use_graph = False
                self._graphs.clear()
        batch.step(self._weights, cache, params, length, kernels, self._candidates)


def load_fast_engine(
    path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None, **options: Any
) -> tuple[FastEngine, TipoTokenizer]:
    """A model folder (safetensors) or a LLaMA ``.gguf`` file straight to a :class:`FastEngine`
    and its tokenizer, without building a transformers model.

    Device and dtype are chosen as :func:`tipo.models.load.load_model` chooses them. Raises
    :class:`tipo.errors.UnsupportedModelError` for a checkpoint the fast forward does not
    reproduce (the caller then uses :class:`tipo.engine.hf.HFEngine`).
    """
    from tipo.models.device import choose_device, choose_dtype
    from tipo.models.files import is_gguf_file
    from tipo.models.load import load_plan

    source = Path(path)
    if is_gguf_file(source):
        from tipo.gguf.checkpoint import open_gguf

        checkpoint = open_gguf(source)  # weights dequantised one at a time, as build() asks
        target_device = choose_device(device)
        target_dtype = choose_dtype(target_device, dtype, checkpoint.stored_dtype)
        shape = LlamaShape.from_config(checkpoint.config)
        weights = LlamaWeights.build(shape, checkpoint.tensor, target_device, target_dtype)
        tokenizer = checkpoint.tokenizer
    else:
        from tipo.tokenizer import TipoTokenizer

        folder, config, target_device, target_dtype = load_plan(source, device, dtype)
        tokenizer = TipoTokenizer.from_dir(folder)
        tokenizer.check_vocab(int(config.get("vocab_size", 0)))
        weights = LlamaWeights.from_safetensors(folder, config, target_device, target_dtype)
    dtype_name = str(target_dtype).removeprefix("torch.")
    logger.info("loaded %s for the fast engine on %s (%s)", source.name, target_device, dtype_name)
    return FastEngine(weights, tokenizer, **options), tokenizer
