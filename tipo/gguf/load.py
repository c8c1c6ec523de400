"""Build transformers' ``LlamaForCausalLM`` from an opened GGUF checkpoint.

The state dict goes to ``from_pretrained`` directly, so nothing is initialised at random and no
file path reaches transformers' own loaders (its GGUF support needs 4.41+; A1111 pins 4.30.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tipo.errors import UnsupportedModelError
from tipo.gguf.checkpoint import open_gguf
from tipo.models.device import choose_device, choose_dtype
from tipo.models.load import LoadedModel, dtype_argument, ready_model

if TYPE_CHECKING:
    import torch


def load_gguf_model(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    name: str | None = None,
    legacy: bool | None = None,
) -> LoadedModel:
    """Load a LLaMA ``.gguf`` file like :func:`tipo.models.load.load_model` loads a folder.

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
    file = checkpoint.path
    return ready_model(model, checkpoint.tokenizer, target_device, target_dtype, name or file.name, file)


def _llama_from_state(config: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    # No path: the weights come from ``state_dict`` and nothing is initialised at random (tested
    # on 4.30.2, 4.46.1 and 5.x). The concrete class: no auto-class lookup, so no remote code
    # can ever run.
    return LlamaForCausalLM.from_pretrained(
        None, config=LlamaConfig.from_dict(config), state_dict=state, **dtype_argument(dtype)
    )


def supports_grouped_query_attention() -> bool:
    """transformers' LLaMA knows ``num_key_value_heads`` (4.31+; A1111's 4.30.2 does not)."""
    from transformers import LlamaConfig

    return hasattr(LlamaConfig(), "num_key_value_heads")
