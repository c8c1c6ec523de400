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
    "resolve_user_model",
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


def _supported(info: ModelInfo) -> str:
    """The entry's repo id, or why it cannot run."""
    if not info.supported:
        raise UnsupportedModelError(f"{info.repo_id}: {info.unsupported_reason}. Use one of: {_known_ids()}")
    return info.repo_id


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
            _check_weights(candidate)
        return candidate
    info = find_model(text)
    if info is not None:
        return _download(_supported(info), cache_dir=cache_dir, local_files_only=local_files_only)
    if _is_repo_id(text):
        if not allow_unknown_repo:
            raise ModelNotFoundError(
                f"{text!r} is not a known TIPO model and no such folder exists. Known models: "
                f"{_known_ids()}; or pass the folder of a downloaded TIPO model."
            )
        return _download(text, cache_dir=cache_dir, local_files_only=local_files_only)
    raise ModelNotFoundError(f"no model folder at {candidate} (and {text!r} is no known model id: {_known_ids()})")


#: Windows device names: a "folder" called ``nul`` or ``com1`` is no folder there.
_DEVICE_NAMES = frozenset({"con", "prn", "aux", "nul", *(f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10))})
_MAX_NAME_CHARS = 255


def resolve_user_model(name: object, models_dir: str | Path | None) -> str:
    """The model named by a WebUI user (dropdown, API args, pasted infotext), without any download.

    Only two kinds of name are accepted: a registry id (returned as the registry spells it, the
    unsupported ones refused) or the name of a folder or ``.gguf`` file directly inside
    ``models_dir`` (returned as its real path; an existing one wins over a registry name, as in
    :func:`resolve_model`). Absolute paths, ``..``, separators, drive letters, URLs, symlinks
    that leave the folder and repo ids outside the registry are refused, naming the value: an
    API caller must not make the server read files elsewhere or download another repo. The CLI
    and the Python API take any local path instead (the user types it on their own machine).
    """
    if not isinstance(name, str):
        raise InvalidArgument(f"model={name!r} (must be a string: a TIPO model id or a folder name)")
    text = name.strip()
    if not text or len(text) > _MAX_NAME_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidArgument(f"model={name[:80]!r} (empty, too long or holding control characters)")
    local = _user_model_path(text, models_dir)
    if local is not None:
        return str(local)
    info = find_model(text)
    if info is not None:
        return _supported(info)
    where = f"folders and .gguf files in {models_dir}" if models_dir is not None else "no local folders here"
    raise ModelNotFoundError(
        f"model={text!r} is neither a known TIPO model nor a model in the TIPO models folder. Known models: "
        f"{_known_ids()}; {where}"
    )


def _user_model_path(text: str, models_dir: str | Path | None) -> Path | None:
    """The real path of ``models_dir/text`` when ``text`` is one plain file name that exists
    there; ``None`` when it may be a registry id; refuses path-like and escaping names."""
    is_plain = (
        not any(mark in text for mark in ("/", "\\", ":"))
        and text not in (".", "..")
        and not text.startswith("~")
        and text.split(".")[0].strip().lower() not in _DEVICE_NAMES
        and text == text.rstrip(". ")  # Windows drops trailing dots and spaces
    )
    if not is_plain:
        if find_model(text) is not None or _is_repo_id(text):
            return None  # a repo id: the caller accepts it only from the registry
        raise InvalidArgument(
            f"model={text!r} is a path or URL; only TIPO model ids ({_known_ids()}) and names of "
            f"folders or .gguf files inside the TIPO models folder are accepted here"
        )
    if models_dir is None:
        return None
    root = Path(models_dir).expanduser().resolve()
    candidate = root / text
    if not (candidate.exists() or candidate.is_symlink()):
        return None
    real = candidate.resolve()
    if real == root or root not in real.parents:
        raise InvalidArgument(f"model={text!r} links outside the TIPO models folder {root}; move the model into it")
    if not (real.is_dir() or _is_gguf_file(real)):
        raise ModelNotFoundError(f"model={text!r}: {real} is neither a model folder nor a .gguf file")
    return real


