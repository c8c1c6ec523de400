"""The TIPO section of the WebUI's Settings, the model holder those settings configure, and
which model names a request may use.

Plain values: ``scripts/tipo_script.py`` registers :data:`SETTINGS` with the WebUI and reads
them back into :class:`WebuiSettings`; nothing here imports gradio, ``modules.*`` or torch.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from tipo.args import TipoArgs
from tipo.errors import InvalidArgument
from tipo.models.registry import DEFAULT_MODEL, MODELS, find_model
from tipo.models.resolve import resolve_user_model

__all__ = [
    "Setting", "SETTINGS", "VRAM_POLICIES", "NL_BOX_PLACES", "WebuiSettings", "ExpanderPool",
    "SupportsExpand", "environment_report", "model_location", "local_models",
]  # fmt: skip

#: Where the model waits between generations: the values of :class:`tipo.api.Residency`.
VRAM_POLICIES = ("keep", "offload", "unload_idle")
#: Where the extra NL prompt box is shown (javascript/tipo.js moves or hides it).
NL_BOX_PLACES = ("accordion", "below_prompt", "hidden")


class SupportsExpand(Protocol):
    def expand(self, requests: Sequence[Any], *, strict: bool = False, control: Any = None) -> list[Any]: ...


@dataclass(frozen=True)
class Setting:
    """One WebUI option in the TIPO section of Settings (the script registers it)."""

    key: str
    default: Any
    label: str
    choices: tuple[str, ...] | None = None
    #: Choices are suggestions; any text is accepted (a dropdown with custom values).
    open_choices: bool = False
    #: Takes effect after "Reload UI" (it changes a control's default).
    reload_ui: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("tipo_model", "", f"Default TIPO model of the Model control and the expand route (empty: {DEFAULT_MODEL})",
            tuple(m.repo_id for m in MODELS if m.supported), open_choices=True, reload_ui=True),
    Setting("tipo_models_dir", "", "Folder for TIPO models: Hub downloads go here, and local model folders "
            "or .gguf files in it can be named by their name (empty: the WebUI's models/TIPO)"),
    Setting("tipo_device", "auto", "Device for TIPO: auto (the WebUI's device), cpu, cuda, cuda:1, mps…"),
    Setting("tipo_dtype", "auto", "Weights type for TIPO (auto: bfloat16/float16 on GPU, float32 on CPU)",
            ("auto", "float32", "float16", "bfloat16")),
    Setting("tipo_vram_policy", "keep", "Where the TIPO model waits between generations: keep (on the GPU, fastest), "
            "offload (moved to the CPU after each use), unload_idle (dropped after the minutes below)", VRAM_POLICIES),
    Setting("tipo_unload_minutes", 10, "unload_idle: minutes without a generation before the TIPO model is "
            "dropped (0: right after each use)"),
    Setting("tipo_nl_prompt_box", "accordion", "Where the TIPO NL prompt box is shown: in the TIPO accordion, "
            "below the prompt box, or hidden", NL_BOX_PLACES),
)  # fmt: skip


@dataclass(frozen=True)
class WebuiSettings:
    """The settings as the glue uses them; :meth:`read` tolerates missing or malformed values."""

    model: str = DEFAULT_MODEL
    models_dir: str = ""
    device: str | None = None
    dtype: str | None = None
    vram_policy: str = "keep"
    unload_minutes: float = 10.0

    @classmethod
    def read(cls, opts: Any, *, webui_device: str | None, default_models_dir: str) -> WebuiSettings:
        """From the WebUI's ``shared.opts``; ``auto`` device means the WebUI's own device."""
        device = str(getattr(opts, "tipo_device", "auto") or "auto").strip()
        dtype = str(getattr(opts, "tipo_dtype", "auto") or "auto").strip()
        policy = str(getattr(opts, "tipo_vram_policy", "keep") or "keep")
        try:
            minutes = max(0.0, float(getattr(opts, "tipo_unload_minutes", 10)))
        except (TypeError, ValueError):
            minutes = 10.0
        return cls(
            model=str(getattr(opts, "tipo_model", "") or "").strip() or DEFAULT_MODEL,
            models_dir=str(getattr(opts, "tipo_models_dir", "") or "").strip() or default_models_dir,
            device=webui_device if device == "auto" else device,
            dtype=None if dtype == "auto" else dtype,
            vram_policy=policy if policy in VRAM_POLICIES else "keep",
            unload_minutes=minutes,
        )  # fmt: skip


class ExpanderPool:
    """Holds the expander of the model used last (one TIPO model in memory), shared by the
    txt2img and img2img scripts and the expand route; thread-safe. Its owner is the entry script."""

    def __init__(self, factory: Callable[..., SupportsExpand] | None = None) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._expander: SupportsExpand | None = None

    def get(self, model: str, settings: WebuiSettings) -> SupportsExpand:
        """The expander for ``model`` under ``settings``; a different model or setting replaces
        (and unloads) the one held, so only one TIPO model is ever in memory."""
        key = (model, settings.device, settings.dtype, settings.models_dir, settings.vram_policy, settings.unload_minutes)
        with self._lock:
            if self._expander is None or self._key != key:
                self._drop()
                factory = self._factory
                if factory is None:
                    from tipo.api import Expander

                    factory = Expander
                self._expander = factory(
                    model, device=settings.device, dtype=settings.dtype, cache_dir=settings.models_dir,
                    residency=settings.vram_policy, idle_minutes=settings.unload_minutes,
                )  # fmt: skip
                self._key = key
            return self._expander

    def clear(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        old, self._expander, self._key = self._expander, None, None
        unload = getattr(old, "unload", None)
        if callable(unload):
            try:
                unload()  # frees the memory now and stops an idle-unload timer that holds it
            except InvalidArgument:
                pass  # still running elsewhere: it is freed when that call ends and drops it


def model_location(name: str, models_dir: str | Path, *, inside_only: bool = False) -> str:
    """What to load for a model name: a registry id as the registry spells it, the name of a
    folder (or ``.gguf`` file) inside the models folder as its full path, anything else unchanged
    (a local path the UI's user typed on their own machine).

    With ``inside_only`` (names that came over HTTP) only registry ids and names of entries of
    the models folder pass (:func:`tipo.models.resolve_user_model`): a remote caller must not
    make the server open other paths or download other repos. Refusals are
    :class:`tipo.errors.TipoError` naming the value.
    """
    if inside_only:
        return resolve_user_model(name, models_dir)
    text = str(name).strip()
    info = find_model(text)
    if info is not None:
        return info.repo_id
    inside = os.path.join(os.path.abspath(os.path.expanduser(str(models_dir))), text)
    plain = text not in ("", ".", "..") and os.path.basename(text) == text
    return inside if plain and os.path.exists(inside) else text


def local_models(models_dir: str | Path) -> list[str]:
    """Model folders (with config.json) and ``.gguf`` files directly inside the models folder,
    by name, for the Model control's choices. The Hub cache's own ``models--*`` folders are skipped."""
    root = Path(models_dir).expanduser()
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name.lower())
    except OSError:
        return []
    return [
        p.name for p in entries
        if not p.name.startswith(("models--", ".")) and ((p / "config.json").is_file() or p.suffix.lower() == ".gguf")
    ]  # fmt: skip


def environment_report(args: TipoArgs, device: str | None) -> str:
    """What a bug report needs: versions, model, device, settings (strict mode's error)."""
    import importlib.metadata

    from tipo import __version__

    versions = [f"tipo {__version__}"]  # the package's own: an extension is not pip-installed
    for dist in ("torch", "transformers", "huggingface_hub", "gradio"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} -")
    return (
        f"versions: python {sys.version.split()[0]}, {', '.join(versions)}\n"
        f"model: {args.model}; device: {device or 'auto'}\n"
        f"args: {json.dumps(args.to_dict(), ensure_ascii=False)}"
    )
