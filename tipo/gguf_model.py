"""Load a TIPO ``.gguf`` file (llama.cpp's format) as transformers' ``LlamaForCausalLM``.

Why: the reference extension downloads ``*.gguf`` files and runs them with llama.cpp; users who
have them should not need another download, a compiler, or transformers' own GGUF loader
(4.41+, while A1111 pins 4.30.2). We parse the file ourselves (header, metadata, tensor table);
the pure-Python ``gguf`` package (optional: imported only when weights are read) dequantises
every type it knows (F16, BF16, Q8_0, Q4_0…Q6_K, …). Works on transformers 4.30 to 5.x.

What llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel``) changed, undone here:
    * tensor names (``token_embd``, ``blk.N.attn_q`` …) → transformers' names;
    * q_proj/k_proj rows: llama.cpp rotates adjacent pairs, transformers rotates halves, so the
      converter interleaved each head's two row halves (``LlamaModel.permute``:
      ``w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2)``, with the KV head count
      for k_proj); :func:`unpermute_rows` is its inverse;
    * config.json → ``llama.*`` metadata, read back by :func:`gguf_config`;
    * the tokenizer → ``tokenizer.ggml.*`` arrays, rebuilt as a SentencePiece model in memory
      (:func:`sentencepiece_proto`, :func:`build_tokenizer`).

Which ``legacy`` the GGUF tokenizer uses, and why: ``legacy`` decides whether text right after an
added token (``<|long|>``) gets SentencePiece's dummy prefix. The reference ran these files
through llama.cpp, which adds it to every piece between added tokens (legacy behaviour; fixture
README), and transformers' slow tokenizer does the same when ``tokenizer_config.json`` has no
``legacy`` key. So: an explicit ``legacy`` argument wins; else a ``tokenizer_config.json`` next
to the file (a full model folder) decides exactly as the safetensors path of that folder would;
else ``legacy=True``, the ids the reference fed these very files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tipo.errors import ModelNotFoundError, TipoError, TokenizerMismatchError, UnsupportedModelError
from tipo.models import LoadedModel, choose_device, choose_dtype

if TYPE_CHECKING:
    import torch

    from tipo.tokenizer import TipoTokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "GGUF_PIP_COMMAND", "GGUFCheckpoint", "build_tokenizer", "gguf_config", "inspect_gguf", "load_gguf_model",
    "open_gguf", "unpermute_rows",
]  # fmt: skip

#: gguf 0.10.0 is the first release whose ``gguf.quants`` dequantises (numpy >= 1.17: fits the
#: WebUIs' numpy 1.26.2 pin; 0.19.0 measured with it).
GGUF_PIP_COMMAND = 'pip install "gguf>=0.10"'

# GGUF value types (gguf spec, ``GGUFValueType``) → struct format of one item; 8 is a string.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# llama.cpp ``llama_ftype`` → the torch dtype the weights were stored in (None: quantised).
_FILE_DTYPES = {0: "float32", 1: "float16", 32: "bfloat16"}
# Token types (llama.cpp ``llama_token_type``; SentencePiece's ``Type`` uses the same numbers).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

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


@dataclass(frozen=True)
class _TensorInfo:
    """One tensor's entry in the file's tensor table."""

    shape: tuple[int, ...]  # torch order (GGUF lists dimensions fastest first)
    kind: int  # ggml type: 0 F32, 1 F16, 8 Q8_0, … (``gguf.GGMLQuantizationType``)
    offset: int  # from the start of the file


def _damaged(path: Path, why: object) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{path} cannot be read as a GGUF model ({why}); it looks damaged or incompletely downloaded: "
        "download it again"
    )


def inspect_gguf(path: str | Path) -> dict[str, Any]:
    """Architecture and stored weight dtype, from the first metadata entries only.

    Cheap and without the gguf package, so that model resolution and every cache lookup can
    call it; refuses non-GGUF files and architectures other than ``llama``.
    """
    file = Path(path)
    wanted = ("general.architecture", "general.file_type")
    try:
        with open(file, "rb") as handle:
            metadata, _ = _read_metadata(handle, file, stop_when_found=wanted)
    except TipoError:
        raise
    except (OSError, struct.error, UnicodeDecodeError, ValueError, OverflowError, MemoryError) as error:
        raise _damaged(file, error) from error
    _check_architecture(file, metadata.get(wanted[0]))
    file_type = metadata.get(wanted[1])
    return {"architecture": metadata[wanted[0]], "file_type": file_type, "torch_dtype": _stored_dtype(file_type)}


def _read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, _TensorInfo]]:
    """All metadata and the tensor table (GGUF v2/v3 layout, gguf spec: header, key/values,
    tensor infos, then data aligned to ``general.alignment``). Our own parser: gguf's
    ``GGUFReader`` spends seconds turning the 32013-token vocabulary into numpy views."""
    try:
        with open(path, "rb") as handle:
            metadata, tensor_count = _read_metadata(handle, path)
            table = []
            for _ in range(tensor_count):
                name = _read_string(handle)
                (n_dims,) = struct.unpack("<I", _read(handle, 4))
                dims = struct.unpack(f"<{n_dims}Q", _read(handle, 8 * n_dims))
                kind, offset = struct.unpack("<IQ", _read(handle, 12))
                table.append((name, tuple(reversed(dims)), kind, offset))
            alignment = int(metadata.get("general.alignment") or 32)
            start = -(-handle.tell() // alignment) * alignment
    except TipoError:
        raise
    except (OSError, struct.error, UnicodeDecodeError, ValueError, OverflowError, MemoryError) as error:
        raise _damaged(path, error) from error
    return metadata, {name: _TensorInfo(shape, kind, start + offset) for name, shape, kind, offset in table}


def _read_metadata(
    handle: Any, path: Path, stop_when_found: tuple[str, ...] = ()
) -> tuple[dict[str, Any], int]:
    if handle.read(4) != b"GGUF":
        raise ModelNotFoundError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    version, tensor_count, kv_count = struct.unpack("<IQQ", _read(handle, 20))
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        kind = "big-endian GGUF" if swapped in (2, 3) else f"GGUF version {version}"
        raise UnsupportedModelError(f"{path}: {kind} is not supported (little-endian versions 2 and 3 are)")
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = _read_string(handle)
        (value_type,) = struct.unpack("<I", _read(handle, 4))
        metadata[key] = _read_value(handle, value_type, keep_arrays=not stop_when_found)
        if stop_when_found and all(k in metadata for k in stop_when_found):
            break
    return metadata, tensor_count


def _stored_dtype(file_type: object) -> str | None:
    return _FILE_DTYPES.get(file_type) if isinstance(file_type, int) else None


def _read(handle: Any, size: int) -> bytes:
    if size > 1 << 20 and size > os.fstat(handle.fileno()).st_size - handle.tell():
        raise ValueError(f"a header field claims {size} bytes, more than the file has left")
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("the file ends inside its header")
    return bytes(data)


def _read_string(handle: Any) -> str:
    (length,) = struct.unpack("<Q", _read(handle, 8))
    return _read(handle, length).decode("utf-8")


def _read_value(handle: Any, value_type: int, keep_arrays: bool = True) -> Any:
    """One metadata value; arrays are skipped (None) unless ``keep_arrays``."""
    if value_type == _STRING:
        return _read_string(handle)
    if value_type in _SCALARS:
        fmt = "<" + _SCALARS[value_type]
        return struct.unpack(fmt, _read(handle, struct.calcsize(fmt)))[0]
    if value_type != _ARRAY:
        raise ValueError(f"unknown metadata value type {value_type}")
    item_type, count = struct.unpack("<IQ", _read(handle, 12))
    if item_type in _SCALARS:
        fmt = f"<{count}{_SCALARS[item_type]}"
        if not keep_arrays:
            handle.seek(struct.calcsize(fmt), 1)
            return None
        return list(struct.unpack(fmt, _read(handle, struct.calcsize(fmt))))
    items = [_read_value(handle, item_type, keep_arrays) for _ in range(count)]
    return items if keep_arrays else None


def _check_architecture(path: Path, architecture: object) -> None:
    if architecture != "llama":
        raise UnsupportedModelError(
            f"{path}: general.architecture is {architecture!r}; only LLaMA GGUF files ('llama', the TIPO v1 "
            "models) can be loaded. The TIPO v2 models are a mixture-of-experts architecture (docs/MODELS.md)"
        )


def _import_gguf(path: Path) -> Any:
    try:
        import gguf
        from gguf.quants import dequantize  # noqa: F401  (0.10+; older releases lack it)
    except ImportError as error:
        raise UnsupportedModelError(
            f"{path} is a GGUF file; reading it needs the gguf package, which is not installed (or too old): "
            f"run `{GGUF_PIP_COMMAND}` with the WebUI's Python, or use the model's safetensors folder instead"
        ) from error
    return gguf


def gguf_config(metadata: Mapping[str, Any], has_output: bool, path: Path) -> dict[str, Any]:
    """config.json (as the safetensors folder would have it) from ``llama.*`` metadata."""
    _check_architecture(path, metadata.get("general.architecture"))

    def need(key: str) -> Any:
        value = metadata.get(f"llama.{key}")
        if value is None:
            raise _damaged(path, f"metadata llama.{key} is missing")
        return value

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    if heads <= 0 or hidden % heads:
        raise _damaged(path, f"llama.embedding_length {hidden} is no multiple of llama.attention.head_count {heads}")
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
    bos, eos, _, pad = _special_ids(metadata)
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


def _special_ids(metadata: Mapping[str, Any]) -> tuple[int, int, int, int | None]:
    """bos, eos, unk, pad; llama.cpp's SentencePiece defaults (1, 2, 0, none) when absent."""
    types = metadata.get("tokenizer.ggml.token_type") or []
    default_unk = types.index(_UNKNOWN) if _UNKNOWN in types else 0
    ids = [metadata.get(f"tokenizer.ggml.{key}_token_id") for key in ("bos", "eos", "unknown", "padding")]
    bos, eos, unk = (default if value is None else int(value) for value, default in zip(ids, (1, 2, default_unk)))
    return bos, eos, unk, None if ids[3] is None else int(ids[3])


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


