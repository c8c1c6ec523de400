"""TIPO in AUTOMATIC1111 / Forge: the extension's one entry file.

The WebUI executes every top-level ``.py`` in ``scripts/``. This file only converts the
processing object ``p`` and the control values into plain values, calls :mod:`tipo.extension`
and writes the result back; the logic is tested without a WebUI (tests/test_extension.py).
Hook order (webui-facts, "Order of things"): ``before_process`` runs before seeds are fixed and
styles applied (timing "before"); ``process`` sees ``p.all_prompts``, ``p.all_seeds`` and
``p.all_hr_prompts`` filled (timing "after").
"""

from __future__ import annotations

import logging
import os
from typing import Any

from modules import script_callbacks, scripts, shared

from tipo import extension
from tipo.args import TipoArgs
from tipo.errors import TipoError

logger = logging.getLogger("tipo.webui")

#: The one model holder of the txt2img and img2img scripts: a resource, not generation state.
EXPANDERS = extension.ExpanderPool()


class TipoScript(scripts.Script):
    def __init__(self) -> None:
        super().__init__()
        self._reuse: tuple[Any, Any] | None = None  # (♻ button, seed box), wired once the info box exists
        if hasattr(self, "on_after_component"):  # A1111 >= 1.6, Forge
            for tab in ("txt2img", "img2img"):
                self.on_after_component(lambda c, tab=tab: self._wire_reuse(c.component, tab), elem_id=f"generation_info_{tab}")

    def title(self) -> str:
        return extension.TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        from tipo import ui

        controls = ui.build(self.elem_id, input_accordion=_webui_widget("InputAccordion"), tool_button=_webui_widget("ToolButton"))
        self.infotext_fields = controls.infotext_fields
        self.paste_field_names = controls.paste_field_names
        self._reuse = (controls.reuse_seed, controls.seed)
        return controls.components

    def _wire_reuse(self, info_box: Any, tab: str) -> None:
        if self._reuse is not None and tab == ("img2img" if self.is_img2img else "txt2img"):
            button, seed = self._reuse
            button.click(fn=lambda text, current: _or(extension.seed_from_generation_info(text), current),
                         inputs=[info_box, seed], outputs=[seed])  # fmt: skip

    def before_process(self, p: Any, *values: Any) -> None:
        args = _parse(p, values)
        if args is None or args.timing != "before":
            return
        typed = p.prompt if isinstance(p.prompt, list) else [p.prompt]
        hr_typed = getattr(p, "hr_prompt", "")
        use_hr = bool(getattr(p, "enable_hr", False)) and isinstance(hr_typed, str) and hr_typed not in ("", p.prompt)
        tipo_seed = extension.resolve_tipo_seed(args.seed)
        job = extension.Job(
            prompts=tuple(typed), seeds=(extension.derive_seed(tipo_seed, 0),) * len(typed), tipo_seed=tipo_seed,
            hr_prompts=(hr_typed,) * len(typed) if use_hr else None, **_image_facts(p),
        )  # fmt: skip
        result = _run(p, job, args)
        p.prompt = list(result.prompts) if isinstance(p.prompt, list) else result.prompts[0]
        if result.hr_prompts is not None:
            p.hr_prompt = result.hr_prompts[0]

    def process(self, p: Any, *values: Any) -> None:
        args = _parse(p, values)
        if args is None or args.timing != "after":
            return
        tipo_seed = extension.resolve_tipo_seed(args.seed)
        variation = list(p.all_subseeds) if float(getattr(p, "subseed_strength", 0) or 0) > 0 else None
        seeds = extension.expansion_seeds(
            list(p.all_seeds), tipo_seed, per_batch=args.presampling == "per_batch",
            batch_size=int(p.batch_size), variation_seeds=variation,
        )  # fmt: skip
        hr = getattr(p, "all_hr_prompts", None)
        job = extension.Job(tuple(p.all_prompts), seeds, tipo_seed, tuple(hr) if hr else None, **_image_facts(p))
        result = _run(p, job, args)
        p.all_prompts = list(result.prompts)
        if getattr(p, "main_prompt", None) is not None and result.prompts:
            p.main_prompt = result.prompts[0]
        if result.hr_prompts is not None:
            p.all_hr_prompts = list(result.hr_prompts)
            if getattr(p, "main_hr_prompt", None) is not None and result.hr_prompts:
                p.main_hr_prompt = result.hr_prompts[0]


