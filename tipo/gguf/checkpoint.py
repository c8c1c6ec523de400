"""An opened GGUF file whose weights are read one at a time, dequantised by the ``gguf`` package.

Every tensor's presence, shape and byte range is checked when the file is opened, so a damaged
or foreign file fails before any weight is read. ``gguf`` is optional (only GGUF users need it)
and imported here only; the file itself is memory-mapped, so one float32 tensor at a time is
held in memory, whatever the file's size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tipo.errors import ModelNotFoundError, UnsupportedModelError
from tipo.gguf.convert import expected_shapes, gguf_config, transformers_name, unpermute_rows
from tipo.gguf.reader import TensorInfo, damaged, read_gguf, stored_dtype
from tipo.gguf.tokenizer import build_tokenizer, resolve_legacy

if TYPE_CHECKING:
    import torch

    from tipo.tokenizer import TipoTokenizer

#: gguf 0.10.0 is the first release whose ``gguf.quants`` dequantises (numpy >= 1.17: fits the
#: WebUIs' numpy 1.26.2 pin; 0.19.0 measured with it).
GGUF_PIP_COMMAND = 'pip install "gguf>=0.10"'


@dataclass(frozen=True)
class GGUFCheckpoint:
    """An opened, checked GGUF file: its config.json equivalent, its tokenizer, and each weight
    on demand under its transformers name (for :func:`tipo.gguf.load.load_gguf_model`, and for
    any engine that reads weights by name, like ``LlamaWeights.build``)."""

    path: Path
    config: Mapping[str, Any]
    tokenizer: TipoTokenizer
    stored_dtype: str | None  # "float16" for an F16 file, None for a quantised one
    _entries: Mapping[str, tuple[str, TensorInfo]]  # transformers name → (GGUF name, entry)
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
        values = dequantize_tensor(self._gguf, self.path, gguf_name, entry, self._data)
        heads = {"attn_q": self.config["num_attention_heads"], "attn_k": self.config["num_key_value_heads"]}
        kind = gguf_name.split(".")[-2]
        if kind in heads:
            values = unpermute_rows(values, heads[kind])
        return torch.from_numpy(np.array(values, dtype=np.float32))


def open_gguf(path: str | Path, *, legacy: bool | None = None) -> GGUFCheckpoint:
    """Read and check a LLaMA GGUF file: metadata, tokenizer, and the tensor table (every tensor
    present with the shape the metadata implies); no weight is read yet. ``legacy``: see
    :mod:`tipo.gguf.tokenizer`."""
    import numpy as np

    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelNotFoundError(f"no GGUF file at {file}")
    metadata, tensors = read_gguf(file)
    config = gguf_config(metadata, "output.weight" in tensors, file)
    tokenizer = build_tokenizer(metadata, file, resolve_legacy(file, legacy))
    tokenizer.check_vocab(config["vocab_size"])
    gguf = _import_gguf(file)
    shapes = expected_shapes(config)
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise UnsupportedModelError(f"{file}: tensors a LLaMA model does not have: {', '.join(extra[:5])}")
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise damaged(file, f"{len(missing)} tensors are missing, e.g. {', '.join(missing[:3])}")
    for name, shape in shapes.items():
        if tensors[name].shape != shape:
            raise UnsupportedModelError(f"{file}: {name} has shape {tensors[name].shape}, the metadata implies {shape}")
    end = max(tensors[name].offset + _layout(gguf, file, name, tensors[name])[2] for name in shapes)
    if end > file.stat().st_size:
        raise damaged(file, f"the weights end at byte {end} but the file has {file.stat().st_size}")
    entries = {transformers_name(name): (name, tensors[name]) for name in shapes}
    data = np.memmap(file, dtype=np.uint8, mode="r")
    return GGUFCheckpoint(file, config, tokenizer, stored_dtype(metadata.get("general.file_type")), entries, data, gguf)


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


def _layout(gguf: Any, path: Path, name: str, tensor: TensorInfo) -> tuple[Any, int, int]:
    """The tensor's ggml type, its row count and its size in bytes."""
    try:
        kind = gguf.GGMLQuantizationType(tensor.kind)
        block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    except (ValueError, KeyError) as error:
        raise UnsupportedModelError(f"{path}: {name} has ggml type {tensor.kind}, unknown to this gguf package; "
                                    "`pip install -U gguf`") from error  # fmt: skip
    columns, rows = tensor.shape[-1], math.prod(tensor.shape[:-1])
    if columns % block:
        raise damaged(path, f"{name}: {columns} columns are no whole number of {kind.name} blocks")
    return kind, rows, rows * (columns // block) * block_bytes


def dequantize_tensor(gguf: Any, path: Path, name: str, tensor: TensorInfo, data: Any) -> Any:
    """float32 numpy array of ``tensor``, read from the memory-mapped file ``data``."""
    kind, rows, size = _layout(gguf, path, name, tensor)
    raw = data[tensor.offset : tensor.offset + size]
    if raw.size != size:
        raise damaged(path, f"the file ends inside tensor {name}")
    try:
        return gguf.quants.dequantize(raw.reshape(rows, -1), kind).reshape(tensor.shape)
    except NotImplementedError as error:
        raise UnsupportedModelError(
            f"{path}: {name} is stored as {kind.name}, which this gguf package cannot dequantise; "
            "`pip install -U gguf` or use an F16 or Q8_0 file"
        ) from error
