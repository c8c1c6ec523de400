"""Turn off SentencePiece's dummy prefix in a serialized ``ModelProto``, without protobuf.

transformers' slow ``LlamaTokenizer`` with ``legacy: false`` loads ``tokenizer.model``
through ``sentencepiece_model_pb2``, sets ``normalizer_spec.add_dummy_prefix = False`` and
serializes it again. That module needs protobuf >= 5.26 with sentencepiece 0.2, and both
WebUIs pin protobuf 3.20.0 (``shared/reference/webui-facts.md``), so we make the same change
on the wire format directly. Only the fields we touch are decoded; every other byte is kept.

Facts from ``sentencepiece_model.proto``: ``ModelProto`` field 3 is ``normalizer_spec``
(a length-delimited message); ``NormalizerSpec`` field 3 is ``add_dummy_prefix`` (a bool,
varint). A later occurrence of a scalar field wins and repeated occurrences of a message
field are merged, so writing ``add_dummy_prefix = false`` last in every ``normalizer_spec``
occurrence gives what protobuf's ``MergeFrom`` + ``SerializeToString`` gives.
"""

from __future__ import annotations

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_NORMALIZER_SPEC = 3  # ModelProto.normalizer_spec
_ADD_DUMMY_PREFIX = 3  # NormalizerSpec.add_dummy_prefix
_FALSE_DUMMY_PREFIX = bytes([(_ADD_DUMMY_PREFIX << 3) | _VARINT, 0])


class WireFormatError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise WireFormatError(f"truncated varint at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise WireFormatError(f"varint longer than 10 bytes at byte {pos}")


def _write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _fields(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """Split a message into ``(field, wire_type, start, value_start, end)`` records.

    ``data[start:end]`` is the whole record (tag included); for a length-delimited field
    ``data[value_start:end]`` is its payload.
    """
    records = []
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _read_varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise WireFormatError(f"field number 0 at byte {start}")
        value_start = pos
        if wire_type == _VARINT:
            _, pos = _read_varint(data, pos)
        elif wire_type == _I64:
            pos += 8
        elif wire_type == _I32:
            pos += 4
        elif wire_type == _LEN:
            length, value_start = _read_varint(data, pos)
            pos = value_start + length
        else:  # groups (3, 4) are not used by sentencepiece_model.proto
            raise WireFormatError(f"unsupported wire type {wire_type} at byte {start}")
        if pos > len(data):
            raise WireFormatError(f"field {field} runs past the end ({pos} > {len(data)} bytes)")
        records.append((field, wire_type, start, value_start, pos))
    return records


def _without_dummy_prefix(spec: bytes) -> bytes:
    kept = b"".join(
        spec[start:end]
        for field, wire_type, start, _, end in _fields(spec)
        if not (field == _ADD_DUMMY_PREFIX and wire_type == _VARINT)
    )
    return kept + _FALSE_DUMMY_PREFIX


def _len_field(field: int, payload: bytes) -> bytes:
    return _write_varint((field << 3) | _LEN) + _write_varint(len(payload)) + payload


def disable_add_dummy_prefix(model_proto: bytes) -> bytes:
    """Return ``model_proto`` with ``normalizer_spec.add_dummy_prefix`` set to false.

    Raises :class:`WireFormatError` when the bytes are not a protobuf message.
    """
    out = bytearray()
    patched = False
    for field, wire_type, start, value_start, end in _fields(model_proto):
        if field == _NORMALIZER_SPEC and wire_type == _LEN:
            spec = _without_dummy_prefix(model_proto[value_start:end])
            out += _len_field(_NORMALIZER_SPEC, spec)
            patched = True
        else:
            out += model_proto[start:end]
    if not patched:
        out += _len_field(_NORMALIZER_SPEC, _FALSE_DUMMY_PREFIX)
    return bytes(out)