@dataclass(frozen=True)
class GGUFCheckpoint:
    """An opened, checked GGUF file: its config.json equivalent, its tokenizer, and each weight
    on demand under its transformers name (for :func:`load_gguf_model`, and for any engine that
    reads weights by name, like ``LlamaWeights.build``)."""

    path: Path
    config: Mapping[str, Any]
    tokenizer: TipoTokenizer
    stored_dtype: str | None  # "float16" for an F16 file, None for a quantised one
    _entries: Mapping[str, tuple[str, _TensorInfo]]  # transformers name → (GGUF name, entry)
    _data: Any  # numpy memmap of the whole file
    _gguf: Any  # the gguf module

    def names(self) -> list[str]:
        return list(self._entries)

    def tensor(self, name: str) -> torch.Tensor:
        """The weight ``name`` (transformers naming) as a float32 CPU tensor: dequantised and,
        for q_proj/k_proj, back in transformers' rotary layout. One tensor at a time is held in
        float32, so loading peaks at the model in its dtype plus one matrix."""
        import numpy as np
        import torch

        if name not in self._entries:
            raise UnsupportedModelError(f"{self.path}: no tensor {name!r} in a LLaMA GGUF file")
        gguf_name, entry = self._entries[name]
        values = _dequantize(self._gguf, self.path, gguf_name, entry, self._data)
        heads = {"attn_q": self.config["num_attention_heads"], "attn_k": self.config["num_key_value_heads"]}
        kind = gguf_name.split(".")[-2]
        if kind in heads:
            values = unpermute_rows(values, heads[kind])
        return torch.from_numpy(np.array(values, dtype=np.float32))


