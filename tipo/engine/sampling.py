"""Per-row sampling on a batch of next-token logits.

transformers' ``generate`` applies one set of sampling settings and one global RNG to a whole
batch; a WebUI batch needs each image's row to have its own settings and its own seed, and a row
must come out the same whether it runs alone or beside others. So the filtering here is done
row by row with tensors of per-row settings, and each row draws from its own
``torch.Generator``.

The filters reproduce transformers' ``RepetitionPenaltyLogitsProcessor``,
``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper`` and
``MinPLogitsWarper`` value for value (``tests/test_engine_hf.py`` compares them on the same
logits), in the order ``GenerationMixin._get_logits_processor`` applies them in 4.30 to 5.x:
repetition penalty, temperature, top-k, top-p, min-p.
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from tipo.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

    from tipo.engine.base import SamplingSettings

__all__ = [
    "RowParams", "derive_seed", "make_generator", "seen_tokens", "warp_logits", "fill_noise", "race", "draw_tokens",
    "warp_candidates", "race_candidates",
]


def derive_seed(seed: int) -> int:
    """Map any integer seed (negative, 0, beyond 64 bits) to a 63-bit generator seed.

    Hashing rather than masking keeps nearby seeds (``s`` and ``s + 2**64``, ``-1`` and
    ``2**64 - 1``) from sharing a stream, and the result fits every torch generator.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InvalidArgument(f"seed={seed!r} (must be an integer)")
    digest = hashlib.sha256(b"tipo-seed:" + str(int(seed)).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``seed`` alone; the global RNG is never touched.

    Falls back to a CPU generator where the backend has none of its own (older MPS builds);
    :func:`draw_tokens` then draws the noise on the CPU and moves it over.
    """
    import torch

    try:
        generator = torch.Generator(device=device)
    except RuntimeError:
        generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(seed))
    return generator


@dataclass(frozen=True)
class RowParams:
    """Sampling settings of a batch as column tensors, built once per batch.

    Shapes: ``penalty``, ``temperature``, ``top_p_cut``, ``min_p`` are ``[B, 1]`` float32;
    ``top_k`` is ``[B]`` int64. ``top_p_cut`` is ``1 - top_p``, computed in Python like
    transformers does, so the threshold compares equal bit for bit.
    """

    penalty: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p_cut: torch.Tensor
    use_top_p: torch.Tensor
    min_p: torch.Tensor
    max_top_k: int
    any_top_p: bool
    any_min_p: bool
    all_top_k: bool = False

    @property
    def signature(self) -> tuple[int, bool, bool, bool]:
        """What decides the kernels a sampling step runs (part of a CUDA graph's key)."""
        return (self.max_top_k, self.any_top_p, self.any_min_p, self.all_top_k)

    @classmethod
    def build(cls, settings: Sequence[SamplingSettings], device: torch.device) -> RowParams:
        import torch

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

        return cls(
            penalty=column([s.repetition_penalty for s in settings]),
            temperature=column([s.temperature for s in settings]),
            top_k=torch.tensor([s.top_k for s in settings], dtype=torch.long, device=device),
            top_p_cut=column([1 - s.top_p for s in settings]),
            use_top_p=torch.tensor([[s.top_p < 1.0] for s in settings], dtype=torch.bool, device=device),
            min_p=column([s.min_p for s in settings]),
            max_top_k=max(s.top_k for s in settings),
            any_top_p=any(s.top_p < 1.0 for s in settings),
            any_min_p=any(s.min_p > 0.0 for s in settings),
            all_top_k=all(s.top_k > 0 for s in settings),
        )


def warp_logits(
    scores: torch.Tensor,
    context_ids: torch.Tensor | None,
    context_valid: torch.Tensor | None,
    params: RowParams,
    banned: torch.Tensor | None = None,
    *,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Filtered float32 logits ``[B, V]``: removed tokens are ``-inf``.

    ``context_ids`` ``[B, T]`` are the ids the repetition penalty looks at (the row's input and
    what it generated so far); ``context_valid`` ``[B, T]`` marks which of them are real, so a
    row's left padding never counts as a repeated token (it would, in transformers: pad is EOS
    for TIPO). An engine that keeps the :func:`seen_tokens` mask ``[B, V]`` up to date itself
    passes it as ``seen`` instead (and ``None`` for both). ``banned`` ``[B, V]`` bool removes
    tokens before anything else.
    """
    import torch

    if seen is None:
        if context_ids is None:
            raise InvalidArgument("warp_logits needs context_ids or seen")
        seen = seen_tokens(context_ids, context_valid, scores.shape[-1])
    scores = _adjust(scores, params, banned, seen)
    if params.max_top_k > 0:
        scores = _apply_top_k(scores, params)
    if params.any_top_p:
        scores = _apply_top_p(scores, params)
    if params.any_min_p:
        probs = torch.softmax(scores, dim=-1)
        remove = probs < params.min_p * probs.amax(dim=-1, keepdim=True)
        # min_tokens_to_keep=1: the most likely token always stays (transformers does the same).
        remove.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


def warp_candidates(
    scores: torch.Tensor, params: RowParams, banned: torch.Tensor, seen: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`warp_logits` over each row's top-k candidates only: (filtered float32 logits
    ``[B, K]``, their token ids ``[B, K]``), K = ``params.max_top_k``; rows with ``top_k == 0``
    get meaningless values here (the engine samples those over the whole vocabulary).

    Why: top-p and min-p over the whole vocabulary sort and softmax 32,000 values per row per
    step: a third of a GPU decode step, a fifth of a CPU one at batch 1; after top-k every other
    token is ``-inf`` anyway. The kept tokens and their probabilities are the ones
    :func:`warp_logits` (transformers' processors) gives, but for summation order (an ulp) and
    ties at the k-th value (transformers keeps every token tied with it, this keeps K), so a
    sample can differ in rare near-ties; ``FastEngine(candidates=False)`` samples exactly as
    transformers and :class:`tipo.engine.hf.HFEngine` do.
    """
    import torch

    scores = _adjust(scores, params, banned, seen)
    values, ids = torch.topk(scores, min(params.max_top_k, scores.shape[-1]), dim=-1)  # descending
    k = params.top_k.clamp(1, values.shape[-1])
    values = values.masked_fill(values < values.gather(1, (k - 1).unsqueeze(1)), float("-inf"))
    if params.any_top_p:
        # transformers' rule over the ascending order: drop while the cumulative mass <= 1 - top_p.
        ascending = values.flip(-1)
        remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= params.top_p_cut
        remove[:, -1] = False
        values = values.masked_fill((remove & params.use_top_p).flip(-1), float("-inf"))
    if params.any_min_p:
        probs = torch.softmax(values, dim=-1)
        remove = probs < params.min_p * probs[:, :1]  # column 0 is each row's most likely token
        remove[:, 0] = False
        values = values.masked_fill(remove, float("-inf"))
    return values, ids


def _adjust(scores: torch.Tensor, params: RowParams, banned: torch.Tensor | None, seen: torch.Tensor) -> torch.Tensor:
    """float32 logits with ``banned`` tokens removed, the repetition penalty on ``seen`` tokens,
    divided by the temperature: what every filter of :func:`warp_logits` starts from."""
    import torch

    scores = scores.float()
    if banned is not None:
        scores = scores.masked_fill(banned, float("-inf"))
    scores = torch.where(seen, _penalise(scores, params.penalty), scores)
    return scores / params.temperature


def race_candidates(values: torch.Tensor, ids: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """:func:`race` over candidates: each candidate meets the noise of its own token id, so a
    row draws what :func:`race` would draw over the whole vocabulary. ``[B]`` token ids."""
    import torch

    probs = torch.softmax(values, dim=-1)
    tiny = torch.finfo(torch.float32).tiny
    choice = torch.argmax(probs / noise.gather(1, ids).clamp_min(tiny), dim=-1, keepdim=True)
    return ids.gather(1, choice).squeeze(1)


def seen_tokens(context_ids: torch.Tensor, context_valid: torch.Tensor | None, vocab: int) -> torch.Tensor:
    """``[B, V]`` bool: which tokens occur among each row's valid ``context_ids`` ``[B, T]``."""
    import torch

    ids = context_ids if context_valid is None else context_ids.masked_fill(~context_valid, vocab)
    # One spare column takes the masked positions; scattering a constant is order-independent.
    seen = torch.zeros((context_ids.shape[0], vocab + 1), dtype=torch.bool, device=context_ids.device)
    seen.scatter_(1, ids, True)
    return seen[:, :vocab]


def _penalise(scores: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.where(scores < 0, scores * penalty, scores / penalty)


def _apply_top_k(scores: torch.Tensor, params: RowParams) -> torch.Tensor:
    import torch

    vocab = scores.shape[-1]
    top_values = torch.topk(scores, min(params.max_top_k, vocab), dim=-1).values  # [B, K]
    k = params.top_k.clamp(1, top_values.shape[-1])
    kth = top_values.gather(1, (k - 1).unsqueeze(1))  # [B, 1]
    kth = kth.masked_fill((params.top_k == 0).unsqueeze(1), float("-inf"))
    return scores.masked_fill(scores < kth, float("-inf"))


def _apply_top_p(scores: torch.Tensor, params: RowParams) -> torch.Tensor:
    import torch

    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= params.top_p_cut
    remove_sorted[:, -1] = False
    remove_sorted &= params.use_top_p
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def draw_tokens(scores: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token id per row ``[B]`` from filtered logits, row ``i`` using ``generators[i]`` only.

    Exponential race (as gpt-fast's ``multinomial_sample_one_no_sync``): ``argmax(p / q)``
    with ``q ~ Exp(1)`` picks token ``t`` with probability ``p_t`` and needs no host sync.
    Each row draws a full vocabulary of noise every step, so its stream does not depend on the
    other rows or on how many tokens its filters kept.
    """
    import torch

    noise = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    return race(scores, fill_noise(noise, generators))


def fill_noise(noise: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Fill row ``i`` of ``noise`` ``[B, ...]`` with Exp(1) draws from ``generators[i]`` only.

    One kernel per row, each on a contiguous row as on a tensor of its own, so a row of ``V``
    values is the same draw as :func:`draw_tokens` makes for one step. A generator on another
    device than ``noise`` (the CPU fallback of :func:`make_generator`) draws there first.
    """
    import torch

    for row, generator in enumerate(generators):
        target = noise[row]
        if generator.device == noise.device:
            target.exponential_(1.0, generator=generator)
        else:
            drawn = torch.empty(target.shape, dtype=noise.dtype, device=generator.device)
            target.copy_(drawn.exponential_(1.0, generator=generator))
    return noise


def race(scores: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``argmax(softmax(scores) / noise)`` per row ``[B]``: the draw of :func:`draw_tokens`
    once ``noise`` ``[B, V]`` holds the rows' Exp(1) values. No host sync; graph-capturable."""
    import torch

    probs = torch.softmax(scores.float(), dim=-1)
    tiny = torch.finfo(torch.float32).tiny
    return torch.argmax(probs / noise.clamp_min(tiny), dim=-1)  # an exact 0 would make 0/0 = NaN win
