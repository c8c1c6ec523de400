"""Turn the model a user named into a path to load, refusing what must not be read or fetched.

Two callers, two trust levels: the CLI and the Python API take any local path (the user types
it on their own machine, :func:`resolve_model`); a WebUI name may come from a remote API caller
or pasted infotext, so :func:`resolve_user_model` accepts registry ids and plain names inside
the TIPO models folder only, and never downloads.
"""

from __future__ import annotations

from pathlib import Path

from tipo.errors import InvalidArgument, ModelNotFoundError
from tipo.gguf.reader import inspect_gguf
from tipo.models.download import download
from tipo.models.files import check_weights, is_gguf_file, validate_model_dir
from tipo.models.registry import DEFAULT_MODEL, find_model, is_repo_id, known_ids, supported_repo_id

#: Windows device names: a "folder" called ``nul`` or ``com1`` is no folder there.
_DEVICE_NAMES = frozenset({"con", "prn", "aux", "nul", *(f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10))})
_MAX_NAME_CHARS = 255


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
        if is_gguf_file(candidate):
            inspect_gguf(candidate)
        else:
            validate_model_dir(candidate)
            check_weights(candidate)
        return candidate
    info = find_model(text)
    if info is not None:
        return download(supported_repo_id(info), cache_dir=cache_dir, local_files_only=local_files_only)
    if is_repo_id(text):
        if not allow_unknown_repo:
            raise ModelNotFoundError(
                f"{text!r} is not a known TIPO model and no such folder exists. Known models: "
                f"{known_ids()}; or pass the folder of a downloaded TIPO model."
            )
        return download(text, cache_dir=cache_dir, local_files_only=local_files_only)
    raise ModelNotFoundError(f"no model folder at {candidate} (and {text!r} is no known model id: {known_ids()})")


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
        return supported_repo_id(info)
    where = f"folders and .gguf files in {models_dir}" if models_dir is not None else "no local folders here"
    raise ModelNotFoundError(
        f"model={text!r} is neither a known TIPO model nor a model in the TIPO models folder. Known models: "
        f"{known_ids()}; {where}"
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
        if find_model(text) is not None or is_repo_id(text):
            return None  # a repo id: the caller accepts it only from the registry
        raise InvalidArgument(
            f"model={text!r} is a path or URL; only TIPO model ids ({known_ids()}) and names of "
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
    if not (real.is_dir() or is_gguf_file(real)):
        raise ModelNotFoundError(f"model={text!r}: {real} is neither a model folder nor a .gguf file")
    return real