def open_gguf(path: str | Path, *, legacy: bool | None = None) -> GGUFCheckpoint:
    """Read and check a LLaMA GGUF file: metadata, tokenizer, and the tensor table (every tensor
    present with the shape the metadata implies); no weight is read yet. ``legacy``: see the
    module docstring."""
    import numpy as np

    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelNotFoundError(f"no GGUF file at {file}")
    metadata, tensors = _read_gguf(file)
    config = gguf_config(metadata, "output.weight" in tensors, file)
    tokenizer = build_tokenizer(metadata, file, _resolve_legacy(file, legacy))
    tokenizer.check_vocab(config["vocab_size"])
    gguf = _import_gguf(file)
    shapes = expected_shapes(config)
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise UnsupportedModelError(f"{file}: tensors a LLaMA model does not have: {', '.join(extra[:5])}")
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise _damaged(file, f"{len(missing)} tensors are missing, e.g. {', '.join(missing[:3])}")
    for name, shape in shapes.items():
        if tensors[name].shape != shape:
            raise UnsupportedModelError(f"{file}: {name} has shape {tensors[name].shape}, the metadata implies {shape}")
    end = max(tensors[name].offset + _layout(gguf, file, name, tensors[name])[2] for name in shapes)
    if end > file.stat().st_size:
        raise _damaged(file, f"the weights end at byte {end} but the file has {file.stat().st_size}")
    entries = {transformers_name(name): (name, tensors[name]) for name in shapes}
    data = np.memmap(file, dtype=np.uint8, mode="r")
    return GGUFCheckpoint(file, config, tokenizer, _stored_dtype(metadata.get("general.file_type")), entries, data, gguf)


