"""Triton kernels for the CUDA decode step: five kernels a layer where torch launches about thirty.

Why: one decode step of a 200M-500M model reads its weights in about 0.1-0.3 ms on an H100 but
launches some thirty kernels per layer when written with torch operations, each costing a few
microseconds even replayed from a CUDA graph, so a step is bound by launches, not by memory.
Per layer these kernels leave five: :func:`linear` for the q/k/v product (with the RMSNorm
before it), :func:`rotary_attention` (rotary embedding of q and k, the cache write and the
attention, in one kernel that reads only the cache positions a row has written), :func:`linear`
for the output product (adding into the residual stream), for the gate/up product (with the
RMSNorm) and for the down product (with SiLU×up before it and the residual add after). The
prefill, many tokens at once, keeps cuBLAS and uses :func:`rms_norm`, :func:`add_rms_norm_`
and :func:`silu_mul` around it.

Optional: Triton ships with torch's Linux CUDA wheels but not on Windows or macOS, and needs a C
compiler at its first launch. :func:`available` says whether it imports; the engine checks the
kernels against the torch path on its first step and uses torch alone if anything fails
(:class:`tipo.engine.fast.FastEngine`). The arithmetic rounds where the torch path rounds (rotary
products, SiLU, the normalised row) and accumulates in float32; only the attention's reduction
order differs. Only the features of Triton 2.1 (torch 2.1, A1111) are used.
"""

from __future__ import annotations

import os
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Windows, macOS, CPU-only wheels
    triton = None
    tl = None

__all__ = ["add_rms_norm_", "available", "linear", "rms_norm", "rotary_attention", "silu_mul"]

