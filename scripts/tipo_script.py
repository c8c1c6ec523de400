"""TIPO in AUTOMATIC1111 / Forge: the extension's one entry file.

The WebUI executes every top-level ``.py`` in ``scripts/``. This file only converts the
processing object ``p``, the control values and the WebUI's state into plain values, calls
:mod:`tipo.extension` (and :mod:`tipo.routes`, :mod:`tipo.xyz`) and writes the result back; the
logic is tested without a WebUI (tests/test_extension.py, tests/test_routes.py).
Hook order (webui-facts, "Order of things"): ``before_process`` runs before seeds are fixed and
styles applied (timing "before"); ``process`` sees ``p.all_prompts``, ``p.all_seeds`` and
``p.all_hr_prompts`` filled (timing "after"). Everything that runs TIPO's model holds the
WebUI's queue lock (``modules.call_queue.queue_lock``), as generations do, so the two never
share the GPU at once.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from modules import script_callbacks, scripts, shared

from tipo import api_guard, extension, routes, xyz
from tipo.args import TipoArgs
from tipo.diff import render_preview_html
from tipo.errors import TipoError
from tipo.models.registry import MODELS
from tipo.settings import SETTINGS, ExpanderPool, WebuiSettings, local_models, model_location

logger = logging.getLogger("tipo.webui")

#: The one model holder of the txt2img and img2img scripts and the expand route: a resource,
#: not generation state.
EXPANDERS = ExpanderPool()
#: Hands a TIPO failure that stops a generation to the HTTP answer of the API request that ran
#: it (the WebUI swallows exceptions from script hooks and would answer 200): an object holding
#: a per-request context variable, no shared data (tipo.api_guard.FailureRelay).
API_FAILURES = api_guard.FailureRelay()
_PAGE_PARTS = ("prompt", "width", "height")


class TipoScript(scripts.Script):
    def __init__(self) -> None:
        super().__init__()
        self._controls: Any = None
        self._page: dict[str, Any] = {}  # this tab's prompt box, width and height sliders
        if hasattr(self, "on_after_component"):  # A1111 >= 1.6, Forge
            for tab in ("txt2img", "img2img"):
                for part in _PAGE_PARTS:
                    self.on_after_component(lambda c, tab=tab, part=part: self._remember(tab, part, c.component),
                                            elem_id=f"{tab}_{part}")  # fmt: skip
                self.on_after_component(lambda c, tab=tab: self._wire(tab, c.component), elem_id=f"generation_info_{tab}")

    def title(self) -> str:
        return extension.TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        from tipo import ui

        settings = _settings()
        controls = ui.build(
            self.elem_id, input_accordion=_webui_widget("InputAccordion"), tool_button=_webui_widget("ToolButton"),
            model=settings.model, local_models=local_models(settings.models_dir),
        )  # fmt: skip
        self.infotext_fields = controls.infotext_fields
        self.paste_field_names = controls.paste_field_names
        self._controls = controls
        return controls.components

    def _tab(self) -> str:
        return "img2img" if self.is_img2img else "txt2img"

    def _remember(self, tab: str, part: str, component: Any) -> None:
        if tab == self._tab():
            self._page[part] = component

    def _wire(self, tab: str, info_box: Any) -> None:
        """Events that need components made after ``ui()`` (the generation-info box) or before
        it (the prompt box): wired once the tab's last one exists."""
        controls = self._controls
        if controls is None or tab != self._tab():
            return
        controls.reuse_seed.click(fn=lambda text, current: _or(extension.seed_from_generation_info(text), current),
                                  inputs=[info_box, controls.seed], outputs=[controls.seed])  # fmt: skip
        if "prompt" not in self._page:
            logger.warning("TIPO: no %s prompt box found; 'Expand now' is off", tab)
            return
        page = [self._page[part] for part in _PAGE_PARTS if part in self._page]
        expand_now = _expand_now if len(page) == len(_PAGE_PARTS) else (lambda prompt, *values: _expand_now(prompt, 1024, 1024, *values))
        controls.expand_now.click(fn=expand_now, inputs=[*page, *controls.components],
                                  outputs=[controls.preview_text, controls.preview_html])  # fmt: skip

    def before_process(self, p: Any, *values: Any) -> None:
        args = _parse(p, values)
        if args is None or args.timing != "before":
            return
        reused = _upscaled_expansion(p)
        if reused is not None:
            p.prompt, hires, carried = reused
            if hires != p.prompt or getattr(p, "hr_prompt", ""):
                p.hr_prompt = hires
            p.extra_generation_params = {**p.extra_generation_params, **carried}
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
        reused = _upscaled_expansion(p)
        if reused is not None:
            prompt, hires, carried = reused
            _set_prompts(p, [prompt] * len(p.all_prompts), [hires] * len(p.all_prompts))
            p.extra_generation_params = {**p.extra_generation_params, **carried}
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
        _set_prompts(p, list(result.prompts), None if result.hr_prompts is None else list(result.hr_prompts))


