"""Which TIPO models exist, where their files come from, and how one is loaded.

Models come from the Hugging Face cache through ``huggingface_hub.snapshot_download`` (progress
bars, resume, ``HF_HOME``/``HF_HUB_OFFLINE`` honoured by the hub itself) or from a local folder.
Only ``LlamaForCausalLM`` folders with safetensors weights are loaded, never remote code: the
TIPO v1 models are LLaMA (format sheet, "Models"). torch, transformers and huggingface_hub are
imported only when a model is resolved or loaded, so ``import tipo.models`` stays cheap.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tipo.errors import HubUnreachableError, InvalidArgument, ModelNotFoundError, UnsupportedModelError

if TYPE_CHECKING:
    import torch

    from tipo.tokenizer import TipoTokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelCache",
    "ModelInfo",
    "MODELS",
    "choose_device",
    "choose_dtype",
    "download_command",
    "find_model",
    "load_model",
    "resolve_model",
    "validate_model_dir",
]


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


def _known_ids() -> str:
    return ", ".join(info.repo_id for info in MODELS if info.supported)


def resolve_model(
    name_or_path: str | Path,
    *,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    allow_unknown_repo: bool = False,
) -> Path:
    """The folder holding the model's files (or a local ``.gguf`` file) as given, or the Hub snapshot.

    An existing path always wins over a registry name. A repo id outside the registry is
    refused before any network access unless ``allow_unknown_repo``; ``local_files_only=None``
    leaves the decision to the hub (``HF_HUB_OFFLINE``).
    """
    text = str(name_or_path).strip()
    if not text:
        raise InvalidArgument("model is empty: give a registry id such as " + DEFAULT_MODEL + " or a folder")
    candidate = Path(text).expanduser()
    if candidate.exists():
        if _is_gguf_file(candidate):
            from tipo.gguf_model import inspect_gguf

            inspect_gguf(candidate)
        else:
            validate_model_dir(candidate)
        return candidate
    info = find_model(text)
    if info is not None:
        if not info.supported:
            raise UnsupportedModelError(f"{info.repo_id}: {info.unsupported_reason}. Use one of: {_known_ids()}")
        return _download(info.repo_id, cache_dir=cache_dir, local_files_only=local_files_only)
    if _REPO_ID.match(text) and not text.startswith("."):
        if not allow_unknown_repo:
            raise ModelNotFoundError(
                f"{text!r} is not a known TIPO model and no such folder exists. Known models: "
                f"{_known_ids()}; or pass the folder of a downloaded TIPO model."
            )
        return _download(text, cache_dir=cache_dir, local_files_only=local_files_only)
    raise ModelNotFoundError(f"no model folder at {candidate} (and {text!r} is no known model id: {_known_ids()})")


def validate_model_dir(path: Path) -> dict[str, Any]:
    """Check that ``path`` holds a loadable TIPO model and return its config.json."""
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a folder; a TIPO model is a folder with config.json")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{path} holds no config.json, so it is no model folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"{config_file} cannot be read as JSON: {error}") from error
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "llama":
        raise UnsupportedModelError(
            f"{path}: model_type is {model_type!r}; only LLaMA TIPO models (model_type 'llama', "
            f"LlamaForCausalLM) are supported"
        )
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    if "LlamaForCausalLM" not in architectures:
        raise UnsupportedModelError(f"{path}: architectures {architectures!r} do not include LlamaForCausalLM")
    if not (path / "model.safetensors").is_file() and not (path / "model.safetensors.index.json").is_file():
        found = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.gguf"))
        raise ModelNotFoundError(
            f"{path} has no model.safetensors; only safetensors or GGUF weights are loaded "
            f"(pickle .bin files can run code; pass a .gguf file itself as the model)"
            + (f". Found instead: {', '.join(found)}" if found else "")
        )
    if not (path / "tokenizer.model").is_file():
        raise ModelNotFoundError(f"{path} has no tokenizer.model")
    return config


def _download(repo_id: str, *, cache_dir: str | Path | None, local_files_only: bool | None) -> Path:
    from huggingface_hub import snapshot_download

    errors = _HubErrors.load()
    kwargs: dict[str, Any] = {"repo_id": repo_id, "allow_patterns": list(REPO_FILES)}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        folder = Path(snapshot_download(**kwargs))
    except errors.repo_missing as error:
        raise ModelNotFoundError(
            f"{repo_id} was not found on the Hugging Face Hub (or needs a login): {error}"
        ) from error
    except errors.unreachable as error:
        raise HubUnreachableError(_unreachable_message(repo_id, error, local_files_only, cache_dir)) from error
    validate_model_dir(folder)
    return folder


def _unreachable_message(
    repo_id: str, error: BaseException, local_files_only: bool | None, cache_dir: str | Path | None
) -> str:
    from huggingface_hub import constants

    cache = cache_dir or getattr(constants, "HF_HUB_CACHE", None) or getattr(constants, "HUGGINGFACE_HUB_CACHE", "?")
    if local_files_only:
        why = "local_files_only=True was given"
    elif getattr(constants, "HF_HUB_OFFLINE", False):
        why = "offline mode is on (HF_HUB_OFFLINE=1); set HF_HUB_OFFLINE=0 to allow the download"
    else:
        # snapshot_download chains the transport error it fell back from.
        root = error.__cause__ or error
        why = f"the Hub could not be reached ({type(root).__name__}: {root}); check the internet connection or proxy"
    return (
        f"Cannot get model {repo_id}: it is not in the local Hugging Face cache ({cache}) and {why}. "
        f"Alternatively download it where the Hub is reachable with `{download_command(repo_id, cache_dir)}`, "
        f"or pass a folder that holds the model with --model PATH."
    )


def download_command(repo_id: str, cache_dir: str | Path | None = None) -> str:
    """The shell command that fills the cache: huggingface_hub 1.0 replaced ``huggingface-cli``
    with ``hf``; Forge's 0.26.2 has only the former."""
    import shlex

    import huggingface_hub
    from packaging.version import Version

    tool = "hf" if Version(huggingface_hub.__version__).release >= (1, 0) else "huggingface-cli"
    command = f"{tool} download {repo_id}"
    return command if cache_dir is None else f"{command} --cache-dir {shlex.quote(str(cache_dir))}"