#: Cache positions one step of the attention loop reads per row and head, and warps per program
#: (one program per row and head). Measured on an H100, TIPO-200M shapes (profile_step.py
#: --tune): 128/8 was fastest of 32-128 x 1-8 at batch 1, 8 and 32 and 128 or 512 positions
#: (3.5 µs vs 4.4 for 64/4 at 128 positions, batch 1; 8.4 vs 12.7 at 512).
ATTENTION_BLOCK = 128
ATTENTION_WARPS = 8
#: Elements of the intermediate vector one program of :func:`silu_mul` handles.
SILU_BLOCK = 1024
#: Rows one program of :func:`linear` computes: ``tl.dot``'s smallest tile; a batch of up to 16
#: rows costs one pass over the weights.
LINEAR_ROWS = 16
#: Products this wide (the logits) run on tensor cores even for one row (measured faster).
ROW_LINEAR_MAX_OUTPUTS = 16384


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
    def _linear_kernel(  # type: ignore[no-untyped-def]
        x_ptr, w_ptr, out_ptr, norm_ptr, rows, n, k, x_stride, w_stride_n, w_stride_k, eps,
        PROLOGUE: tl.constexpr, RESIDUAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """``out[m, :] (+)= norm(x[m]) @ w.T`` for a block of rows and outputs, on tensor cores."""
        m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = m < rows
        n_ok = cols < n
        dtype = x_ptr.dtype.element_ty
        x_rows = x_ptr + m[:, None] * x_stride
        if PROLOGUE == 1:  # RMSNorm of the row: its sum of squares first
            squares = tl.zeros([BLOCK_M], dtype=tl.float32)
            for start in range(0, k, BLOCK_K):
                kk = start + tl.arange(0, BLOCK_K)
                part = tl.load(x_rows + kk[None, :], mask=m_ok[:, None] & (kk < k)[None, :], other=0.0).to(tl.float32)
                squares += tl.sum(part * part, axis=1)
            root = tl.sqrt(squares / k + eps)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, k, BLOCK_K):
            kk = start + tl.arange(0, BLOCK_K)
            k_ok = kk < k
            mask = m_ok[:, None] & k_ok[None, :]
            a = tl.load(x_rows + kk[None, :], mask=mask, other=0.0)
            if PROLOGUE == 1:
                scale = tl.load(norm_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
                a = (scale[None, :] * (a.to(tl.float32) / root[:, None]).to(dtype).to(tl.float32)).to(dtype)
            weight = tl.load(w_ptr + cols[None, :] * w_stride_n + kk[:, None] * w_stride_k,
                             mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # fmt: skip
            acc += tl.dot(a, weight)
        y = acc.to(dtype)  # the product rounded as cuBLAS returns it
        target = out_ptr + m[:, None] * n + cols[None, :]
        mask = m_ok[:, None] & n_ok[None, :]
        if RESIDUAL:  # the residual stream, updated in place as torch's add rounds it
            y = (tl.load(target, mask=mask, other=0.0).to(tl.float32) + y.to(tl.float32)).to(dtype)
        tl.store(target, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _row_linear_kernel(  # type: ignore[no-untyped-def]
        x_ptr, w_ptr, out_ptr, norm_ptr, n, k, x_stride, w_stride_n, w_stride_k, eps,
        PROLOGUE: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """``out[row, :] (+)= prologue(x[row]) @ w.T`` for one row and a block of outputs, on CUDA
        cores: each thread keeps its partial sums to the end, so the weights stream at full rate.
        The RMSNorm scale divides the finished sums (one pass over ``x``)."""
        row = tl.program_id(1)
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = cols < n
        dtype = x_ptr.dtype.element_ty
        x_row = x_ptr + row * x_stride
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        squares = tl.zeros([BLOCK_K], dtype=tl.float32)
        for start in range(0, k, BLOCK_K):
            kk = start + tl.arange(0, BLOCK_K)
            k_ok = kk < k
            if PROLOGUE == 2:  # silu(gate) * up, x being [rows, 2k] (gate first), rounded as torch rounds
                gate = tl.load(x_row + kk, mask=k_ok, other=0.0).to(tl.float32)
                up = tl.load(x_row + k + kk, mask=k_ok, other=0.0).to(tl.float32)
                a = ((gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32) * up).to(dtype).to(tl.float32)
            else:
                a = tl.load(x_row + kk, mask=k_ok, other=0.0).to(tl.float32)
                if PROLOGUE == 1:
                    squares += a * a
                    a = a * tl.load(norm_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
            weight = tl.load(w_ptr + cols[:, None] * w_stride_n + kk[None, :] * w_stride_k,
                             mask=n_ok[:, None] & k_ok[None, :], other=0.0)  # fmt: skip
            acc += weight.to(tl.float32) * a[None, :]
        y = tl.sum(acc, axis=1)
        if PROLOGUE == 1:
            y = y / tl.sqrt(tl.sum(squares, axis=0) / k + eps)
        y = y.to(dtype)
        target = out_ptr + row * n + cols
        if RESIDUAL:
            y = (tl.load(target, mask=n_ok, other=0.0).to(tl.float32) + y.to(tl.float32)).to(dtype)
        tl.store(target, y.to(out_ptr.dtype.element_ty), mask=n_ok)

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


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    norm: torch.Tensor | None = None,
    eps: float = 0.0,
    silu: bool = False,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    blocks: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight)`` for the few rows of a decode step, with its neighbours fused in.

    ``norm``: ``x`` goes through RMSNorm (``norm`` its weight) first; ``silu``: ``x`` is
    ``[B, 2 k]`` and goes through :func:`silu_mul` first; ``residual``: the product is added
    into that ``[B, n]`` in place (and returned), rounded as :func:`add_rms_norm_` adds.
    ``out_dtype`` (float32 for logits) stores the rounded product wider. Half-precision weights
    only (``tl.dot`` of float32 would round to tf32), in any memory order (CUDA weights are
    row-major, and Triton specialises the unit stride; the CPU's, in tests, column-major).

    Why by hand: at a few rows a product only streams its weights, yet each cuBLAS call took
    3-5 µs against 0.4-2.4 µs of weight reads for TIPO's shapes on an H100, and the norms, SiLU
    and residual adds around it were three more launches a layer. One row (a single request)
    runs on CUDA cores, a program per block of outputs (``_row_linear_kernel``: 5.1 µs a
    product on average inside a 200M step, benchmarks/README.md); more rows, and the vocabulary-wide logits product, run on
    tensor cores in blocks of :data:`LINEAR_ROWS` rows, so a row's sums do not depend on how many
    rows share its step. ``blocks`` = (outputs, reduction, warps) per program, default tuned.
    """
    rows, (n, k) = x.shape[0], weight.shape
    if silu and x.shape[1] != 2 * k:
        raise ValueError(f"silu needs [B, {2 * k}] rows, got {tuple(x.shape)}")
    out = residual if residual is not None else torch.empty((rows, n), dtype=out_dtype or x.dtype, device=x.device)
    if rows == 1 and n < ROW_LINEAR_MAX_OUTPUTS:
        block_n, block_k, warps = blocks or row_linear_blocks(n, k)
        _row_linear_kernel[(triton.cdiv(n, block_n), 1)](
            x, weight, out, weight if norm is None else norm, n, k, x.stride(0), weight.stride(0), weight.stride(1), eps,
            PROLOGUE=1 if norm is not None else 2 if silu else 0, RESIDUAL=residual is not None,
            BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
        )  # fmt: skip
        return out
    if silu:  # on tensor cores the SiLU in the loop cost 3-4x the product (profile_step.py --tune)
        x = silu_mul(x)
    block_n, block_k, warps = blocks or linear_blocks(n, k)
    _linear_kernel[(triton.cdiv(n, block_n), triton.cdiv(rows, LINEAR_ROWS))](
        x, weight, out, weight if norm is None else norm, rows, n, k, x.stride(0), weight.stride(0), weight.stride(1), eps,
        PROLOGUE=0 if norm is None else 1, RESIDUAL=residual is not None,
        BLOCK_M=LINEAR_ROWS, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )  # fmt: skip
    return out


def linear_blocks(n: int, k: int) -> tuple[int, int, int]:
    """(outputs, reduction, warps) per program of the tensor-core :func:`linear` for an
    ``[n, k]`` weight: the fastest measured for TIPO-200M/500M shapes (H100, profile_step.py --tune)."""
    if _interpreted():
        return _interpreter_blocks(n, k)
    if k > n:
        return 16, 256, 2  # the down product
    if n >= 8 * k:
        return 64, 64, 4  # the logits
    return (64, 256, 4) if n >= 4 * k else (32, 256, 4) if n > k else (32, 128, 4)


def row_linear_blocks(n: int, k: int) -> tuple[int, int, int]:
    """(outputs, reduction, warps) per program of the one-row :func:`linear` (as :func:`linear_blocks`)."""
    if _interpreted():
        return _interpreter_blocks(n, k)
    return (4, 256, 8) if k > n else (8, 256, 4)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _interpreter_blocks(n: int, k: int) -> tuple[int, int, int]:
    """Tests: Triton's CPU interpreter runs programs one by one in Python, so few, large ones."""
    return min(triton.next_power_of_2(n), 4096), min(triton.next_power_of_2(k), 1024), 4


def describe() -> dict[str, Any]:
    """Triton's version, for benchmark reports."""
    return {"triton": None if triton is None else triton.__version__}