def _set_prompts(p: Any, prompts: list[str], hr_prompts: list[str] | None) -> None:
    """``all_prompts`` (and ``all_hr_prompts`` where hires is on) with their ``main_`` copies."""
    p.all_prompts = prompts
    if getattr(p, "main_prompt", None) is not None and prompts:
        p.main_prompt = prompts[0]
    if hr_prompts is not None and getattr(p, "all_hr_prompts", None) is not None:
        p.all_hr_prompts = hr_prompts
        if getattr(p, "main_hr_prompt", None) is not None and hr_prompts:
            p.main_hr_prompt = hr_prompts[0]


def _upscaled_expansion(p: Any) -> tuple[str, str, dict[str, Any]] | None:
    """On ✨ (upscale one image, ``p.txt2img_upscale``): the image's own expansion and TIPO
    entries, read back from its infotext (:func:`tipo.extension.upscale_reuse`); None otherwise,
    and where the image holds none (then its prompt is expanded again, as any generation)."""
    if not getattr(p, "txt2img_upscale", False):
        return None
    try:
        from modules import images, infotext_utils

        text, _items = images.read_info_from_image(p.firstpass_image)
        params = infotext_utils.parse_generation_parameters(text) if text else {}
        if text:  # the WebUI's parser may strip style text from the prompt
            params = {**params, "Prompt": extension.written_prompt(text)}
        reused = extension.upscale_reuse(params) if text else None
    except (ImportError, AttributeError, OSError, ValueError, TypeError) as error:  # an older WebUI, an unreadable file
        logger.warning("TIPO: cannot read the infotext of the image to upscale (%s)", error)
        reused = None
    if reused is None:
        logger.warning("TIPO: the image to upscale records no TIPO expansion; its prompt is expanded again "
                       "(the same expansion only with a fixed TIPO seed and per-image presampling)")  # fmt: skip
    return reused


def _parse(p: Any, values: tuple[Any, ...]) -> TipoArgs | None:
    try:
        return extension.parse_script_args(values, xyz.overrides_of(p))
    except TipoError as error:
        _refuse(p, f"TIPO: {error}", error)
        raise


def _run(p: Any, job: extension.Job, args: TipoArgs) -> extension.JobResult:
    """One generation's expansions (the WebUI holds the queue lock around ``process()``)."""
    settings = _settings()
    expander = _expander(args.model, settings)
    state = shared.state
    state.textinfo = f"TIPO: expanding {len(job.prompts)} prompt(s)"
    try:
        result = extension.run_job(job, args, expander, report=lambda: extension.environment_report(args, settings.device),
                                   control=extension.webui_control(state))  # fmt: skip
    except TipoError as error:  # strict mode, or arguments only a request could check
        _refuse(p, str(error), error)
        raise
    finally:
        state.sampling_step = 0  # the sampler sets its own steps; don't show TIPO's meanwhile
    # A new dict, not update(): the X/Y/Z plot's cells are shallow copies of one p and share
    # its dict, so a cell with TIPO off would show the TIPO entries of the cell before it.
    p.extra_generation_params = {**p.extra_generation_params, **result.infotext}
    if result.failed and hasattr(p, "comment"):
        p.comment(f"TIPO kept the original prompt of {result.failed} image(s): see the TIPO error in their infotext")
    return result


class _Unavailable:
    """Stands in for an expander whose model name was refused: :func:`tipo.extension.run_job`
    then keeps the original prompts and reports why (or raises, in strict mode)."""

    def __init__(self, error: TipoError) -> None:
        self.error = error

    def expand(self, requests: Any, **_options: Any) -> Any:
        raise self.error


def _refuse(p: Any, message: str, error: TipoError) -> None:
    """Stop this generation: the WebUI reports and swallows exceptions from script hooks, so
    raising alone would let it go on with prompts TIPO was asked to change, and an API request
    would be answered HTTP 200; the relay makes that answer an HTTP error naming ``error``."""
    logger.error(message)
    API_FAILURES.record(error)
    if hasattr(p, "comment"):
        p.comment(message)
    state = getattr(shared, "state", None)
    if state is not None and hasattr(state, "interrupt"):
        state.interrupt()


def _expander(model: str, settings: WebuiSettings) -> Any:
    """UI and API args arrive the same way, so every model name is held to what a remote caller
    may name: registry ids and entries of the models folder (never other paths or repos). A
    refused name fails as a failed load does: original prompts kept and the reason shown."""
    try:
        return EXPANDERS.get(model_location(model, settings.models_dir, inside_only=True), settings)
    except TipoError as error:
        return _Unavailable(error)


def _locked(job: str, work: Callable[[Any], Any]) -> Any:
    """``work(control)`` under the WebUI's queue lock, as a job of its own: Interrupt stops it,
    and a stale Interrupt of an earlier generation does not (``begin`` clears it)."""
    from modules import call_queue

    state = shared.state
    with call_queue.queue_lock:
        state.begin(job=job)
        try:
            return work(extension.webui_control(state))
        finally:
            state.end()


