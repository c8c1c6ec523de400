"""The TIPO repos we know, so that a name can be checked before any file is read or fetched."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tipo.errors import UnsupportedModelError


@dataclass(frozen=True)
class ModelInfo:
    """One registry entry: a Hub repo and what a user should know to pick it."""

    repo_id: str
    label: str
    description: str
    supported: bool = True
    unsupported_reason: str = ""
    gguf_file: str = ""  # the llama.cpp file in the same repo (format sheet, "Models")

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[1]


_V2_REASON = (
    "its architecture is not known to be LlamaForCausalLM (its model page asks for "
    "trust_remote_code, which tipo never enables); it is not supported yet"
)

#: Every TIPO repo we know, best first. Format sheet, "Models".
MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("KBlueLeaf/TIPO-500M-ft", "TIPO-500M-ft (default, best quality)", "500M LLaMA, fine-tuned",
              gguf_file="TIPO-500M-ft-F16.gguf"),
    ModelInfo("KBlueLeaf/TIPO-200M-ft2", "TIPO-200M-ft2 (recommended for speed)", "200M LLaMA, second fine-tune",
              gguf_file="TIPO-200M-ft2-F16.gguf"),
    ModelInfo("KBlueLeaf/TIPO-200M-ft", "TIPO-200M-ft", "200M LLaMA, fine-tuned", gguf_file="TIPO-200M-ft-F16.gguf"),
    ModelInfo("KBlueLeaf/TIPO-500M", "TIPO-500M", "500M LLaMA, base", gguf_file="TIPO-500M_epoch5-F16.gguf"),
    ModelInfo("KBlueLeaf/TIPO-200M", "TIPO-200M", "200M LLaMA, base", gguf_file="TIPO-200M-40Btok-F16.gguf"),
    ModelInfo("KBlueLeaf/TIPO-100M", "TIPO-100M", "100M LLaMA, base", gguf_file="TIPO-100M-F16.gguf"),
    ModelInfo("KBlueLeaf/TIPO-v2.1-1B-A200M", "TIPO-v2.1-1B-A200M (not supported yet)", "v2.1", False, _V2_REASON,
              gguf_file="TIPO-v2.1-1B-A200M-f16.gguf"),
    ModelInfo("KBlueLeaf/TIPOv2-1B-A200M", "TIPOv2-1B-A200M (not supported yet)", "v2", False, _V2_REASON,
              gguf_file="TIPOv2-1B-A200M-f16.gguf"),
)  # fmt: skip
DEFAULT_MODEL = "KBlueLeaf/TIPO-500M-ft"

#: The files a TIPO repo holds that loading needs; the GGUF file (hundreds of MB) is skipped.
REPO_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")


def find_model(name: str) -> ModelInfo | None:
    """The registry entry for a repo id (``KBlueLeaf/TIPO-200M``) or bare name (``TIPO-200M``),
    case-insensitively, as the Hub treats ids."""
    wanted = name.strip().lower()
    for info in MODELS:
        if wanted in (info.repo_id.lower(), info.name.lower()):
            return info
    return None


def known_ids() -> str:
    """The supported repo ids, for messages that tell the user what to pass instead."""
    return ", ".join(info.repo_id for info in MODELS if info.supported)


def supported_repo_id(info: ModelInfo) -> str:
    """The entry's repo id, or why it cannot run."""
    if not info.supported:
        raise UnsupportedModelError(f"{info.repo_id}: {info.unsupported_reason}. Use one of: {known_ids()}")
    return info.repo_id


def is_repo_id(text: str) -> bool:
    """``owner/name`` as the Hub spells repo ids (no part starting with a dot, so no ``..``)."""
    return bool(_REPO_ID.match(text)) and not any(part.startswith(".") for part in text.split("/"))
