"""Where a model runs and in which dtype: the caller's choice, else what the hardware does best.

Never a literal ``"cuda"`` and no float16 on CPU (style sheet, section 7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tipo.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


def choose_device(device: torch.device | str | None = None) -> torch.device:
    """The given device, else the best one torch reports available (CUDA, MPS, CPU)."""
    import torch

    if device is not None:
        chosen = torch.device(device)
        if chosen.type == "cuda" and chosen.index is None and torch.cuda.is_available():
            # "cuda" and "cuda:0" are one card: one ModelCache key, one copy of the weights.
            chosen = torch.device("cuda", torch.cuda.current_device())
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_dtype(
    device: torch.device, dtype: torch.dtype | str | None = None, weights_dtype: str | None = None
) -> torch.dtype:
    """float32 on CPU, float16 on MPS, on CUDA the weights' half type where the card has it.

    ``weights_dtype`` is config.json's ``torch_dtype``. float16 on CPU is refused: it is slow
    and loses precision for nothing (style sheet, section 7).
    """
    import torch

    if dtype is not None:
        if isinstance(dtype, str):
            key = _DTYPE_NAMES.get(dtype.strip().lower().removeprefix("torch."))
            if key is None:
                raise InvalidArgument(f"dtype={dtype!r} (use float32, float16 or bfloat16)")
            dtype = getattr(torch, key)
        if device.type == "cpu" and dtype == torch.float16:
            raise InvalidArgument("dtype=float16 on CPU (use float32 or bfloat16)")
        return dtype
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if weights_dtype == "float16" or not bf16_ok:
            return torch.float16
        return torch.bfloat16
    if device.type == "mps":
        return torch.float16
    return torch.float32