def _parse(p: Any, values: tuple[Any, ...]) -> TipoArgs | None:
    try:
        return extension.parse_script_args(values)
    except TipoError as error:
        _refuse(p, f"TIPO: {error}")
        raise


def _run(p: Any, job: extension.Job, args: TipoArgs) -> extension.JobResult:
    device, dtype, cache_dir = _settings()
    expander = EXPANDERS.get(args.model, device=device, dtype=dtype, cache_dir=cache_dir)
    if hasattr(shared, "state"):
        shared.state.textinfo = f"TIPO: expanding {len(job.prompts)} prompt(s)"
    try:
        result = extension.run_job(job, args, expander, report=lambda: extension.environment_report(args, device))
    except TipoError as error:  # strict mode, or arguments only a request could check
        _refuse(p, str(error))
        raise
    finally:
        if getattr(shared.opts, "tipo_unload_after_use", False):
            EXPANDERS.clear()
    p.extra_generation_params.update(result.infotext)
    if result.failed and hasattr(p, "comment"):
        p.comment(f"TIPO kept the original prompt of {result.failed} image(s): see the TIPO error in their infotext")
    return result


def _refuse(p: Any, message: str) -> None:
    """Stop this generation: the WebUI reports and swallows exceptions from script hooks, so
    raising alone would let it go on with prompts TIPO was asked to change."""
    logger.error(message)
    if hasattr(p, "comment"):
        p.comment(message)
    state = getattr(shared, "state", None)
    if state is not None and hasattr(state, "interrupt"):
        state.interrupt()


def _settings() -> tuple[str | None, str | None, str]:
    """Device, dtype and models folder from the TIPO settings ("auto": the WebUI's device)."""
    device = str(getattr(shared.opts, "tipo_device", "auto") or "auto").strip()
    if device == "auto":
        from modules import devices

        device = str(getattr(devices, "device", "") or "") or None
    dtype = getattr(shared.opts, "tipo_dtype", "auto")
    folder = getattr(shared.opts, "tipo_models_dir", "") or ""
    if not folder:
        from modules import paths

        folder = os.path.join(paths.models_path, "TIPO")
    return device, None if dtype == "auto" else dtype, folder


def _image_facts(p: Any) -> dict[str, Any]:
    return {"width": int(p.width), "height": int(p.height), "protected_words": _embedding_names()}


def _embedding_names() -> tuple[str, ...]:
    """Textual-inversion names: kept verbatim and never shown to TIPO (A1111; Forge has none here)."""
    try:
        from modules import sd_hijack

        return tuple(sd_hijack.model_hijack.embedding_db.word_embeddings)
    except (ImportError, AttributeError):
        return ()


def _webui_widget(name: str) -> Any:
    try:
        from modules import ui_components
    except ImportError:
        return None
    return getattr(ui_components, name, None)


def _or(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _on_infotext_pasted(_infotext: str, params: dict[str, Any]) -> None:
    extension.restore_original_prompts(params)


def _on_ui_settings() -> None:
    import gradio as gr

    section = ("tipo", "TIPO")
    for setting in extension.SETTINGS:
        component, component_args = (gr.Radio, {"choices": list(setting.choices)}) if setting.choices else (None, None)
        shared.opts.add_option(setting.key, shared.OptionInfo(setting.default, setting.label, component, component_args, section=section))


script_callbacks.on_infotext_pasted(_on_infotext_pasted)
script_callbacks.on_ui_settings(_on_ui_settings)
