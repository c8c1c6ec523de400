"""Rebuild TIPO's tokenizer from a GGUF file's ``tokenizer.ggml.*`` arrays.

llama.cpp's converter stored the SentencePiece vocabulary as token, score and type arrays; we
write them back as a SentencePiece ``ModelProto`` in memory and add TIPO's added tokens, so the
result is the same :class:`tipo.tokenizer.TipoTokenizer` a model folder gives.

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
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tipo._spm_proto import _I32, _len_field, _write_varint
from tipo.errors import TokenizerMismatchError, UnsupportedModelError
from tipo.gguf.reader import damaged
from tipo.tokenizer import TipoTokenizer, load_processor

# Token types (llama.cpp ``llama_token_type``; SentencePiece's ``Type`` uses the same numbers).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def special_ids(metadata: Mapping[str, Any]) -> tuple[int, int, int, int | None]:
    """bos, eos, unk, pad; llama.cpp's SentencePiece defaults (1, 2, 0, none) when absent."""
    types = metadata.get("tokenizer.ggml.token_type") or []
    default_unk = types.index(_UNKNOWN) if _UNKNOWN in types else 0
    ids = [metadata.get(f"tokenizer.ggml.{key}_token_id") for key in ("bos", "eos", "unknown", "padding")]
    bos, eos, unk = (default if value is None else int(value) for value, default in zip(ids, (1, 2, default_unk)))
    return bos, eos, unk, None if ids[3] is None else int(ids[3])


def resolve_legacy(path: Path, legacy: bool | None) -> bool:
    """The ``legacy`` setting for the tokenizer of the GGUF file ``path``: see the module docstring."""
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
        raise damaged(path, f"{len(tokens)} tokens but {len(scores)} scores and {len(types)} token types")
    bos, eos, unk, pad = special_ids(metadata)
    base = _base_count(types)
    if not (unk < base and max(bos, eos, pad or 0) < len(tokens)):
        raise damaged(path, f"special token ids bos {bos}, eos {eos}, unk {unk}, pad {pad} outside the vocabulary")
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
    # The same object ``TipoTokenizer.from_dir`` builds from tokenizer.model + this config.
    processor = load_processor(proto, legacy, f"{path}: its vocabulary is no valid SentencePiece model")
    return TipoTokenizer.from_processor(path, processor, config)


def _base_count(types: list[int]) -> int:
    """How many tokens form the SentencePiece model: up to the last NORMAL, BYTE or UNKNOWN one.
    What follows are the converter's added tokens (TIPO's 13) and ``[PADn]`` fillers."""
    for index in range(len(types) - 1, -1, -1):
        if types[index] in (_NORMAL, _BYTE, _UNKNOWN):
            return index + 1
    return 0


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


def _message(*fields: bytes) -> bytes:
    return b"".join(fields)


def _varint_field(number: int, value: int) -> bytes:
    return _write_varint(number << 3) + _write_varint(value & (2**64 - 1))  # int32 -1: ten bytes


def _float_field(number: int, value: float) -> bytes:
    return _write_varint((number << 3) | _I32) + struct.pack("<f", value)


def _bytes_field(number: int, value: str | bytes) -> bytes:
    return _len_field(number, value.encode("utf-8") if isinstance(value, str) else value)
