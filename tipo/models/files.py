"""What a model on disk must hold before anything loads it.

A folder needs a LLaMA config.json (no remote code, format sheet "Models"), safetensors
weights whose headers match their bytes, and tokenizer.model; a ``.gguf`` file is checked by
:mod:`tipo.gguf.reader` instead. Checked up front so that a damaged or foreign model fails with
one message naming the file, before any weight is read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tipo.errors import ModelNotFoundError, UnsupportedModelError

_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.safetensors$")
#: safetensors refuses headers above 100 MB; TIPO's are a few kB.
_MAX_HEADER_BYTES = 100_000_000
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


def is_gguf_file(path: Path) -> bool:
    """A llama.cpp model file (loaded by :mod:`tipo.gguf`) rather than a model folder."""
    return path.suffix.lower() == ".gguf" and path.is_file()


def validate_model_dir(path: Path) -> dict[str, Any]:
    """Check that ``path`` holds a loadable TIPO model and return its config.json."""
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a folder; a TIPO model is a folder with config.json")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{path} holds no config.json, so it is no model folder")
    config = read_config(config_file)
    if not (path / "model.safetensors").is_file() and not (path / "model.safetensors.index.json").is_file():
        found = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.gguf"))
        raise ModelNotFoundError(
            f"{path} has no model.safetensors; only safetensors or GGUF weights are loaded "
            f"(pickle .bin files can run code; pass a .gguf file itself as the model)"
            + (f". Found instead: {', '.join(found)}" if found else "")
        )
    if not (path / "tokenizer.model").is_file():
        raise ModelNotFoundError(f"{path} has no tokenizer.model")
    _weight_files(path)
    return config


def read_config(config_file: Path) -> dict[str, Any]:
    """config.json, which must describe a ``LlamaForCausalLM`` (no remote code, format sheet "Models")."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"{config_file} cannot be read as JSON: {error}") from error
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "llama":
        raise UnsupportedModelError(
            f"{config_file.parent}: model_type is {model_type!r}; only LLaMA TIPO models (model_type 'llama', "
            f"LlamaForCausalLM) are supported"
        )
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    if not isinstance(architectures, list) or "LlamaForCausalLM" not in architectures:
        raise UnsupportedModelError(
            f"{config_file.parent}: architectures {architectures!r} do not include LlamaForCausalLM"
        )
    return config


def _weight_files(path: Path) -> list[Path]:
    """model.safetensors, or the shards its index names: plain file names in ``path`` only (a
    hostile index must not point the loaders at ``../../somewhere``)."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return [path / "model.safetensors"]
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelNotFoundError(f"{index} is damaged (no readable weight_map): {error!r}") from error
    for name in names:
        if not isinstance(name, str) or not _SHARD_NAME.match(name):
            raise ModelNotFoundError(f"{index} names the shard {name!r}; shards must be *.safetensors files beside it")
        if not (path / name).is_file():
            raise ModelNotFoundError(f"{path} lacks the shard {name} that its index names (incomplete download?)")
    return [path / name for name in names]


def check_weights(folder: Path) -> None:
    """Read only the safetensors headers and check that they describe exactly the files' bytes.

    A copy or download cut short, or a damaged file, is reported when the model is resolved,
    with one message and before any engine reads a weight (safetensors' own error is a bare
    ``Exception`` with a terse text). Not part of :func:`validate_model_dir`, which loaders call
    before they check the tokenizer, the cheaper mismatch to report first.
    """
    for file in _weight_files(folder):
        try:
            with file.open("rb") as handle:
                size = file.stat().st_size
                head = handle.read(8)
                length = int.from_bytes(head, "little") if len(head) == 8 else -1
                header = handle.read(length) if 2 <= length <= min(size - 8, _MAX_HEADER_BYTES) else None
        except OSError as error:
            raise ModelNotFoundError(f"cannot read {file}: {error}") from error
        problem = f"{size} bytes, header length {length}" if header is None else _header_problem(header, size - 8 - length)
        if problem:
            raise ModelNotFoundError(f"{file} is damaged or incomplete ({problem}); delete it and download the model again")


def _header_problem(raw: bytes, data_bytes: int) -> str:
    """What is wrong with a safetensors header whose tensors must fill ``data_bytes`` exactly,
    back to back, each as large as its dtype and shape say; empty when nothing is."""
    try:
        header = json.loads(raw.decode("utf-8"))
        spans = sorted(
            (entry["data_offsets"][0], entry["data_offsets"][1], name, entry["dtype"], entry["shape"])
            for name, entry in header.items() if name != "__metadata__"
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        return f"unreadable header: {error!r}"
    position = 0
    for begin, end, name, dtype, shape in spans:
        if not (isinstance(begin, int) and isinstance(end, int)):
            return f"tensor {name!r} has data_offsets {[begin, end]!r}"
        count = 1
        for dim in shape if isinstance(shape, list) else [-1]:
            count = count * dim if isinstance(dim, int) and dim >= 0 else -1
        size = count * _DTYPE_BYTES.get(dtype, 0) if count >= 0 and dtype in _DTYPE_BYTES else end - begin
        if begin != position or end - begin != size:
            return f"tensor {name!r} at bytes {begin}..{end} does not follow byte {position} or fit {dtype} {shape}"
        position = end
    return "" if position == data_bytes else f"its header describes {position} bytes of tensors, the file holds {data_bytes}"
