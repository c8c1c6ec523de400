"""The LLaMA forward of :mod:`tipo.engine.fast` over :class:`tipo.engine.llama.LlamaWeights`.

Two plain functions: :func:`prefill` for prompts of different lengths packed end to end,
:func:`decode_step` for one token per row against the static :class:`tipo.engine.llama.KVCache`.
The arithmetic follows transformers' ``LlamaForCausalLM``: RMSNorm in float32, rotary embedding
by ``rotate_half`` from a float32 table, softmax in float32, SwiGLU MLP;
``tests/test_engine_fast.py`` compares the logits with transformers' own in every CI env. On
CUDA, a fused form of the same maths (fewer kernels) and the Triton kernels of
:mod:`tipo.engine.kernels` trade bit-for-bit agreement for speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tipo.engine.llama import KVCache, LayerWeights, LlamaShape, LlamaWeights, Packed

__all__ = ["decode_step", "kernels_support", "prefill"]

def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``x * cos + rotate_half(x) * sin``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _mlp(x: torch.Tensor, layer: LayerWeights, eps: float) -> torch.Tensor:
    gate, up = F.linear(_rms_norm(x, layer.mlp_norm, eps), layer.gate_up).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, layer.down)


def _logits(w: LlamaWeights, x: torch.Tensor) -> torch.Tensor:
    return F.linear(_rms_norm(x, w.norm, w.shape.rms_norm_eps), w.lm_head).float()


def prefill(
    w: LlamaWeights, cache: KVCache, packed: Packed, kernels: bool = False, sdpa: bool | None = None
) -> torch.Tensor:
    """Run the packed prompts, write their keys/values to the cache; float32 logits ``[G, V]``
    of each row's last token.

    Matrix products run on the ``T`` real tokens only; attention runs per row on ``[G, W]``
    (each row's queries against its own cache row, causal), so padding costs only there.
    ``sdpa`` (default: off CUDA) uses PyTorch's attention kernel; on CUDA the attention is
    written out instead, because there torch picks cuDNN, which builds a plan for every new
    prompt width (about 55 ms on an H100, so most of a request's prefill) and whose choice made
    results differ between engines (benchmarks/README.md). ``kernels`` runs the norms and the
    SiLU with :mod:`tipo.engine.kernels` (fewer launches; as :func:`decode_step`).
    """
    if sdpa is None:
        sdpa = not packed.tokens.is_cuda
    if kernels:
        from tipo.engine import kernels as k
    s = w.shape
    H, K, D, T = s.num_heads, s.num_kv_heads, s.head_dim, packed.tokens.shape[0]
    G = packed.last.shape[0]
    group = slice(packed.first, packed.first + G)
    cos, sin = w.cos[packed.positions].unsqueeze(1), w.sin[packed.positions].unsqueeze(1)  # [T, 1, D]
    x = w.embed[packed.tokens]  # [T, hidden], a new tensor (the kernels update it in place)
    if kernels:
        h = k.rms_norm(x, w.layers[0].attn_norm, s.rms_norm_eps)
    norms = [layer.attn_norm for layer in w.layers[1:]] + [w.norm]
    # Positions a query may not see, built once for every layer ([W, W], True above the diagonal).
    future = None if sdpa else torch.ones(packed.width, packed.width, dtype=torch.bool, device=x.device).triu(1)
    for index, (layer, next_norm) in enumerate(zip(w.layers, norms)):
        normed = h if kernels else _rms_norm(x, layer.attn_norm, s.rms_norm_eps)
        q, k_, v = F.linear(normed, layer.qkv).split([H * D, K * D, K * D], -1)
        cache.k[index][packed.rows, :, packed.positions] = _rotate(k_.view(T, K, D), cos, sin)
        cache.v[index][packed.rows, :, packed.positions] = v.view(T, K, D)
        queries = q.new_zeros(G, packed.width, H, D)
        queries[packed.local, packed.positions] = _rotate(q.view(T, H, D), cos, sin)
        keys = _repeat_kv(cache.k[index][group, :, : packed.width], H // K)  # [G, H, W, D]
        values = _repeat_kv(cache.v[index][group, :, : packed.width], H // K)
        if sdpa:
            out = F.scaled_dot_product_attention(queries.transpose(1, 2), keys, values, is_causal=True)
        else:
            assert future is not None
            out = _attention(queries.transpose(1, 2), keys, values, future)
        out = out.transpose(1, 2)[packed.local, packed.positions].reshape(T, H * D)  # [T, H * D]
        if kernels:
            h = k.add_rms_norm_(x, F.linear(out, layer.o), layer.mlp_norm, s.rms_norm_eps)
            h = k.add_rms_norm_(x, F.linear(k.silu_mul(F.linear(h, layer.gate_up)), layer.down), next_norm,
                                s.rms_norm_eps)  # fmt: skip
        else:
            x = _mlp(x + F.linear(out, layer.o), layer, s.rms_norm_eps)
    if kernels:
        return F.linear(h[packed.last], w.lm_head).float()
    return _logits(w, x[packed.last])


def _attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(D)) v`` written out, ``hidden`` positions masked, softmax in
    float32 (transformers' eager attention): ``[..., Q, D]`` queries against ``[..., S, D]``."""
    scores = torch.matmul(queries, keys.transpose(-1, -2)) * (1.0 / math.sqrt(queries.shape[-1]))  # [..., Q, S]
    probs = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1, dtype=torch.float32)
    return torch.matmul(probs.to(queries.dtype), values)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    rows, heads, length, dim = x.shape
    return x[:, :, None].expand(rows, heads, groups, length, dim).reshape(rows, heads * groups, length, dim)


def decode_step(
    w: LlamaWeights,
    cache: KVCache,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    length: int,
    fused: bool | None = None,
    kernels: bool = False,
    sdpa: bool | None = None,
) -> torch.Tensor:
    """One token per cache row ``0 .. B-1``: ``tokens`` and ``positions`` ``[B]`` (where each
    row writes). Attention reads cache positions ``< length`` only, masked to ``<= position``.
    Fixed shapes for a given (B, length): this is what a CUDA graph captures. Logits ``[B, V]``.

    ``fused`` (default: on CUDA) trades bit-for-bit agreement with transformers for fewer
    kernels per layer (a step is launch-bound on a GPU): one rotary pass over queries and keys,
    PyTorch's attention kernel, residual adds inside the matrix products, fused RMSNorm where
    torch has it. Off, the arithmetic is transformers' own, which keeps CPU rows batch-invariant.
    ``kernels`` runs each layer with the Triton kernels of :mod:`tipo.engine.kernels` instead
    (five kernels a layer; attention reads positions ``<= position`` only, ``length`` unused).
    ``sdpa`` (default: off CUDA) runs the unfused path's attention in PyTorch's kernel: on the
    CPU a third faster than the written-out form at a few hundred positions (8 rows, 2 cores),
    where a batch's attention reads as many cache bytes as a fifth of the weights.
    """
    if kernels:
        return _kernel_step(w, cache, tokens, positions)
    if fused is None:
        fused = tokens.is_cuda
    s = w.shape
    H, K, D, B = s.num_heads, s.num_kv_heads, s.head_dim, tokens.shape[0]
    rows = torch.arange(B, device=tokens.device)
    hidden = torch.arange(length, device=tokens.device) > positions.unsqueeze(1)  # [B, S]
    hidden = hidden[:, None, None, :]  # [B, 1, 1, S]
    cos, sin = w.cos[positions].unsqueeze(1), w.sin[positions].unsqueeze(1)  # [B, 1, D]
    x = w.embed[tokens]  # [B, hidden]
    if fused:
        for index, layer in enumerate(w.layers):
            x = _fused_layer(x, layer, cache, index, rows, positions, cos, sin, hidden, length, s)
        return _logits(w, x)
    if sdpa is None:
        sdpa = not tokens.is_cuda
    visible = ~hidden if sdpa else None
    for index, layer in enumerate(w.layers):
        q, k, v = F.linear(_rms_norm(x, layer.attn_norm, s.rms_norm_eps), layer.qkv).split([H * D, K * D, K * D], -1)
        cache.k[index][rows, :, positions] = _rotate(k.view(B, K, D), cos, sin)
        cache.v[index][rows, :, positions] = v.view(B, K, D)
        # The H // K query heads sharing a key/value head act as its query rows: [B, K, G, D].
        q = _rotate(q.view(B, H, D), cos, sin).view(B, K, H // K, D)
        keys, values = cache.k[index][:B, :, :length], cache.v[index][:B, :, :length]
        if visible is not None:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
        else:
            out = _attention(q, keys, values, hidden)  # [B, K, G, D]
        x = _mlp(x + F.linear(out.reshape(B, H * D), layer.o), layer, s.rms_norm_eps)
    return _logits(w, x)


def _fused_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not hasattr(F, "rms_norm"):  # torch < 2.4
        return _rms_norm(x, weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _fused_layer(
    x: torch.Tensor,
    layer: LayerWeights,
    cache: KVCache,
    index: int,
    rows: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    hidden: torch.Tensor,
    length: int,
    s: LlamaShape,
) -> torch.Tensor:
    """One decoder layer of :func:`decode_step` in its fused form (same maths, fewer kernels)."""
    H, K, D, B = s.num_heads, s.num_kv_heads, s.head_dim, x.shape[0]
    qkv = F.linear(_fused_norm(x, layer.attn_norm, s.rms_norm_eps), layer.qkv)
    qk = _rotate(qkv[:, : (H + K) * D].view(B, H + K, D), cos, sin)  # queries and keys at once
    cache.k[index][rows, :, positions] = qk[:, H:]
    cache.v[index][rows, :, positions] = qkv[:, (H + K) * D :].view(B, K, D)
    q = qk[:, :H].reshape(B, K, H // K, D)  # the query heads of a key/value head as its rows
    # Written out rather than F.scaled_dot_product_attention: on an H100 its kernel choice made
    # the same call sample differently from one engine to the next (benchmarks/README.md).
    out = _attention(q, cache.k[index][:B, :, :length], cache.v[index][:B, :, :length], hidden)  # [B, K, G, D]
    x = torch.addmm(x, out.reshape(B, H * D), layer.o.t())
    gate, up = F.linear(_fused_norm(x, layer.mlp_norm, s.rms_norm_eps), layer.gate_up).chunk(2, dim=-1)
    return torch.addmm(x, F.silu(gate) * up, layer.down.t())


def _kernel_step(w: LlamaWeights, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """:func:`decode_step` over the Triton kernels (see :mod:`tipo.engine.kernels`)."""
    from tipo.engine import kernels

    s, eps = w.shape, w.shape.rms_norm_eps
    x = w.embed[tokens]  # [B, hidden], a new tensor: the residual stream, updated in place
    for index, layer in enumerate(w.layers):
        qkv = kernels.linear(x, layer.qkv, norm=layer.attn_norm, eps=eps)
        out = kernels.rotary_attention(qkv, cache.k[index], cache.v[index], positions, w.cos, w.sin,
                                       s.num_heads, s.num_kv_heads)  # fmt: skip
        kernels.linear(out, layer.o, residual=x)
        gate_up = kernels.linear(x, layer.gate_up, norm=layer.mlp_norm, eps=eps)
        kernels.linear(gate_up, layer.down, silu=True, residual=x)
    return kernels.linear(x, w.lm_head, norm=w.norm, eps=eps, out_dtype=torch.float32)


def kernels_support(shape: LlamaShape, dtype: torch.dtype) -> bool:
    """Whether :func:`decode_step`'s ``kernels`` path handles these weights: a power-of-two head
    size, half-precision weights (``tl.dot`` would round float32 to tf32)."""
    return shape.head_dim > 1 and shape.head_dim & (shape.head_dim - 1) == 0 and dtype in (torch.float16, torch.bfloat16)
