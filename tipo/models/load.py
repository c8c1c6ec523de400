"""Load a resolved model folder or ``.gguf`` file as transformers' ``LlamaForCausalLM``.

The concrete class is named, never an auto class, so no remote code can ever run; only
safetensors weights are read (pickle files can run code). The tokenizer is checked before the
weights, the cheaper mismatch to report first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tipo.errors import ModelNotFoundError
from tipo.gguf.reader import inspect_gguf
from tipo.models.device import choose_device, choose_dtype
from tipo.models.files import is_gguf_file, validate_model_dir

if TYPE_CHECKING:
    import torch

    from tipo.tokenizer import TipoTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for :class:`tipo.engine.hf.HFEngine`: on ``device`` in ``dtype``, eval mode."""

    model: Any
    tokenizer: TipoTokenizer
    device: torch.device
    dtype: torch.dtype
    name: str
    path: Path


def load_plan(
    path: str | Path, device: torch.device | str | None, dtype: torch.dtype | str | None
) -> tuple[Path, dict[str, Any], torch.device, torch.dtype]:
    """Validated folder, its config.json, and the concrete device and dtype to load it with.
    For a ``.gguf`` file: the file and what its header says (architecture, stored dtype)."""
    folder = Path(path)
    config = inspect_gguf(folder) if is_gguf_file(folder) else validate_model_dir(folder)
    target_device = choose_device(device)
    weights_dtype = config.get("torch_dtype") or config.get("dtype")
    target_dtype = choose_dtype(target_device, dtype, weights_dtype if isinstance(weights_dtype, str) else None)
    return folder, config, target_device, target_dtype


def load_model(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    name: str | None = None,
) -> LoadedModel:
    """Load a resolved model folder (or ``.gguf`` file). The tokenizer is checked against
    config.json before the weights are read, so a mismatched folder fails fast."""
    if is_gguf_file(Path(path)):
        from tipo.gguf.load import load_gguf_model  # imports this module

        return load_gguf_model(path, device, dtype, name=name)
    folder, config, target_device, target_dtype = load_plan(path, device, dtype)

    from transformers import LlamaForCausalLM

    from tipo.tokenizer import TipoTokenizer

    tokenizer = TipoTokenizer.from_dir(folder)
    tokenizer.check_vocab(int(config.get("vocab_size", 0)))
    dtype_kwargs = dtype_argument(target_dtype)
    try:
        # The concrete class: no auto-class lookup, so no remote code can ever run.
        model = LlamaForCausalLM.from_pretrained(
            str(folder), use_safetensors=True, local_files_only=True, **dtype_kwargs
        )
    except (OSError, ValueError, RuntimeError, _safetensors_error()) as error:
        # transformers reports a tensor whose shape disagrees with config.json as RuntimeError;
        # running out of memory is no damage and keeps its own type.
        if isinstance(error, _torch_oom()):
            raise
        raise ModelNotFoundError(
            f"cannot load the weights in {folder} (damaged, incomplete or not matching config.json?): {error}"
        ) from error
    return ready_model(model, tokenizer, target_device, target_dtype, name or _display_name(folder), folder)


def dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype keyword: transformers 4.56 renamed ``torch_dtype`` to
    ``dtype``; 4.30 (A1111) knows only ``torch_dtype``."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"
    return {key: dtype}


def ready_model(
    model: Any, tokenizer: TipoTokenizer, device: torch.device, dtype: torch.dtype, name: str, path: Path
) -> LoadedModel:
    """Move a freshly built model to ``device`` for inference only, and log the one load line."""
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    loaded = LoadedModel(model, tokenizer, device, dtype, name, path)
    logger.info("loaded %s on %s (%s)", loaded.name, device, str(dtype).removeprefix("torch."))
    return loaded


def _display_name(path: Path) -> str:
    """``owner/name`` for a Hub cache snapshot (``models--owner--name/snapshots/<sha>``), else
    the folder's name."""
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    return path.name


def _torch_oom() -> tuple[type[BaseException], ...]:
    """torch's out-of-memory error classes (CUDA's exists from torch 1.13)."""
    import torch

    found = getattr(torch.cuda, "OutOfMemoryError", None)
    return (found,) if isinstance(found, type) else ()


def _safetensors_error() -> type[BaseException]:
    """safetensors' own error class (a plain Exception, raised for a damaged file)."""
    import safetensors

    found = getattr(safetensors, "SafetensorError", None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else OSError