def _layout(gguf: Any, path: Path, name: str, tensor: _TensorInfo) -> tuple[Any, int, int]:
    """The tensor's ggml type, its row count and its size in bytes."""
    try:
        kind = gguf.GGMLQuantizationType(tensor.kind)
        block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    except (ValueError, KeyError) as error:
        raise UnsupportedModelError(f"{path}: {name} has ggml type {tensor.kind}, unknown to this gguf package; "
                                    "`pip install -U gguf`") from error  # fmt: skip
    columns, rows = tensor.shape[-1], math.prod(tensor.shape[:-1])
    if columns % block:
        raise _damaged(path, f"{name}: {columns} columns are no whole number of {kind.name} blocks")
    return kind, rows, rows * (columns // block) * block_bytes


def _dequantize(gguf: Any, path: Path, name: str, tensor: _TensorInfo, data: Any) -> Any:
    """float32 numpy array of ``tensor``, read from the memory-mapped file ``data``."""
    kind, rows, size = _layout(gguf, path, name, tensor)
    raw = data[tensor.offset : tensor.offset + size]
    if raw.size != size:
        raise _damaged(path, f"the file ends inside tensor {name}")
    try:
        return gguf.quants.dequantize(raw.reshape(rows, -1), kind).reshape(tensor.shape)
    except NotImplementedError as error:
        raise UnsupportedModelError(
            f"{path}: {name} is stored as {kind.name}, which this gguf package cannot dequantise; "
            "`pip install -U gguf` or use an F16 or Q8_0 file"
        ) from error


def _resolve_legacy(path: Path, legacy: bool | None) -> bool:
    if legacy is not None:
        return legacy
    sibling = path.parent / "tokenizer_config.json"
    if sibling.is_file():
        try:
            value = json.loads(sibling.read_text(encoding="utf-8")).get("legacy")
        except (OSError, ValueError, AttributeError) as error:
            raise TokenizerMismatchError(f"cannot read {sibling}: {error}") from error
        return True if value is None else bool(value)
    return True


def _base_count(types: list[int]) -> int:
    """How many tokens form the SentencePiece model: up to the last NORMAL, BYTE or UNKNOWN one.
    What follows are the converter's added tokens (TIPO's 13) and ``[PADn]`` fillers."""
    for index in range(len(types) - 1, -1, -1):
        if types[index] in (_NORMAL, _BYTE, _UNKNOWN):
            return index + 1
    return 0


def _message(*fields: bytes) -> bytes:
    return b"".join(fields)


def _varint_field(number: int, value: int) -> bytes:
    from tipo._spm_proto import _write_varint

    return _write_varint(number << 3) + _write_varint(value & (2**64 - 1))  # int32 -1: ten bytes


def _float_field(number: int, value: float) -> bytes:
    from tipo._spm_proto import _I32, _write_varint

    return _write_varint((number << 3) | _I32) + struct.pack("<f", value)


def _bytes_field(number: int, value: str | bytes) -> bytes:
    from tipo._spm_proto import _len_field

    return _len_field(number, value.encode("utf-8") if isinstance(value, str) else value)


def sentencepiece_proto(
    tokens: list[str], scores: list[float], types: list[int], *, unk: int, bos: int, eos: int,
    add_dummy_prefix: bool = True,
) -> bytes:  # fmt: skip
    """A serialized SentencePiece ``ModelProto`` with LLaMA's settings for these pieces.

    Field numbers from ``sentencepiece_model.proto``: ModelProto pieces 1, trainer_spec 2,
    normalizer_spec 3; SentencePiece piece 1, score 2, type 3; TrainerSpec model_type 3 (BPE 2),
    vocab_size 4, character_coverage 10, max_sentencepiece_length 20, split_by_unicode_script 21,
    split_by_whitespace 22, split_by_number 23, split_digits 25, allow_whitespace_only_pieces 26,
    byte_fallback 35, unk/bos/eos/pad_id 40-43, unk_surface 44, unk/bos/eos/pad_piece 45-48;
    NormalizerSpec name 1, precompiled_charsmap 2, add_dummy_prefix 3, remove_extra_whitespaces
    4, escape_whitespaces 5. The values are those of LLaMA-2's tokenizer.model, so a GGUF made
    from it gives that file back byte for byte. llama.cpp's converter stores CONTROL pieces with
    score -1000 and may mark ``<unk>`` CONTROL; SentencePiece's trainer writes 0 and UNKNOWN
    (scores of those pieces never take part in BPE merges), so that is restored.
    """
    pieces = []
    for index, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        kind = _UNKNOWN if index == unk else kind
        score = 0.0 if kind in (_UNKNOWN, _CONTROL) else score
        entry = _message(_bytes_field(1, piece), _float_field(2, score), _varint_field(3, kind))
        pieces.append(_bytes_field(1, entry))
    trainer = _message(
        _varint_field(3, 2), _varint_field(4, len(tokens)), _float_field(10, 0.99995), _varint_field(20, 16),
        _varint_field(21, 1), _varint_field(22, 1), _varint_field(23, 1), _varint_field(25, 1),
        _varint_field(26, 1), _varint_field(35, int(_BYTE in types)), _varint_field(40, unk),
        _varint_field(41, bos), _varint_field(42, eos), _varint_field(43, -1), _bytes_field(44, " \u2047 "),
        _bytes_field(45, tokens[unk]), _bytes_field(46, "<s>"), _bytes_field(47, "</s>"), _bytes_field(48, "<pad>"),
    )  # fmt: skip
    normalizer = _message(
        _bytes_field(1, "identity"), _bytes_field(2, b""), _varint_field(3, int(add_dummy_prefix)),
        _varint_field(4, 0), _varint_field(5, 1),
    )  # fmt: skip
    return b"".join(pieces) + _bytes_field(2, trainer) + _bytes_field(3, normalizer)


def build_tokenizer(metadata: Mapping[str, Any], path: Path, legacy: bool) -> TipoTokenizer:
    """TIPO's tokenizer from ``tokenizer.ggml.*``: the SentencePiece part as a ModelProto in
    memory; every CONTROL or USER_DEFINED token after it becomes a special added token, as TIPO's
    ``special_tokens_map.json`` lists its 13 tokens (llama.cpp would print USER_DEFINED ones)."""
    if metadata.get("tokenizer.ggml.model") != "llama":
        raise UnsupportedModelError(
            f"{path}: tokenizer.ggml.model is {metadata.get('tokenizer.ggml.model')!r}; TIPO uses LLaMA's "
            "SentencePiece vocabulary ('llama')"
        )
    tokens = list(metadata.get("tokenizer.ggml.tokens") or [])
    scores = [float(s) for s in metadata.get("tokenizer.ggml.scores") or []]
    types = [int(t) for t in metadata.get("tokenizer.ggml.token_type") or []]
    if not tokens or not len(tokens) == len(scores) == len(types):
        raise _damaged(path, f"{len(tokens)} tokens but {len(scores)} scores and {len(types)} token types")
    bos, eos, unk, pad = _special_ids(metadata)
    base = _base_count(types)
    if not (unk < base and max(bos, eos, pad or 0) < len(tokens)):
        raise _damaged(path, f"special token ids bos {bos}, eos {eos}, unk {unk}, pad {pad} outside the vocabulary")
    add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    proto = sentencepiece_proto(
        tokens[:base], scores[:base], types[:base], unk=unk, bos=bos, eos=eos, add_dummy_prefix=add_prefix
    )
    added = [i for i in range(base, len(tokens)) if types[i] in (_CONTROL, _USER_DEFINED)]
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config: dict[str, Any] = {
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", True)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": add_prefix,
        "added_tokens_decoder": {str(i): {"content": tokens[i], **flags} for i in sorted({unk, bos, eos, *added})},
        "additional_special_tokens": [tokens[i] for i in added],
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "unk_token": tokens[unk],
        "clean_up_tokenization_spaces": False,
        "legacy": legacy,
    }
    if pad is not None:
        config["pad_token"] = tokens[pad]
    return _tipo_tokenizer(path, proto, config)


def _tipo_tokenizer(path: Path, proto: bytes, config: dict[str, Any]) -> TipoTokenizer:
    """The same object ``TipoTokenizer.from_dir`` builds from tokenizer.model + this config."""
    import sentencepiece

    from tipo._spm_proto import disable_add_dummy_prefix
    from tipo.tokenizer import TipoTokenizer, _resolve_vocab

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto if config["legacy"] else disable_add_dummy_prefix(proto))
    except RuntimeError as error:
        raise TokenizerMismatchError(f"{path}: its vocabulary is no valid SentencePiece model: {error}") from error
    vocab, kwargs = _resolve_vocab(path, config, processor)
    tokenizer = TipoTokenizer(path, processor, vocab, kwargs)
    tokenizer._check_tipo_tokens()
    return tokenizer