@dataclass(frozen=True)
class _HubErrors:
    """huggingface_hub exception classes, looked up by name: 0.26 (Forge) to 2.x differ in
    module and in whether transport errors come from requests or httpx."""

    repo_missing: tuple[type[BaseException], ...]
    unreachable: tuple[type[BaseException], ...]

    @classmethod
    def load(cls) -> _HubErrors:
        import importlib

        modules = []
        for name in ("huggingface_hub.errors", "huggingface_hub.utils"):
            try:
                modules.append(importlib.import_module(name))
            except ImportError:
                continue

        def classes(*names: str) -> tuple[type[BaseException], ...]:
            found: list[type[BaseException]] = []
            for class_name in names:
                for module in modules:
                    candidate = getattr(module, class_name, None)
                    if isinstance(candidate, type) and issubclass(candidate, BaseException):
                        found.append(candidate)
                        break
            return tuple(found)

        # Not OSError at large: a full disk or an unwritable cache is no connection problem.
        transport: list[type[BaseException]] = [ConnectionError, TimeoutError]
        for module_name, class_name in (("requests", "RequestException"), ("httpx", "TransportError"),
                                        ("httpx2", "TransportError")):
            try:
                candidate = getattr(importlib.import_module(module_name), class_name, None)
            except ImportError:
                continue
            if isinstance(candidate, type):
                transport.append(candidate)
        return cls(
            repo_missing=classes("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"),
            unreachable=classes("LocalEntryNotFoundError", "OfflineModeIsEnabled", "HfHubHTTPError")
            + tuple(transport),
        )


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


_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


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


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for :class:`tipo.engine.hf.HFEngine`: on ``device`` in ``dtype``, eval mode."""

    model: Any
    tokenizer: TipoTokenizer
    device: torch.device
    dtype: torch.dtype
    name: str
    path: Path


def _display_name(path: Path) -> str:
    """``owner/name`` for a Hub cache snapshot (``models--owner--name/snapshots/<sha>``), else
    the folder's name."""
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    return path.name


