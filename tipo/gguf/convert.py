"""Undo what llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel``) did to a LLaMA.

* config.json → ``llama.*`` metadata, read back by :func:`gguf_config`;
* tensor names (``token_embd``, ``blk.N.attn_q`` …) → transformers' names
  (:func:`transformers_name`);
* q_proj/k_proj rows: llama.cpp rotates adjacent pairs, transformers rotates halves, so the
  converter interleaved each head's two row halves (``LlamaModel.permute``:
  ``w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2)``, with the KV head count
  for k_proj); :func:`unpermute_rows` is its inverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tipo.errors import UnsupportedModelError
from tipo.gguf.reader import check_architecture, damaged
from tipo.gguf.tokenizer import special_ids

_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def gguf_config(metadata: Mapping[str, Any], has_output: bool, path: Path) -> dict[str, Any]:
    """config.json (as the safetensors folder would have it) from ``llama.*`` metadata."""
    check_architecture(path, metadata.get("general.architecture"))

    def need(key: str) -> Any:
        value = metadata.get(f"llama.{key}")
        if value is None:
            raise damaged(path, f"metadata llama.{key} is missing")
        return value

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    if heads <= 0 or hidden % heads:
        raise damaged(path, f"llama.embedding_length {hidden} is no multiple of llama.attention.head_count {heads}")
    head_dim = hidden // heads
    unsupported = []
    if metadata.get("llama.expert_count"):
        unsupported.append(f"{metadata['llama.expert_count']} experts (a Mixtral-style model)")
    if metadata.get("llama.rope.scaling.type", "none") not in ("none", None):
        unsupported.append(f"rope scaling {metadata['llama.rope.scaling.type']!r}")
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if metadata.get(f"llama.{key}", head_dim) != head_dim:
            unsupported.append(f"llama.{key} = {metadata[f'llama.{key}']} (head size is {head_dim})")
    if unsupported:
        raise UnsupportedModelError(f"{path}: not a plain LLaMA model: {'; '.join(unsupported)}")
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    bos, eos, _, pad = special_ids(metadata)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(metadata.get("llama.attention.head_count_kv") or heads),
        "max_position_embeddings": int(need("context_length")),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(metadata.get("llama.rope.freq_base") or 10000.0),
        "vocab_size": len(tokens),
        "tie_word_embeddings": not has_output,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "hidden_act": "silu",
    }
    return config


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every GGUF tensor a LLaMA model needs, with its shape in torch order."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if not config["tie_word_embeddings"]:
        shapes["output.weight"] = (vocab, hidden)
    per_layer = {
        "attn_norm": (hidden,), "attn_q": (hidden, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden),
        "attn_output": (hidden, hidden), "ffn_norm": (hidden,), "ffn_gate": (inter, hidden),
        "ffn_up": (inter, hidden), "ffn_down": (hidden, inter),
    }  # fmt: skip
    for layer in range(config["num_hidden_layers"]):
        shapes.update({f"blk.{layer}.{name}.weight": shape for name, shape in per_layer.items()})
    return shapes


def transformers_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.q_proj.weight``."""
    stem = gguf_name.removesuffix(".weight")
    if stem in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[stem] + ".weight"
    _, layer, kind = stem.split(".", 2)
    return f"model.layers.{int(layer)}.{_LAYER_TENSORS[kind]}.weight"


def unpermute_rows(weights: Any, n_head: int) -> Any:
    """Inverse of llama.cpp's ``LlamaModel.permute``: each head's interleaved row pairs back to
    halves (works on numpy arrays and torch tensors)."""
    rows = weights.shape[0]
    return weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)