def load_gguf_model(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    name: str | None = None,
    legacy: bool | None = None,
) -> LoadedModel:
    """Load a LLaMA ``.gguf`` file like :func:`tipo.models.load_model` loads a folder.

    Quantised weights are dequantised once, at load, into ``dtype`` (float32 on CPU, the file's
    half type or the card's on CUDA): memory and speed are those of the safetensors model.
    """
    checkpoint = open_gguf(path, legacy=legacy)
    config = checkpoint.config
    if config["num_key_value_heads"] != config["num_attention_heads"] and not supports_grouped_query_attention():
        import transformers

        raise UnsupportedModelError(
            f"{checkpoint.path} uses grouped-query attention ({config['num_key_value_heads']} KV heads for "
            f"{config['num_attention_heads']}), which transformers {transformers.__version__} cannot run (4.31+ can)"
        )
    target_device = choose_device(device)
    target_dtype = choose_dtype(target_device, dtype, checkpoint.stored_dtype)
    state = {name: checkpoint.tensor(name).to(target_dtype) for name in checkpoint.names()}
    model = _llama_from_state(dict(config), state, target_dtype)
    del state
    model.to(target_device)
    model.eval()
    model.requires_grad_(False)
    file = checkpoint.path
    loaded = LoadedModel(model, checkpoint.tokenizer, target_device, target_dtype, name or file.name, file)
    logger.info("loaded %s on %s (%s)", loaded.name, target_device, str(target_dtype).removeprefix("torch."))
    return loaded


def _llama_from_state(config: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype) -> Any:
    import transformers
    from packaging.version import Version
    from transformers import LlamaConfig, LlamaForCausalLM

    # 4.56 renamed torch_dtype to dtype. No path: the weights come from ``state_dict`` and
    # nothing is initialised at random (tested on 4.30.2, 4.46.1 and 5.x). The concrete class:
    # no auto-class lookup, so no remote code can ever run.
    dtype_key = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"
    return LlamaForCausalLM.from_pretrained(
        None, config=LlamaConfig.from_dict(config), state_dict=state, **{dtype_key: dtype}
    )


def supports_grouped_query_attention() -> bool:
    """transformers' LLaMA knows ``num_key_value_heads`` (4.31+; A1111's 4.30.2 does not)."""
    from transformers import LlamaConfig

    return hasattr(LlamaConfig(), "num_key_value_heads")
