"""Triton kernels for the CUDA decode step: three kernels that stand for about twenty of torch's.

Why: one decode step of a 200M-500M model reads its weights in about 0.1-0.3 ms on an H100 but
launches some thirty kernels per layer when written with torch operations, each costing a few
microseconds even replayed from a CUDA graph, so a step is bound by launches, not by memory.
Per layer these kernels leave eight: the q/k/v product (cuBLAS), :func:`rotary_attention`
(rotary embedding of q and k, the cache write and the attention, in one kernel that reads only
the cache positions a row has written), the output product (cuBLAS), :func:`add_rms_norm_`
(residual add and RMSNorm), the gate/up product (cuBLAS), :func:`silu_mul`, the down product
(cuBLAS), :func:`add_rms_norm_` again (with the next layer's norm).

Optional: Triton ships with torch's Linux CUDA wheels but not on Windows or macOS, and needs a C
compiler at its first launch. :func:`available` says whether it imports; the engine checks the
kernels against the torch path on its first step and uses torch alone if anything fails
(:class:`tipo.engine.fast.FastEngine`). The arithmetic rounds where the torch path rounds (rotary
products, SiLU, the normalised row) and accumulates in float32; only the attention's reduction
order differs. Only the features of Triton 2.1 (torch 2.1, A1111) are used.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Windows, macOS, CPU-only wheels
    triton = None
    tl = None

__all__ = ["add_rms_norm_", "available", "rms_norm", "rotary_attention", "silu_mul"]

#: Cache positions one step of the attention loop reads per row and head, and warps per program
#: (one program per row and head). Measured on an H100, TIPO-200M shapes (profile_step.py
#: --tune): 128/8 was fastest of 32-128 x 1-8 at batch 1, 8 and 32 and 128 or 512 positions
#: (3.5 µs vs 4.4 for 64/4 at 128 positions, batch 1; 8.4 vs 12.7 at 512).
ATTENTION_BLOCK = 128
ATTENTION_WARPS = 8
#: Elements of the intermediate vector one program of :func:`silu_mul` handles.
SILU_BLOCK = 1024


def available() -> bool:
    """Whether Triton imports (the kernels may still fail to compile: see the engine's check)."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, n, eps, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + row * n + offs, mask=mask, other=0.0).to(tl.float32)
        variance = tl.sum(x * x, axis=0) / n
        normed = (x / tl.sqrt(variance + eps)).to(out_ptr.dtype.element_ty)  # rounded, as torch does
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n + offs, (w * normed.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _add_rms_norm_kernel(x_ptr, y_ptr, w_ptr, out_ptr, n, eps, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        dtype = x_ptr.dtype.element_ty
        total = tl.load(x_ptr + row * n + offs, mask=mask, other=0.0).to(tl.float32)
        total = total + tl.load(y_ptr + row * n + offs, mask=mask, other=0.0).to(tl.float32)
        x = total.to(dtype)  # the residual stream, rounded as torch's add rounds it
        tl.store(x_ptr + row * n + offs, x, mask=mask)
        x = x.to(tl.float32)
        variance = tl.sum(x * x, axis=0) / n
        normed = (x / tl.sqrt(variance + eps)).to(dtype)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n + offs, (w * normed.to(tl.float32)).to(dtype), mask=mask)

    @triton.jit
    def _rotate(x_ptr, d, swap, sign, cos, sin):  # type: ignore[no-untyped-def]
        """transformers' ``x * cos + rotate_half(x) * sin``, each product rounded to the dtype."""
        x = tl.load(x_ptr + d).to(tl.float32)
        partner = tl.load(x_ptr + swap).to(tl.float32)
        dtype = x_ptr.dtype.element_ty
        return ((x * cos).to(dtype).to(tl.float32) + (sign * partner * sin).to(dtype).to(tl.float32)).to(dtype)

    @triton.jit
    def _rotary_attention_kernel(  # type: ignore[no-untyped-def]
        qkv_ptr, k_cache, v_cache, pos_ptr, cos_ptr, sin_ptr, out_ptr,
        qkv_stride, cache_row_stride, cache_head_stride, scale,
        H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // (H // KV)
        position = tl.load(pos_ptr + row)
        d = tl.arange(0, D)
        swap = (d + D // 2) % D
        sign = tl.where(d < D // 2, -1.0, 1.0)
        cos = tl.load(cos_ptr + position * D + d).to(tl.float32)
        sin = tl.load(sin_ptr + position * D + d).to(tl.float32)
        base = qkv_ptr + row * qkv_stride
        q = _rotate(base + head * D, d, swap, sign, cos, sin).to(tl.float32)
        k = _rotate(base + (H + kv_head) * D, d, swap, sign, cos, sin)
        v = tl.load(base + (H + KV + kv_head) * D + d)
        cache = row * cache_row_stride + kv_head * cache_head_stride
        if head % (H // KV) == 0:  # one writer per key/value head; readers never read this slot
            tl.store(k_cache + cache + position * D + d, k)
            tl.store(v_cache + cache + position * D + d, v)
        # Online softmax, seeded with the current token (kept in registers, not re-read).
        best = tl.sum(q * k.to(tl.float32), axis=0) * scale
        total = best * 0.0 + 1.0
        acc = v.to(tl.float32)
        t = tl.arange(0, BLOCK_T)
        for start in range(0, position, BLOCK_T):
            at = start + t
            valid = at < position
            keys = tl.load(k_cache + cache + at[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)
            scores = tl.sum(keys.to(tl.float32) * q[None, :], axis=1) * scale
            scores = tl.where(valid, scores, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=0))
            keep = tl.exp(best - new_best)
            weights = tl.exp(scores - new_best)
            values = tl.load(v_cache + cache + at[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)
            total = total * keep + tl.sum(weights, axis=0)
            acc = acc * keep + tl.sum(weights[:, None] * values.to(tl.float32), axis=0)
            best = new_best
        tl.store(out_ptr + row * (H * D) + head * D + d, (acc / total).to(out_ptr.dtype.element_ty))

    @triton.jit
    def _silu_mul_kernel(gate_up_ptr, out_ptr, n, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        gate = tl.load(gate_up_ptr + row * 2 * n + offs, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gate_up_ptr + row * 2 * n + n + offs, mask=mask, other=0.0).to(tl.float32)
        dtype = out_ptr.dtype.element_ty
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)  # F.silu rounds its output
        tl.store(out_ptr + row * n + offs, (silu * up).to(dtype), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm of a contiguous ``[B, n]`` in one kernel."""
    rows, n = x.shape
    out = torch.empty_like(x)
    _rms_norm_kernel[(rows,)](x, weight, out, n, eps, BLOCK=triton.next_power_of_2(n))
    return out


def add_rms_norm_(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x += y`` in place (the residual stream) and return RMSNorm of the new ``x``, in one
    kernel: the residual add needs no copy of ``x`` for cuBLAS to add into, and no launch."""
    rows, n = x.shape
    out = torch.empty_like(x)
    _add_rms_norm_kernel[(rows,)](x, y, weight, out, n, eps, BLOCK=triton.next_power_of_2(n))
    return out


def rotary_attention(
    qkv: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    kv_heads: int,
    block: int = 0,
    warps: int = 0,
) -> torch.Tensor:
    """One decode step's attention for rows ``0 .. B-1``: ``[B, heads * D]``.

    ``qkv`` ``[B, (heads + 2 kv_heads) * D]`` is the fused projection, not yet rotated; the
    rotated key and the value go to one layer's cache ``[rows, kv_heads, L, D]`` at
    ``positions`` ``[B]``, and each row attends over its positions ``0 .. position`` only.
    ``block`` positions per loop step and ``warps`` per program default to the measured best.
    """
    rows, dim = qkv.shape[0], k_cache.shape[-1]
    out = torch.empty((rows, heads * dim), dtype=qkv.dtype, device=qkv.device)
    _rotary_attention_kernel[(rows, heads)](
        qkv, k_cache, v_cache, positions, cos, sin, out,
        qkv.stride(0), k_cache.stride(0), k_cache.stride(1), 1.0 / dim**0.5,
        H=heads, KV=kv_heads, D=dim, BLOCK_T=block or ATTENTION_BLOCK, num_warps=warps or ATTENTION_WARPS,
    )  # fmt: skip
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a contiguous ``[B, 2 n]`` (gate first): ``[B, n]``."""
    rows, n = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((rows, n), dtype=gate_up.dtype, device=gate_up.device)
    _silu_mul_kernel[(rows, triton.cdiv(n, SILU_BLOCK))](gate_up, out, n, BLOCK=SILU_BLOCK)
    return out


def describe() -> dict[str, Any]:
    """Triton's version, for benchmark reports."""
    return {"triton": None if triton is None else triton.__version__}
