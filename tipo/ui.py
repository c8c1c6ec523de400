"""The TIPO controls, built from the schema (:class:`tipo.args.TipoArgs`) with gradio.

Imported only by ``scripts/``: it needs gradio, which ``import tipo`` never loads. Works on
gradio 3.41 (A1111 1.10) and 4.40 (Forge): keyword arguments that one of them lacks are
dropped by :func:`_make`, and the WebUI-only widgets (``InputAccordion``, ``ToolButton``)
are passed in by the script, which feature-checks them (this module imports no ``modules.*``).
Building has no side effects: the API calls the script's ``ui()`` again to read defaults.
Help texts go in the WebUIs' ``tooltip`` keyword (both patch gradio's components to take it and
show it on hover); plain gradio 4 refuses it, so :func:`_make` retries without. DOM classes come
from :func:`tipo.diff.css_class`: ``javascript/tipo.js`` and ``style.css`` find the controls by them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from tipo.args import fields, spec
from tipo.diff import css_class
from tipo.extension import paste_values
from tipo.models.registry import MODELS
from tipo.plan import Mode

__all__ = ["Controls", "build"]

#: Keywords only the WebUIs' patched components take (tried first, dropped if refused).
_WEBUI_KEYWORDS = ("tooltip",)
#: Numeric controls drawn as sliders, with their step.
_STEPS = {"temperature": 0.01, "top_p": 0.01, "top_k": 1, "min_p": 0.01, "repetition_penalty": 0.01, "max_new_tokens": 1}
_SAMPLING = ("model", *_STEPS, "strict")
RANDOM_SEED_ICON = "\U0001f3b2"  # 🎲
REUSE_SEED_ICON = "\u267b\ufe0f"  # ♻️


@dataclass
class Controls:
    """What ``ui()`` needs: the components in the schema's order (the API's positional order)
    and the infotext bindings; ``reuse_seed`` and ``seed`` are wired by the script once the
    WebUI's generation-info box exists."""

    components: list[Any]
    infotext_fields: list[tuple[Any, Callable[[dict[str, Any]], Any]]] = field(default_factory=list)
    paste_field_names: list[str] = field(default_factory=list)
    seed: Any = None
    reuse_seed: Any = None
    #: "Expand now": the button, the read-only expansion, the diff, and "Send to prompt".
    expand_now: Any = None
    preview_text: Any = None
    preview_html: Any = None
    send_to_prompt: Any = None


def _make(kind: Callable[..., Any], **kwargs: Any) -> Any:
    """``kind(**kwargs)`` without the keywords this gradio does not know."""
    extras = {k: kwargs.pop(k) for k in _WEBUI_KEYWORDS if k in kwargs}
    accepted = inspect.signature(kind).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    if extras:
        try:
            return kind(**kwargs, **extras)
        except TypeError:  # plain gradio 4: no tooltip keyword
            pass
    return kind(**kwargs)


def _control(name: str, elem_id: Callable[[str], str], model: str | None, local_models: list[str]) -> Any:
    f = next(f for f in fields() if f.name == name)
    info = spec(name)
    common = {"label": info.label, "tooltip": info.help, "value": f.default, "elem_id": elem_id(name),
              "elem_classes": [css_class("field", name)]}  # fmt: skip
    if name == "model":
        choices = [m.repo_id for m in MODELS if m.supported] + local_models
        return _make(gr.Dropdown, choices=choices, allow_custom_value=True, **{**common, "value": model or f.default})
    if info.choices is not None:
        kind = gr.Dropdown if len(info.choices) > 4 else gr.Radio
        return _make(kind, choices=list(info.choices), **common)
    if isinstance(f.default, bool):
        return _make(gr.Checkbox, **common)
    if name in _STEPS:
        return _make(gr.Slider, minimum=info.minimum, maximum=info.maximum, step=_STEPS[name], **common)
    if isinstance(f.default, int):
        return _make(gr.Number, precision=0, minimum=info.minimum, **common)
    lines = 4 if name == "template" else 2 if name == "nl_prompt" else 1
    if name == "nl_prompt":  # javascript/tipo.js may move it below the prompt box (Settings)
        common["elem_classes"] = [*common["elem_classes"], css_class("nl", "prompt")]
    if name == "template":  # shown for the custom mode only (the mode's change event toggles it)
        common["visible"] = _default("mode") == Mode.CUSTOM.value
    return _make(gr.Textbox, lines=lines, placeholder=_PLACEHOLDERS.get(name, ""), **common)


def _default(name: str) -> Any:
    return next(f.default for f in fields() if f.name == name)