def _is_repo_id(text: str) -> bool:
    """``owner/name`` as the Hub spells repo ids (no part starting with a dot, so no ``..``)."""
    return bool(_REPO_ID.match(text)) and not any(part.startswith(".") for part in text.split("/"))


def validate_model_dir(path: Path) -> dict[str, Any]:
    """Check that ``path`` holds a loadable TIPO model and return its config.json."""
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a folder; a TIPO model is a folder with config.json")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{path} holds no config.json, so it is no model folder")
    config = _read_config(config_file)
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


def _read_config(config_file: Path) -> dict[str, Any]:
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


_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.safetensors$")
#: safetensors refuses headers above 100 MB; TIPO's are a few kB.
_MAX_HEADER_BYTES = 100_000_000
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


def _check_weights(folder: Path) -> None:
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


def _download(repo_id: str, *, cache_dir: str | Path | None, local_files_only: bool | None) -> Path:
    """The repo's snapshot; a repo outside the registry must first show a LLaMA config.json,
    so a non-TIPO repo is refused before any of its weights is fetched."""
    if find_model(repo_id) is None:
        _read_config(_snapshot(repo_id, ["config.json"], cache_dir, local_files_only) / "config.json")
    folder = _snapshot(repo_id, list(REPO_FILES), cache_dir, local_files_only)
    validate_model_dir(folder)
    _check_weights(folder)
    return folder


def _snapshot(
    repo_id: str, patterns: list[str], cache_dir: str | Path | None, local_files_only: bool | None
) -> Path:
    from huggingface_hub import snapshot_download

    errors = _HubErrors.load()
    kwargs: dict[str, Any] = {"repo_id": repo_id, "allow_patterns": patterns}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        return Path(snapshot_download(**kwargs))
    except errors.repo_missing as error:
        raise ModelNotFoundError(
            f"{repo_id} was not found on the Hugging Face Hub (or needs a login): {error}"
        ) from error
    except errors.unreachable as error:
        raise HubUnreachableError(_unreachable_message(repo_id, error, local_files_only, cache_dir)) from error


def _unreachable_message(
    repo_id: str, error: BaseException, local_files_only: bool | None, cache_dir: str | Path | None
) -> str:
    from huggingface_hub import constants

    cache = cache_dir or getattr(constants, "HF_HUB_CACHE", None) or getattr(constants, "HUGGINGFACE_HUB_CACHE", "?")
    detail = ""
    if local_files_only:
        why = "local_files_only=True was given"
    elif getattr(constants, "HF_HUB_OFFLINE", False):
        why = "offline mode is on (HF_HUB_OFFLINE=1); set HF_HUB_OFFLINE=0 to allow the download"
    else:
        # snapshot_download chains the transport error it fell back from. It goes last and
        # short: the WebUI shows the first line of a few hundred characters, the advice first.
        root = error.__cause__ or error
        why = "the Hub could not be reached; check the internet connection or proxy"
        detail = f" ({type(root).__name__}: {' '.join(str(root).split())[:300]})"
    return (
        f"Cannot get model {repo_id}: it is not in the local Hugging Face cache ({cache}) and {why}. "
        f"Alternatively download it where the Hub is reachable with `{download_command(repo_id, cache_dir)}`, "
        f"or pass a folder that holds the model with --model PATH.{detail}"
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
    except (OSError, ValueError, RuntimeError, _safetensors_error()) as error:
        # transformers reports a tensor whose shape disagrees with config.json as RuntimeError;
        # running out of memory is no damage and keeps its own type.
        if isinstance(error, _torch_oom()):
            raise
        raise ModelNotFoundError(
            f"cannot load the weights in {folder} (damaged, incomplete or not matching config.json?): {error}"
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
