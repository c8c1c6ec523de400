"""A TIPO checkpoint's weights in the layout a decoder wants, and the decoder's state.

Why not transformers' model: its KV-cache classes and attention interfaces differ between 4.30
(A1111), 4.46 (Forge) and 5.x, and its forward launches dozens of small kernels per layer. Here
the weights sit fused (q/k/v in one matrix, gate/up in another: one matrix product each), read
from a transformers model, ``model.safetensors`` or a GGUF checkpoint; :class:`KVCache` is the
static cache and :class:`Packed` the prompts of a prefill, packed end to end. The forward over
them is :mod:`tipo.engine.forward`.

Plain LLaMA only (TIPO v1, format sheet "Models"): rope scaling, biases or ``pretraining_tp``
other than 1 raise :class:`tipo.errors.UnsupportedModelError`, and the caller falls back to
transformers' own model. Grouped-query attention (fewer key/value heads) is supported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from tipo.errors import ModelNotFoundError, UnsupportedModelError

__all__ = ["KVCache", "LayerWeights", "LlamaShape", "LlamaWeights", "Packed", "pack_rows", "product_layout"]


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
        """The same weights on ``device`` (a tied ``lm_head`` stays tied), laid out for it."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)

        def product(t: torch.Tensor) -> torch.Tensor:
            return product_layout(t.to(device))

        embed = move(self.embed)
        return LlamaWeights(
            shape=self.shape,
            embed=embed,
            layers=tuple(
                LayerWeights(**{k: product(v) if v.dim() == 2 else move(v) for k, v in vars(layer).items()})
                for layer in self.layers
            ),
            norm=move(self.norm),
            lm_head=embed if self.lm_head is self.embed else product(self.lm_head),
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

        def product(names: Sequence[str], rows: Sequence[int], columns: int) -> torch.Tensor:
            return product_layout(take(names, rows, columns))

        hidden, inter = s.hidden_size, s.intermediate_size
        layers = []
        for index in range(s.num_layers):
            p = f"model.layers.{index}."
            layers.append(LayerWeights(
                attn_norm=take([p + "input_layernorm.weight"], [hidden], None),
                qkv=product([p + f"self_attn.{n}_proj.weight" for n in "qkv"], [q_rows, kv_rows, kv_rows], hidden),
                o=product([p + "self_attn.o_proj.weight"], [hidden], q_rows),
                mlp_norm=take([p + "post_attention_layernorm.weight"], [hidden], None),
                gate_up=product([p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], [inter, inter], hidden),
                down=product([p + "mlp.down_proj.weight"], [hidden], inter),
            ))  # fmt: skip
        embed = take(["model.embed_tokens.weight"], [s.vocab_size], hidden)
        lm_head = embed if s.tie_word_embeddings else product(["lm_head.weight"], [s.vocab_size], hidden)
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


def product_layout(weight: torch.Tensor) -> torch.Tensor:
    """A product's ``[out, in]`` weight in the memory order its device multiplies fastest.

    On the CPU: column-major (an ``[out, in]`` view of ``[in, out]`` memory), so ``F.linear``
    runs BLAS's plain ``x @ W`` instead of ``x @ W^T``, where MKL repacks the weights on every
    call: a decode step of 8 rows took 88 ms instead of 111 (TIPO-200M, fp32, 2 cores), one row
    the same, and rows from two on are bit-equal whatever the batch (benchmarks/README.md).
    Elsewhere row-major (contiguous), as cuBLAS and the Triton kernels expect.
    """
    if weight.device.type == "cpu":
        return weight if weight.t().is_contiguous() else weight.t().contiguous().t()
    return weight.contiguous()


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