def _load_plan(
    path: str | Path, device: torch.device | str | None, dtype: torch.dtype | str | None
) -> tuple[Path, dict[str, Any], torch.device, torch.dtype]:
    """Validated folder, its config.json, and the concrete device and dtype to load it with.
    For a ``.gguf`` file: the file and what its header says (architecture, stored dtype)."""
    folder = Path(path)
    if _is_gguf_file(folder):
        from tipo.gguf_model import inspect_gguf

        config = inspect_gguf(folder)
    else:
        config = validate_model_dir(folder)
    target_device = choose_device(device)
    weights_dtype = config.get("torch_dtype") or config.get("dtype")
    target_dtype = choose_dtype(target_device, dtype, weights_dtype if isinstance(weights_dtype, str) else None)
    return folder, config, target_device, target_dtype


def _is_gguf_file(path: Path) -> bool:
    """A llama.cpp model file (loaded by :mod:`tipo.gguf_model`) rather than a model folder."""
    return path.suffix.lower() == ".gguf" and path.is_file()


def _safetensors_error() -> type[BaseException]:
    """safetensors' own error class (a plain Exception, raised for a damaged file)."""
    import safetensors

    found = getattr(safetensors, "SafetensorError", None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else OSError


def load_model(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    name: str | None = None,
) -> LoadedModel:
    """Load a resolved model folder (or ``.gguf`` file). The tokenizer is checked against
    config.json before the weights are read, so a mismatched folder fails fast."""
    if _is_gguf_file(Path(path)):
        from tipo.gguf_model import load_gguf_model

        return load_gguf_model(path, device, dtype, name=name)
    folder, config, target_device, target_dtype = _load_plan(path, device, dtype)

    import transformers
    from packaging.version import Version
    from transformers import LlamaForCausalLM

    from tipo.tokenizer import TipoTokenizer

    tokenizer = TipoTokenizer.from_dir(folder)
    tokenizer.check_vocab(int(config.get("vocab_size", 0)))
    # transformers 4.56 renamed torch_dtype to dtype; 4.30 (A1111) knows only torch_dtype.
    dtype_key = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"
    try:
        # The concrete class: no auto-class lookup, so no remote code can ever run.
        model = LlamaForCausalLM.from_pretrained(
            str(folder), use_safetensors=True, local_files_only=True, **{dtype_key: target_dtype}
        )
    except (OSError, ValueError, _safetensors_error()) as error:
        raise ModelNotFoundError(
            f"cannot load the weights in {folder} (damaged or incomplete download?): {error}"
        ) from error
    model.to(target_device)
    model.eval()
    model.requires_grad_(False)
    loaded = LoadedModel(model, tokenizer, target_device, target_dtype, name or _display_name(folder), folder)
    logger.info("loaded %s on %s (%s)", loaded.name, target_device, str(target_dtype).removeprefix("torch."))
    return loaded


class ModelCache:
    """Loads each (folder, device, dtype) once and keeps the ``max_models`` most recently used.

    Thread-safe: concurrent callers asking for the same model wait for one load; different
    models load in parallel. One instance per owner (the WebUI script, the CLI), never global.
    """

    def __init__(self, loader: Callable[..., LoadedModel] = load_model, *, max_models: int = 1) -> None:
        if max_models < 1:
            raise InvalidArgument(f"max_models={max_models!r} (must be >= 1)")
        self._loader = loader
        self._max_models = max_models
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, str, str], threading.Lock] = {}

    def get(
        self, path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None
    ) -> LoadedModel:
        folder, _, target_device, target_dtype = _load_plan(Path(path).expanduser().resolve(), device, dtype)
        key = (str(folder), str(target_device), str(target_dtype))
        with self._lock:
            cached = self._take(key)
            if cached is not None:
                return cached
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                cached = self._take(key)
            if cached is not None:
                return cached
            try:
                loaded = self._loader(folder, device=target_device, dtype=target_dtype)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._entries[key] = loaded
                while len(self._entries) > self._max_models:
                    self._entries.popitem(last=False)
        return loaded

    def _take(self, key: tuple[str, str, str]) -> LoadedModel | None:
        """Cached entry marked as most recently used; caller holds ``_lock``."""
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
        return cached

    def clear(self) -> None:
        """Forget every model (their memory is freed once no engine holds them)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
