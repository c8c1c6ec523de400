"""Write a LLaMA TIPO model folder as a ``.gguf`` file the way llama.cpp's converter does.

``make_tiny_gguf.py MODEL_DIR OUT.gguf [--type f16] [--old-vocab]``

Tests need GGUF files of the tiny model (tools/make_tiny_model.py) laid out exactly as the
TIPO GGUFs on the Hub were made, without llama.cpp. This follows ``convert_hf_to_gguf.py``'s
``LlamaModel`` (llama.cpp, the facts used here; the code is ours):

* metadata: ``general.architecture = llama`` and the ``llama.*`` keys from config.json
  (block_count, context_length, embedding_length, feed_forward_length, attention.head_count,
  attention.head_count_kv, rope.freq_base, attention.layer_norm_rms_epsilon, vocab_size,
  rope.dimension_count), ``general.file_type``;
* vocabulary (``_create_vocab_sentencepiece``): every piece of tokenizer.model with its score
  and type (NORMAL, UNKNOWN, CONTROL, BYTE); then added_tokens.json's tokens as USER_DEFINED
  with score -1000; then tokenizer_config.json's ``added_tokens_decoder`` entries, CONTROL when
  ``special`` (so ``<unk>``, ``<s>``, ``</s>`` become CONTROL too), score -1000; padded with
  ``[PADn]`` UNUSED tokens up to config.json's vocab_size; ``tokenizer.ggml.model = llama``,
  ``pre = default``; bos/eos/unk/pad ids and add_bos/add_eos from ``gguf.SpecialVocab``.
  ``--old-vocab`` skips the ``added_tokens_decoder`` step, as converters before mid-2024 did
  (the added tokens stay USER_DEFINED and ``<unk>`` stays UNKNOWN);
* tensors: llama.cpp names; q_proj and k_proj rows permuted for llama.cpp's rotary layout
  (``LlamaModel.permute``: ``w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2)``,
  with ``n_head_kv`` for k_proj); 1-D tensors and norms F32, the rest in the chosen type.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: --type → (gguf.LlamaFileType name, gguf.GGMLQuantizationType name) of the 2-D weights.
FILE_TYPES: dict[str, tuple[str, str]] = {
    "f32": ("ALL_F32", "F32"),
    "f16": ("MOSTLY_F16", "F16"),
    "bf16": ("MOSTLY_BF16", "BF16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
    "q4_0": ("MOSTLY_Q4_0", "Q4_0"),
    "q5_1": ("MOSTLY_Q5_1", "Q5_1"),
}

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def llama_cpp_name(name: str) -> str:
    """The llama.cpp tensor name of a transformers LLaMA parameter."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_NAMES:
        return f"blk.{int(parts[2])}.{_LAYER_NAMES[parts[3]]}"
    raise ValueError(f"no llama.cpp name for tensor {name!r}")


def permute_rows(weights: Any, n_head: int) -> Any:
    """llama.cpp's ``LlamaModel.permute`` on a numpy array: each head's two row halves are
    interleaved (rotate-half rotary layout to llama.cpp's adjacent-pair layout)."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _vocab(model_dir: Path, vocab_size: int, old_vocab: bool) -> tuple[list[bytes], list[float], list[int]]:
    import sentencepiece
    from gguf import TokenType

    processor = sentencepiece.SentencePieceProcessor()
    processor.LoadFromFile(str(model_dir / "tokenizer.model"))
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for token_id in range(processor.vocab_size()):
        tokens[token_id] = processor.IdToPiece(token_id).encode("utf-8")
        scores[token_id] = processor.GetScore(token_id)
        kind = TokenType.NORMAL
        if processor.IsUnknown(token_id):
            kind = TokenType.UNKNOWN
        elif processor.IsControl(token_id):
            kind = TokenType.CONTROL
        elif processor.IsUnused(token_id):
            kind = TokenType.UNUSED
        elif processor.IsByte(token_id):
            kind = TokenType.BYTE
        types[token_id] = int(kind)
    added_file = model_dir / "added_tokens.json"
    if added_file.is_file():
        for content, token_id in json.loads(added_file.read_text(encoding="utf-8")).items():
            if token_id < vocab_size:
                tokens[token_id], scores[token_id], types[token_id] = content.encode(), -1000.0, int(TokenType.USER_DEFINED)
    config_file = model_dir / "tokenizer_config.json"
    if not old_vocab and config_file.is_file():
        decoder = json.loads(config_file.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        for key, entry in decoder.items():
            token_id, content = int(key), entry["content"]
            if entry.get("special"):
                types[token_id] = int(TokenType.CONTROL)
            else:
                content = content.replace("\u2581", " ")
                types[token_id] = int(TokenType.USER_DEFINED)
            tokens[token_id], scores[token_id] = content.encode("utf-8"), -1000.0
    return tokens, scores, types


def make_gguf(model_dir: str | Path, out_path: str | Path, file_type: str = "f16", *, old_vocab: bool = False) -> Path:
    """Convert ``model_dir`` (config.json, model.safetensors, tokenizer files) to ``out_path``."""
    import gguf
    from safetensors.torch import load_file

    folder, out = Path(model_dir), Path(out_path)
    if file_type not in FILE_TYPES:
        raise ValueError(f"--type {file_type!r}: use one of {', '.join(FILE_TYPES)}")
    ftype_name, qtype_name = FILE_TYPES[file_type]
    qtype = gguf.GGMLQuantizationType[qtype_name]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(folder.name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(int(gguf.LlamaFileType[ftype_name]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(config["hidden_size"] // n_head)

    tokens, scores, types = _vocab(folder, config["vocab_size"], old_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)

    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        data = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            data = permute_rows(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = permute_rows(data, n_head_kv)
        new_name = llama_cpp_name(name)
        data_qtype = gguf.GGMLQuantizationType.F32 if data.ndim <= 1 or new_name.endswith("_norm.weight") else qtype
        writer.add_tensor(new_name, gguf.quants.quantize(data, data_qtype), raw_dtype=data_qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="folder with config.json, model.safetensors, tokenizer.model")
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    parser.add_argument("--type", default="f16", choices=sorted(FILE_TYPES), help="type of the 2-D weights")
    parser.add_argument("--old-vocab", action="store_true", help="leave added tokens USER_DEFINED (older converters)")
    args = parser.parse_args(argv)
    print(make_gguf(args.model_dir, args.out, args.type, old_vocab=args.old_vocab))
    return 0


if __name__ == "__main__":
    sys.exit(main())
