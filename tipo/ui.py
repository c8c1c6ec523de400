"""The TIPO controls, built from the schema (:class:`tipo.args.TipoArgs`) with gradio.

Imported only by ``scripts/``: it needs gradio, which ``import tipo`` never loads. Works on
gradio 3.41 (A1111 1.10) and 4.40 (Forge): keyword arguments that one of them lacks are
dropped by :func:`_make`, and the WebUI-only widgets (``InputAccordion``, ``ToolButton``)
are passed in by the script, which feature-checks them (this module imports no ``modules.*``).
Building has no side effects: the API calls the script's ``ui()`` again to read defaults.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from tipo.args import fields, spec
from tipo.extension import paste_values
from tipo.models import MODELS
from tipo.plan import Mode

__all__ = ["Controls", "build"]

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


def _make(kind: Callable[..., Any], **kwargs: Any) -> Any:
    """``kind(**kwargs)`` without the keywords this gradio does not know."""
    accepted = inspect.signature(kind).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return kind(**kwargs)


def _control(name: str, elem_id: Callable[[str], str]) -> Any:
    f = next(f for f in fields() if f.name == name)
    info = spec(name)
    common = {"label": info.label, "info": info.help, "value": f.default, "elem_id": elem_id(name)}
    if name == "model":
        choices = [m.repo_id for m in MODELS if m.supported]
        return _make(gr.Dropdown, choices=choices, allow_custom_value=True, **common)
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
) -> Controls:
    """Lay out every control; call inside the WebUI's ``gr.Blocks`` context (``ui()``)."""
    made: dict[str, Any] = {}
    button = tool_button or (lambda **kw: _make(gr.Button, size="sm", **kw))
    if input_accordion is not None:
        outer = input_accordion(False, label="TIPO", elem_id=elem_id("enabled"))
        made["enabled"] = outer
    else:
        outer = gr.Accordion("TIPO", open=False, elem_id=elem_id("accordion"))
    with outer:
        if input_accordion is None:
            made["enabled"] = _make(gr.Checkbox, label=spec("enabled").label, info=spec("enabled").help,
                                    value=False, elem_id=elem_id("enabled"))  # fmt: skip
        with gr.Row():
            for name in ("mode", "tag_length", "nl_length"):
                made[name] = _control(name, elem_id)
        made["template"] = _control("template", elem_id)
        made["nl_prompt"] = _control("nl_prompt", elem_id)
        with gr.Row():
            made["ban_tags"] = _control("ban_tags", elem_id)
            made["ban_nl"] = _control("ban_nl", elem_id)
        with gr.Row():
            made["seed"] = _control("seed", elem_id)
            random_seed = button(value=RANDOM_SEED_ICON, elem_id=elem_id("random_seed"))
            reuse_seed = button(value=REUSE_SEED_ICON, elem_id=elem_id("reuse_seed"))
        with gr.Row():
            made["timing"] = _control("timing", elem_id)
            made["presampling"] = _control("presampling", elem_id)
        with gr.Accordion("Model and sampling", open=False, elem_id=elem_id("sampling")):
            for name in _SAMPLING:
                made[name] = _control(name, elem_id)
    random_seed.click(fn=lambda: -1, inputs=[], outputs=[made["seed"]])
    made["mode"].change(fn=lambda mode: gr.update(visible=mode == Mode.CUSTOM.value), inputs=[made["mode"]],
                        outputs=[made["template"]])  # fmt: skip

    names = [f.name for f in fields()]
    assert set(made) == set(names), f"controls and schema differ: {set(made) ^ set(names)}"
    return Controls(
        components=[made[name] for name in names],
        infotext_fields=[(made[name], _paster(name)) for name in names],
        paste_field_names=[spec(name).infotext for name in names],
        seed=made["seed"],
        reuse_seed=reuse_seed,
    )


def _paster(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda params: paste_values(params).get(name)
