"""Read a GGUF file's header: metadata and the tensor table, without the ``gguf`` package.

Layout from the gguf spec (v2/v3, little-endian): magic, version, counts, key/values, tensor
infos, then data aligned to ``general.alignment``. Our own parser because gguf's
``GGUFReader`` spends seconds turning the 32013-token vocabulary into numpy views, and because
every model lookup calls :func:`inspect_gguf`, which must stay cheap. Sizes claimed by the
header are checked against the file before they are read, so a damaged file fails with one
message instead of a huge allocation.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tipo.errors import ModelNotFoundError, TipoError, UnsupportedModelError

# GGUF value types (gguf spec, ``GGUFValueType``) → struct format of one item; 8 is a string.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# llama.cpp ``llama_ftype`` → the torch dtype the weights were stored in (None: quantised).
_FILE_DTYPES = {0: "float32", 1: "float16", 32: "bfloat16"}
# What a damaged header raises while it is parsed.
_READ_ERRORS = (OSError, struct.error, UnicodeDecodeError, ValueError, OverflowError, MemoryError)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the file's tensor table."""

    shape: tuple[int, ...]  # torch order (GGUF lists dimensions fastest first)
    kind: int  # ggml type: 0 F32, 1 F16, 8 Q8_0, … (``gguf.GGMLQuantizationType``)
    offset: int  # from the start of the file


def damaged(path: Path, why: object) -> ModelNotFoundError:
    """The error for a file that is GGUF but cannot be what it claims: download it again."""
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
    except _READ_ERRORS as error:
        raise damaged(file, error) from error
    check_architecture(file, metadata.get(wanted[0]))
    file_type = metadata.get(wanted[1])
    return {"architecture": metadata[wanted[0]], "file_type": file_type, "torch_dtype": stored_dtype(file_type)}


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    """All metadata and the tensor table, each tensor's offset made absolute."""
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
    except _READ_ERRORS as error:
        raise damaged(path, error) from error
    return metadata, {name: TensorInfo(shape, kind, start + offset) for name, shape, kind, offset in table}


def stored_dtype(file_type: object) -> str | None:
    """The torch dtype name of ``general.file_type``; None for a quantised file."""
    return _FILE_DTYPES.get(file_type) if isinstance(file_type, int) else None


def check_architecture(path: Path, architecture: object) -> None:
    """Refuse anything but plain LLaMA: the TIPO v2 models are mixture-of-experts."""
    if architecture != "llama":
        raise UnsupportedModelError(
            f"{path}: general.architecture is {architecture!r}; only LLaMA GGUF files ('llama', the TIPO v1 "
            "models) can be loaded. The TIPO v2 models are a mixture-of-experts architecture (docs/MODELS.md)"
        )


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