def _expand_now(prompt: str, width: Any, height: Any, *values: Any) -> tuple[str, str]:
    """The "Expand now" button: (the expansion, or "" when there is none; the diff's HTML)."""
    settings = _settings()
    result = _locked("tipo_preview", lambda control: extension.preview(
        prompt or "", values, lambda args: _expander(args.model, settings), width=int(width or 1024),
        height=int(height or 1024), protected_words=_embedding_names(), control=control,
    ))  # fmt: skip
    html = render_preview_html(result.original, result.prompt, result.seed, result.error)
    return ("" if result.error else result.prompt), html


def _expand_http(body: Any) -> tuple[int, dict[str, Any]]:
    """``POST /tipo/v1/expand``: model names are a registry id or an entry of the models folder
    (a remote caller may not point the server at other paths)."""
    settings = _settings()

    def expand(model: str, requests: Any) -> Any:
        return _locked("tipo_expand", lambda control: EXPANDERS.get(model, settings).expand(requests, control=control))

    return routes.handle_expand(body, expand, default_model=settings.model,
                                check_model=lambda name: model_location(name, settings.models_dir, inside_only=True))  # fmt: skip


def _settings() -> WebuiSettings:
    from modules import devices, paths

    device = str(getattr(devices, "device", "") or "") or None
    return WebuiSettings.read(shared.opts, webui_device=device, default_models_dir=os.path.join(paths.models_path, "TIPO"))


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


# -- callbacks, registered once when the WebUI loads this file ------------------------------


def _on_infotext_pasted(_infotext: str, params: dict[str, Any]) -> None:
    extension.restore_original_prompts(params)


def _on_ui_settings() -> None:
    import gradio as gr

    section = ("tipo", "TIPO")
    for setting in SETTINGS:
        component, component_args = None, None
        if setting.choices and setting.open_choices:
            # The WebUI's own editable dropdown: A1111 passes component_args to gr.update() on
            # page load, and gradio 3.41's update() refuses allow_custom_value (every setting
            # then shows "Error").
            component = _webui_widget("DropdownEditable") or gr.Dropdown
            component_args = {"choices": list(setting.choices)}
        elif setting.choices:
            component, component_args = gr.Radio, {"choices": list(setting.choices)}
        option = shared.OptionInfo(setting.default, setting.label, component, component_args, section=section)
        if setting.reload_ui and hasattr(option, "needs_reload_ui"):
            option = option.needs_reload_ui()
        shared.opts.add_option(setting.key, option)


def _on_before_ui() -> None:
    """The X/Y/Z plot script builds its axis list into its UI: add ours before that."""
    module = xyz.find_xyz_module(getattr(scripts, "scripts_data", []))
    if module is None:
        logger.info("TIPO: the X/Y/Z plot script is not loaded; no TIPO axes")
        return
    registry = [m.repo_id for m in MODELS if m.supported]
    xyz.register_axes(module, model_choices=lambda: [*registry, *local_models(_settings().models_dir)])


def _on_app_started(_demo: Any, app: Any) -> None:
    """``GET /tipo/v1/schema`` always; ``POST /tipo/v1/expand`` where the WebUI's own API is on
    (``--api`` or ``--nowebui``), behind its ``--api-auth`` credentials; bad TIPO args in a
    txt2img/img2img request are HTTP 422, and a TIPO failure that stopped its generation
    (strict mode) an HTTP error naming it (:mod:`tipo.api_guard`)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    async def tipo_schema(request: Request) -> Any:
        return JSONResponse(routes.schema(extension.TITLE))

    async def tipo_expand(request: Request) -> Any:
        if not routes.authorized(request.headers.get("authorization"), getattr(shared.cmd_opts, "api_auth", None)):
            return JSONResponse({"detail": "Not authenticated"}, status_code=401, headers={"WWW-Authenticate": "Basic"})
        try:
            body = await request.json()
        except ValueError as error:
            return JSONResponse({"detail": f"the body is not JSON: {error}", "errors": [{"field": "body", "message": str(error)}]},
                                status_code=422)  # fmt: skip
        status, payload = await run_in_threadpool(_expand_http, body)
        return JSONResponse(payload, status_code=status)

    for endpoint in (tipo_schema, tipo_expand):
        # FastAPI reads the parameter's type from the annotation; with postponed annotations
        # (PEP 563) it would look `Request` up in this module's globals and not find it.
        endpoint.__annotations__ = {"request": Request}
    app.add_api_route(routes.SCHEMA_PATH, tipo_schema, methods=["GET"])
    if not api_guard.install(app, extension.check_api_payload, API_FAILURES):
        logger.warning("TIPO: cannot check API args before generation; bad args will show in the console only")
    cmd_opts = getattr(shared, "cmd_opts", None)
    if getattr(cmd_opts, "api", False) or getattr(cmd_opts, "nowebui", False):
        app.add_api_route(routes.EXPAND_PATH, tipo_expand, methods=["POST"])


script_callbacks.on_infotext_pasted(_on_infotext_pasted)
script_callbacks.on_ui_settings(_on_ui_settings)
script_callbacks.on_before_ui(_on_before_ui)
script_callbacks.on_app_started(_on_app_started)
