"""A compact LLaMA forward of our own over a TIPO checkpoint's weights (for :mod:`tipo.engine.fast`).

Why not transformers' model: its KV-cache classes and attention interfaces differ between 4.30
(A1111), 4.46 (Forge) and 5.x, and its forward launches dozens of small kernels per layer. Here
the weights sit in the layout a decoder wants (q/k/v fused into one matrix, gate/up into another:
one matrix product each) and two plain functions run them: :func:`prefill` for prompts of
different lengths packed end to end, :func:`decode_step` for one token per row against a static
:class:`KVCache`. The arithmetic follows transformers' ``LlamaForCausalLM``: RMSNorm in float32,
rotary embedding by ``rotate_half`` from a float32 table, softmax in float32, SwiGLU MLP;
``tests/test_engine_fast.py`` compares the logits with transformers' own in every CI env.

Plain LLaMA only (TIPO v1, format sheet "Models"): rope scaling, biases or ``pretraining_tp``
other than 1 raise :class:`tipo.errors.UnsupportedModelError`, and the caller falls back to
transformers' own model. Grouped-query attention (fewer key/value heads) is supported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from tipo.errors import ModelNotFoundError, UnsupportedModelError

__all__ = ["LlamaShape", "LlamaWeights", "KVCache", "Packed", "pack_rows", "prefill", "decode_step"]


@dataclass(frozen=True)
class LlamaShape:
    """The numbers of config.json that the forward needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_positions: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LlamaShape:
        """From config.json's dict (or a transformers config's ``to_dict()``)."""
        unsupported = []
        # transformers 5.x writes plain rotary as rope_parameters {"rope_type": "default", ...}.
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            unsupported.append(f"rope scaling {rope!r}")
        for flag in ("attention_bias", "mlp_bias"):
            if config.get(flag):
                unsupported.append(f"{flag}=true")
        if config.get("pretraining_tp", 1) != 1:
            unsupported.append(f"pretraining_tp={config['pretraining_tp']!r}")
        if config.get("hidden_act", "silu") != "silu":
            unsupported.append(f"hidden_act={config['hidden_act']!r}")
        if unsupported:
            raise UnsupportedModelError(
                "the fast engine runs plain LLaMA only; this config has " + ", ".join(unsupported)
            )
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise UnsupportedModelError(f"num_attention_heads={heads} is no multiple of num_key_value_heads={kv_heads}")
        hidden = int(config["hidden_size"])
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(config.get("head_dim") or hidden // heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            max_positions=int(config.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer. ``qkv`` is ``[(H + 2K) * D, hidden]``, ``gate_up`` ``[2 * I, hidden]``."""

    attn_norm: torch.Tensor
    qkv: torch.Tensor
    o: torch.Tensor
    mlp_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


@dataclass(frozen=True)
class LlamaWeights:
    """All weights on one device in one dtype, plus the rotary table ``cos``/``sin`` ``[P, D]``."""

    shape: LlamaShape
    embed: torch.Tensor
    layers: tuple[LayerWeights, ...]
    norm: torch.Tensor
    lm_head: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def to(self, device: torch.device | str) -> LlamaWeights:
        """The same weights on ``device`` (a tied ``lm_head`` stays tied)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)

        embed = move(self.embed)
        return LlamaWeights(
            shape=self.shape,
            embed=embed,
            layers=tuple(LayerWeights(**{k: move(v) for k, v in vars(layer).items()}) for layer in self.layers),
            norm=move(self.norm),
            lm_head=embed if self.lm_head is self.embed else move(self.lm_head),
            cos=move(self.cos),
            sin=move(self.sin),
        )

    def decode_bytes(self) -> int:
        """Bytes of weights one decode step reads: all but the embedding table (one row per token)."""
        tensors = [self.norm, self.lm_head] + [t for layer in self.layers for t in vars(layer).values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    @classmethod
    def build(
        cls, shape: LlamaShape, get: Callable[[str], torch.Tensor], device: torch.device, dtype: torch.dtype
    ) -> LlamaWeights:
        """Read each tensor by its transformers name through ``get`` and copy it, fused, to ``device``."""
        s = shape
        q_rows, kv_rows = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim

        def take(names: Sequence[str], rows: Sequence[int], columns: int | None) -> torch.Tensor:
            parts = [get(name) for name in names]
            for name, part, expected in zip(names, parts, rows):
                wanted = (expected,) if columns is None else (expected, columns)
                if tuple(part.shape) != wanted:
                    # The weights disagree with their own config: damaged, not another architecture.
                    raise ModelNotFoundError(
                        f"{name} has shape {tuple(part.shape)} but config.json implies {wanted}: the model files "
                        "are damaged or mixed; delete the folder and download the model again"
                    )
            out = torch.empty((sum(rows),) + parts[0].shape[1:], device=device, dtype=dtype)
            offset = 0
            for part in parts:
                out[offset : offset + part.shape[0]].copy_(part)
                offset += part.shape[0]
            return out

        hidden, inter = s.hidden_size, s.intermediate_size
        layers = []
        for index in range(s.num_layers):
            p = f"model.layers.{index}."
            layers.append(LayerWeights(
                attn_norm=take([p + "input_layernorm.weight"], [hidden], None),
                qkv=take([p + f"self_attn.{n}_proj.weight" for n in "qkv"], [q_rows, kv_rows, kv_rows], hidden),
                o=take([p + "self_attn.o_proj.weight"], [hidden], q_rows),
                mlp_norm=take([p + "post_attention_layernorm.weight"], [hidden], None),
                gate_up=take([p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], [inter, inter], hidden),
                down=take([p + "mlp.down_proj.weight"], [hidden], inter),
            ))  # fmt: skip
        embed = take(["model.embed_tokens.weight"], [s.vocab_size], hidden)
        lm_head = embed if s.tie_word_embeddings else take(["lm_head.weight"], [s.vocab_size], hidden)
        cos, sin = _rotary_table(s, device, dtype)
        norm = take(["model.norm.weight"], [hidden], None)
        return cls(s, embed, tuple(layers), norm, lm_head, cos, sin)

    @classmethod
    def from_model(cls, model: Any) -> LlamaWeights:
        """From a loaded transformers ``LlamaForCausalLM``, on its device and dtype (a fused copy:
        drop the transformers model afterwards if memory matters)."""
        state = model.state_dict()
        first = next(model.parameters())

        def get(name: str) -> torch.Tensor:
            if name not in state:
                raise UnsupportedModelError(f"the model has no tensor {name!r}; is it a LlamaForCausalLM?")
            return state[name]

        return cls.build(LlamaShape.from_config(model.config.to_dict()), get, first.device, first.dtype)

    @classmethod
    def from_safetensors(
        cls, folder: Path, config: Mapping[str, Any], device: torch.device, dtype: torch.dtype
    ) -> LlamaWeights:
        """Straight from ``model.safetensors`` (or its sharded index), without transformers."""
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        else:
            weight_map = None
        handles: dict[str, Any] = {}

        def get(name: str) -> torch.Tensor:
            file = "model.safetensors" if weight_map is None else weight_map.get(name)
            if file is None:
                raise ModelNotFoundError(f"{folder}: no tensor {name!r} in model.safetensors.index.json")
            try:
                if file not in handles:
                    handles[file] = safe_open(str(folder / file), framework="pt", device="cpu")
                return handles[file].get_tensor(name)
            except Exception as error:  # safetensors raises its own plain error class
                raise ModelNotFoundError(f"{folder / file}: cannot read tensor {name!r}: {error}") from error

        return cls.build(LlamaShape.from_config(config), get, device, dtype)


def _rotary_table(shape: LlamaShape, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[P, D]`` computed in float32 and cast, as transformers' LlamaRotaryEmbedding."""
    half = torch.arange(0, shape.head_dim, 2, dtype=torch.int64).float() / shape.head_dim
    inv_freq = 1.0 / (shape.rope_theta**half)
    angles = torch.outer(torch.arange(shape.max_positions, dtype=torch.float32), inv_freq)
    table = torch.cat((angles, angles), dim=-1)  # [P, D]
    return table.cos().to(device, dtype), table.sin().to(device, dtype)


@dataclass(frozen=True)
class KVCache:
    """Static keys and values, ``[layers, rows, kv_heads, length, head_dim]`` each.

    Row ``b`` holds its prompt at positions ``0 .. len-1`` and each new token at the next
    position, so no row carries padding. Zero-filled: positions a row never wrote are read
    (with weight 0) by the masked attention, and must not be NaN.
    """

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def allocate(cls, shape: LlamaShape, rows: int, length: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        size = (shape.num_layers, rows, shape.num_kv_heads, length, shape.head_dim)
        return cls(torch.zeros(size, device=device, dtype=dtype), torch.zeros(size, device=device, dtype=dtype))

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def length(self) -> int:
        return self.k.shape[3]

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


@dataclass(frozen=True)
class Packed:
    """Prompts of cache rows ``first .. first + len(lengths) - 1``, packed end to end.

    ``tokens``, ``rows`` (cache row), ``local`` (row within the group) and ``positions`` are
    ``[T]``; ``last`` ``[G]`` indexes each row's last token; ``width`` is the longest prompt.
    """

    tokens: torch.Tensor
    rows: torch.Tensor
    local: torch.Tensor
    positions: torch.Tensor
    last: torch.Tensor
    first: int
    width: int


def pack_rows(prompts: Sequence[Sequence[int]], first: int, device: torch.device) -> Packed:
    lengths = [len(p) for p in prompts]
    local = [row for row, n in enumerate(lengths) for _ in range(n)]
    positions = [i for n in lengths for i in range(n)]
    ends = torch.tensor(lengths).cumsum(0) - 1

    def tensor(values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return Packed(
        tokens=tensor([t for p in prompts for t in p]),
        rows=tensor([first + row for row in local]),
        local=tensor(local),
        positions=tensor(positions),
        last=ends.to(device),
        first=first,
        width=max(lengths),
    )


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
            out = _causal_attention(queries.transpose(1, 2), keys, values)
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


def _causal_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(D), causal) v`` over ``[G, H, W, D]``, softmax in float32."""
    width = queries.shape[2]
    scores = torch.matmul(queries, keys.transpose(-1, -2)) * (1.0 / math.sqrt(queries.shape[-1]))  # [G, H, W, W]
    future = torch.ones(width, width, dtype=torch.bool, device=queries.device).triu(1)
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1, dtype=torch.float32)
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
) -> torch.Tensor:
    """One token per cache row ``0 .. B-1``: ``tokens`` and ``positions`` ``[B]`` (where each
    row writes). Attention reads cache positions ``< length`` only, masked to ``<= position``.
    Fixed shapes for a given (B, length): this is what a CUDA graph captures. Logits ``[B, V]``.

    ``fused`` (default: on CUDA) trades bit-for-bit agreement with transformers for fewer
    kernels per layer (a step is launch-bound on a GPU): one rotary pass over queries and keys,
    PyTorch's attention kernel, residual adds inside the matrix products, fused RMSNorm where
    torch has it. Off, the arithmetic is transformers' own, which keeps CPU rows batch-invariant.
    ``kernels`` runs each layer with the Triton kernels of :mod:`tipo.engine.kernels` instead
    (eight kernels a layer; attention reads positions ``<= position`` only, ``length`` unused).
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
    scale = 1.0 / math.sqrt(D)
    for index, layer in enumerate(w.layers):
        q, k, v = F.linear(_rms_norm(x, layer.attn_norm, s.rms_norm_eps), layer.qkv).split([H * D, K * D, K * D], -1)
        cache.k[index][rows, :, positions] = _rotate(k.view(B, K, D), cos, sin)
        cache.v[index][rows, :, positions] = v.view(B, K, D)
        # The H // K query heads sharing a key/value head act as its query rows: [B, K, G, D].
        q = _rotate(q.view(B, H, D), cos, sin).view(B, K, H // K, D)
        scores = torch.matmul(q, cache.k[index][:B, :, :length].transpose(-1, -2)) * scale  # [B, K, G, S]
        probs = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1, dtype=torch.float32)
        out = torch.matmul(probs.to(q.dtype), cache.v[index][:B, :, :length])  # [B, K, G, D]
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
    scores = torch.matmul(q, cache.k[index][:B, :, :length].transpose(-1, -2)) * (1.0 / math.sqrt(D))  # [B, K, G, S]
    probs = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1, dtype=torch.float32)
    out = torch.matmul(probs.to(q.dtype), cache.v[index][:B, :, :length])  # [B, K, G, D]
    x = torch.addmm(x, out.reshape(B, H * D), layer.o.t())
    gate, up = F.linear(_fused_norm(x, layer.mlp_norm, s.rms_norm_eps), layer.gate_up).chunk(2, dim=-1)
    return torch.addmm(x, F.silu(gate) * up, layer.down.t())


def _kernel_step(w: LlamaWeights, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """:func:`decode_step` over the Triton kernels (see :mod:`tipo.engine.kernels`)."""
    from tipo.engine import kernels

    s = w.shape
    x = w.embed[tokens]  # [B, hidden], a new tensor: the residual stream, updated in place
    h = kernels.rms_norm(x, w.layers[0].attn_norm, s.rms_norm_eps)
    norms = [layer.attn_norm for layer in w.layers[1:]] + [w.norm]  # each layer's last add feeds the next norm
    for index, (layer, next_norm) in enumerate(zip(w.layers, norms)):
        qkv = F.linear(h, layer.qkv)
        out = kernels.rotary_attention(qkv, cache.k[index], cache.v[index], positions, w.cos, w.sin,
                                       s.num_heads, s.num_kv_heads)  # fmt: skip
        h = kernels.add_rms_norm_(x, F.linear(out, layer.o), layer.mlp_norm, s.rms_norm_eps)
        h = kernels.add_rms_norm_(x, F.linear(kernels.silu_mul(F.linear(h, layer.gate_up)), layer.down),
                                  next_norm, s.rms_norm_eps)  # fmt: skip
    return F.linear(h, w.lm_head).float()


def kernels_support(shape: LlamaShape) -> bool:
    """Whether :func:`decode_step`'s ``kernels`` path handles this shape (a power-of-two head size)."""
    return shape.head_dim > 1 and shape.head_dim & (shape.head_dim - 1) == 0
