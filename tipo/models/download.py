"""Fetch a TIPO repo into the Hugging Face cache, and say exactly why when that cannot happen.

``snapshot_download`` gives resume, dedupe and offline mode for free (style sheet, section 7);
this module only limits what is fetched and turns the hub's errors, whose classes moved between
huggingface_hub 0.26 (Forge) and 2.x, into :mod:`tipo.errors` with the next step spelt out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tipo.errors import HubUnreachableError, ModelNotFoundError
from tipo.models.files import check_weights, read_config, validate_model_dir
from tipo.models.registry import REPO_FILES, find_model


def download(repo_id: str, *, cache_dir: str | Path | None, local_files_only: bool | None) -> Path:
    """The repo's snapshot; a repo outside the registry must first show a LLaMA config.json,
    so a non-TIPO repo is refused before any of its weights is fetched."""
    if find_model(repo_id) is None:
        read_config(_snapshot(repo_id, ["config.json"], cache_dir, local_files_only) / "config.json")
    folder = _snapshot(repo_id, list(REPO_FILES), cache_dir, local_files_only)
    validate_model_dir(folder)
    check_weights(folder)
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
