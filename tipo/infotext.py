"""TIPO's entries in the WebUI's infotext (the text stored with each image), written and read back.

Every setting is stored under its schema key (``TIPO mode``…), next to the prompt as typed and
the reason an image kept its original prompt. The WebUI's quoting and parsing rules these
functions live with are A1111 1.10's ``modules/infotext_utils.py`` (webui-facts, "Order of
things"): a value holding ``,``, ``:`` or a newline is written as JSON, and the parser reads a
value that starts with ``"`` as a quoted one. Never ``eval`` of pasted text.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Mapping, Sequence

from tipo.args import TipoArgs, fields, spec
from tipo.errors import TipoError

__all__ = [
    "ORIGINAL_PROMPT_KEY", "ORIGINAL_HR_PROMPT_KEY", "ERROR_KEY", "encode_value", "decode_value",
    "infotext_params", "image_infotext", "restore_original_prompts", "paste_values", "upscale_reuse",
    "written_prompt",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: One ``key: value`` pair of an infotext's settings line (the WebUIs' own rule: a line with
#: fewer than three is still prompt text).
_SETTING = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')

ORIGINAL_PROMPT_KEY = "TIPO original prompt"
ORIGINAL_HR_PROMPT_KEY = "TIPO original hires prompt"
ERROR_KEY = "TIPO error"
#: Marks an infotext value that would not survive the WebUI's quoting as it is (see encode_value).
_ENCODED = "json:"


def encode_value(value: Any, key: str = "") -> Any:
    """An infotext value that comes back unchanged through the WebUI's quoting.

    The WebUI writes a value as is unless it holds ``,``, ``:`` or a newline (then as JSON),
    and its parser strips leading spaces, reads a value starting with ``"`` up to the next
    unescaped ``"`` (swallowing the following keys when the value is a lone ``"``), and cannot
    read an empty one; a value equal to its ``key`` is written as the bare key. Such strings
    are written as ``json:"…"``, which the colon makes the WebUI quote; :func:`decode_value`
    undoes it. Everything else is written as it is.
    """
    if not isinstance(value, str):
        return value
    risky = value != value.strip() or not value or value == key or value.startswith((_ENCODED, '"'))
    return _ENCODED + json.dumps(value, ensure_ascii=False) if risky else value


def decode_value(text: Any) -> Any:
    if isinstance(text, str) and text.startswith(_ENCODED):
        try:
            decoded = json.loads(text[len(_ENCODED) :])
        except ValueError:
            return text
        return decoded if isinstance(decoded, str) else text
    return text


def infotext_params(args: TipoArgs, seed: int) -> dict[str, Any]:
    """Every setting under its schema key (``TIPO mode``…), the seed being the one used;
    empty texts (their default) are left out."""
    values = {**args.to_dict(), "seed": seed}
    return {spec(f.name).infotext: encode_value(values[f.name], spec(f.name).infotext) for f in fields() if values[f.name] != ""}


def image_infotext(
    prompts: Sequence[str], hr_prompts: Sequence[str] | None, errors: Sequence[str | None]
) -> dict[str, Any]:
    """Per-image entries: the WebUI writes ``value[i]`` of a list into image ``i``'s infotext
    and leaves ``None`` out; a list whose entries are all equal is written as one value."""
    entries: dict[str, list[Any]] = {
        ORIGINAL_PROMPT_KEY: [encode_value(p, ORIGINAL_PROMPT_KEY) if e is None else None for p, e in zip(prompts, errors)],
        ERROR_KEY: list(errors),
    }
    if hr_prompts is not None:
        entries[ORIGINAL_HR_PROMPT_KEY] = [
            encode_value(h, ORIGINAL_HR_PROMPT_KEY) if e is None and h != p else None
            for p, h, e in zip(prompts, hr_prompts, errors)
        ]  # fmt: skip
    out: dict[str, Any] = {}
    for key, values in entries.items():
        if any(v is not None for v in values):
            out[key] = values[0] if all(v == values[0] for v in values) else values
    return out


def restore_original_prompts(params: dict[str, Any]) -> None:
    """The paste callback: the prompt boxes get the prompts as typed (the image's prompt is
    the expansion), so Generate with the pasted TIPO seed reproduces the expansion."""
    original = params.get(ORIGINAL_PROMPT_KEY)
    if isinstance(original, str):
        params["Prompt"] = decode_value(original)
    original_hr = params.get(ORIGINAL_HR_PROMPT_KEY)
    if isinstance(original_hr, str):
        params["Hires prompt"] = decode_value(original_hr)


def written_prompt(infotext: str) -> str:
    """The prompt of an infotext as it was written: the lines before ``Negative prompt:`` and
    the settings line, their spaces kept. The WebUIs' parser strips each line and may strip
    style text from its ``Prompt``; an expansion must come back byte for byte."""
    *lines, last = infotext.strip().split("\n")
    if len(_SETTING.findall(last)) < 3:
        lines.append(last)
    prompt = []
    for line in lines:
        if line.lstrip().startswith("Negative prompt:"):
            break
        prompt.append(line)
    return "\n".join(prompt)


def upscale_reuse(params: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """What ✨ (upscale one image) must reuse: ``(prompt, hires prompt, TIPO entries)`` of the
    image, from its parsed infotext; None when TIPO did not expand that image.

    Why: ✨ runs the script again with the arguments in the UI and only the image's own seed,
    so a random TIPO seed, per-batch presampling or a changed control would expand the typed
    prompt anew and upscale a different prompt than the image was made with. The image's
    infotext holds its expansion (the prompt) and the TIPO settings; reusing them needs no model.
    """
    prompt, original = params.get("Prompt"), params.get(ORIGINAL_PROMPT_KEY)
    if spec("enabled").infotext not in params or not isinstance(prompt, str) or not isinstance(original, str):
        return None
    hires = params.get("Hires prompt")
    carried = {key: value for key, value in params.items() if isinstance(key, str) and key.startswith("TIPO")}
    return prompt, hires if isinstance(hires, str) and hires else prompt, carried


def paste_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """Control values from a parsed infotext, tolerant: a missing or unreadable key gives the
    default (only ``float``/``int``/``bool`` parsing, never ``eval``).

    No ``TIPO`` key means the image was made without TIPO: TIPO is switched off and the other
    controls are left alone. When the prompt being pasted is still the expansion (the API's
    ``infotext`` field does not run the paste callback), TIPO is off too: expanding an expanded
    prompt again would not reproduce the image.
    """
    if spec("enabled").infotext not in params:
        return {"enabled": False}
    values: dict[str, Any] = {}
    for f in fields():
        raw = params.get(spec(f.name).infotext)
        if raw is None or f.name == "enabled":
            values[f.name] = f.default
            continue
        try:
            values[f.name] = getattr(TipoArgs.from_dict({f.name: decode_value(raw)}), f.name)
        except TipoError as error:
            logger.warning("TIPO: ignoring pasted %s (%s)", spec(f.name).infotext, error)
            values[f.name] = f.default
    original = params.get(ORIGINAL_PROMPT_KEY)
    values["enabled"] = not isinstance(original, str) or params.get("Prompt") == decode_value(original)
    return values