_PLACEHOLDERS = {
    "template": "<|special|>, <|characters|>, <|general|>,\n\n<|extended|>.",
    "ban_tags": "hat, *text*, /official.*/",
    "ban_nl": "umbrella",
}


def build(
    elem_id: Callable[[str], str],
    *,
    input_accordion: Callable[..., Any] | None = None,
    tool_button: Callable[..., Any] | None = None,
    model: str | None = None,
    local_models: list[str] | None = None,
) -> Controls:
    """Lay out every control; call inside the WebUI's ``gr.Blocks`` context (``ui()``).

    ``model`` is the Model control's starting value (the "default model" setting; the API's
    default too, since the WebUI reads defaults from ``ui()``); ``local_models`` are the names
    of the models folder's entries, offered next to the registry's ids.
    """
    made: dict[str, Any] = {}
    button = tool_button or (lambda **kw: _make(gr.Button, size="sm", **kw))

    def control(name: str) -> Any:
        made[name] = _control(name, elem_id, model, local_models or [])
        return made[name]

    if input_accordion is not None:
        outer = input_accordion(False, label="TIPO", elem_id=elem_id("enabled"))
        made["enabled"] = outer
    else:
        outer = gr.Accordion("TIPO", open=False, elem_id=elem_id("accordion"))
    with outer:
        if input_accordion is None:
            made["enabled"] = _make(gr.Checkbox, label=spec("enabled").label, tooltip=spec("enabled").help,
                                    value=False, elem_id=elem_id("enabled"))  # fmt: skip
        with gr.Row():
            for name in ("mode", "tag_length", "nl_length"):
                control(name)
        control("template")
        control("nl_prompt")
        with gr.Row():
            control("ban_tags")
            control("ban_nl")
        with gr.Row():
            control("seed")
            random_seed = button(value=RANDOM_SEED_ICON, elem_id=elem_id("random_seed"), tooltip="Random seed (-1)")
            reuse_seed = button(value=REUSE_SEED_ICON, elem_id=elem_id("reuse_seed"), tooltip="The last image's TIPO seed")
        with gr.Row():
            control("timing")
            control("presampling")
        preview = _preview(elem_id)
        with gr.Accordion("Model and sampling", open=False, elem_id=elem_id("sampling")):
            for name in _SAMPLING:
                control(name)
    random_seed.click(fn=lambda: -1, inputs=[], outputs=[made["seed"]])
    made["mode"].change(fn=lambda mode: gr.update(visible=mode == Mode.CUSTOM.value), inputs=[made["mode"]],
                        outputs=[made["template"]])  # fmt: skip
    # Sending the expansion to the prompt box (javascript/tipo.js) turns TIPO off: generating
    # with it on would expand the expansion again.
    preview.send_to_prompt.click(fn=lambda text: gr.update(value=False) if text else gr.update(),
                                 inputs=[preview.preview_text], outputs=[made["enabled"]])  # fmt: skip

    names = [f.name for f in fields()]
    assert set(made) == set(names), f"controls and schema differ: {set(made) ^ set(names)}"
    return Controls(
        components=[made[name] for name in names],
        infotext_fields=[(made[name], _paster(name)) for name in names],
        paste_field_names=[spec(name).infotext for name in names],
        seed=made["seed"],
        reuse_seed=reuse_seed,
        expand_now=preview.expand_now,
        preview_text=preview.preview_text,
        preview_html=preview.preview_html,
        send_to_prompt=preview.send_to_prompt,
    )


def _preview(elem_id: Callable[[str], str]) -> Controls:
    """The "Expand now" row, its read-only result and the diff view; wired by the script,
    which knows the tab's prompt box."""
    with gr.Row(elem_classes=[css_class("preview", "row")]):
        expand_now = _make(gr.Button, value="Expand now", size="sm", elem_id=elem_id("expand_now"),
                           elem_classes=[css_class("expand", "now")],
                           tooltip="Expand the prompt box with these settings, without generating")  # fmt: skip
        send = _make(gr.Button, value="Send to prompt", size="sm", elem_id=elem_id("send_to_prompt"),
                     elem_classes=[css_class("send", "to", "prompt")],
                     tooltip="Put the expansion in the prompt box and turn TIPO off, so it is used as it is")  # fmt: skip
    text = _make(gr.Textbox, label="Expansion", lines=3, interactive=False, show_copy_button=True, value="",
                 elem_id=elem_id("preview_text"), elem_classes=[css_class("preview", "text")])  # fmt: skip
    diff = _make(gr.HTML, value="", elem_id=elem_id("preview_html"), elem_classes=[css_class("preview", "html")])
    return Controls(components=[], expand_now=expand_now, preview_text=text, preview_html=diff, send_to_prompt=send)


def _paster(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda params: paste_values(params).get(name)
