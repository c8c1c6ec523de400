"""The extension's HTTP routes as plain functions: a JSON body in, ``(status, JSON body)`` out.

``GET /tipo/v1/schema`` publishes every argument of the schema (:class:`tipo.args.TipoArgs`);
``POST /tipo/v1/expand`` expands a list of prompts without generating images. The entry script
only adapts these to FastAPI (``app.add_api_route`` with a plain ``Request``), so no pydantic
model is involved: A1111 1.10 runs pydantic 1, Forge pydantic 2. Invalid input is HTTP 422
whose body names each bad field (``requests[1].seed``) before anything is expanded.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from tipo.args import TipoArgs, fields, spec
from tipo.errors import InvalidArgument, TipoError
from tipo.models.registry import MODELS
from tipo.pipeline import Expansion
from tipo.request import ExpandRequest, resolve_seed

__all__ = ["SCHEMA_PATH", "EXPAND_PATH", "MAX_REQUESTS", "schema", "parse_expand_body", "handle_expand", "authorized"]

SCHEMA_PATH = "/tipo/v1/schema"
EXPAND_PATH = "/tipo/v1/expand"
#: Requests per call: the work of one call is bounded (style sheet, section 5).
MAX_REQUESTS = 64
_MAX_SIDE = 16384
#: Keys of one expand request besides the schema's arguments.
_REQUEST_KEYS = {"prompt": ("", "text to expand (WebUI prompt syntax)"),
                 "width": (1024, "image width the expansion is written for"),
                 "height": (1024, "image height the expansion is written for")}  # fmt: skip

#: ``expand(model, requests)``: the entry script runs it under the WebUI's queue lock.
ExpandFn = Callable[[str, Sequence[ExpandRequest]], Sequence[Expansion]]


def schema(title: str = "TIPO") -> dict[str, Any]:
    """Every argument with its positional index (the ``alwayson_scripts`` list order), type,
    default, bounds or choices, label, help and infotext key; and the expand route's own keys."""
    args = []
    for index, f in enumerate(fields()):
        info = spec(f.name)
        entry: dict[str, Any] = {
            "name": f.name, "index": index, "type": type(f.default).__name__, "default": f.default,
            "label": info.label, "help": info.help, "infotext": info.infotext, "webui_only": info.webui_only,
        }  # fmt: skip
        if info.choices is not None:
            entry["choices"] = list(info.choices)
        if info.minimum is not None:
            entry["minimum"] = info.minimum
        if info.maximum is not None:
            entry["maximum"] = info.maximum
        args.append(entry)
    request_keys = [{"name": k, "type": type(d).__name__, "default": d, "help": h} for k, (d, h) in _REQUEST_KEYS.items()]
    return {
        "title": title,
        "args": args,
        "models": [m.repo_id for m in MODELS if m.supported],
        "expand": {"path": EXPAND_PATH, "max_requests": MAX_REQUESTS, "request_keys": request_keys},
    }


@dataclass(frozen=True)
class _Problem:
    field: str
    message: str


class _BadBody(InvalidArgument):
    def __init__(self, problems: list[_Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


def _check_keys(values: Mapping[Any, Any], where: str, extra: Sequence[str]) -> list[_Problem]:
    allowed = [f.name for f in fields()] + list(extra)
    return [
        _Problem(f"{where}{key}", f"unknown key; allowed: {', '.join(allowed)}")
        for key in values if key not in allowed
    ]  # fmt: skip


def _field_problems(values: Mapping[str, Any], where: str) -> list[_Problem]:
    """Each argument checked alone, so every problem names its own field."""
    problems = []
    for key, value in values.items():
        if key in _REQUEST_KEYS:
            continue
        try:
            TipoArgs.from_dict({key: value})
        except InvalidArgument as error:
            problems.append(_Problem(f"{where}{key}", str(error).removeprefix("invalid TIPO arguments: ")))
    for key in ("width", "height"):
        value = values.get(key, _REQUEST_KEYS[key][0])
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_SIDE:
            problems.append(_Problem(f"{where}{key}", f"{value!r} (an integer in [1, {_MAX_SIDE}])"))
    if not isinstance(values.get("prompt", ""), str):
        problems.append(_Problem(f"{where}prompt", f"{values['prompt']!r} (expected a string)"))
    return problems


def parse_expand_body(
    body: Any, *, default_model: str, check_model: Callable[[str], str] = lambda name: name
) -> list[tuple[str, TipoArgs, ExpandRequest]]:
    """``(model to load, args, request)`` per request, in order; raises :class:`InvalidArgument`
    (with ``problems``) naming every bad field. Top-level keys besides ``requests`` are
    defaults for every request; ``check_model`` maps a model name to what may be loaded or
    refuses it (:func:`tipo.settings.model_location`)."""
    if not isinstance(body, Mapping):
        raise _BadBody([_Problem("body", f'expected a JSON object such as {{"requests": [{{"prompt": "1girl"}}]}}; got {type(body).__name__}')])
    items = body.get("requests")
    if not isinstance(items, list) or not items or len(items) > MAX_REQUESTS:
        raise _BadBody([_Problem("requests", f"expected a list of 1 to {MAX_REQUESTS} objects; got {items!r:.80}")])
    defaults = {k: v for k, v in body.items() if k != "requests"}
    problems = _check_keys(defaults, "", list(_REQUEST_KEYS)) or _field_problems(defaults, "")
    if "model" in defaults:
        try:
            defaults["model"] = check_model(defaults["model"])
        except TipoError as error:
            problems.append(_Problem("model", str(error)))
    if problems:
        raise _BadBody(problems)
    parsed: list[tuple[str, TipoArgs, ExpandRequest]] = []
    for index, item in enumerate(items):
        where = f"requests[{index}]."
        if not isinstance(item, Mapping):
            problems.append(_Problem(f"requests[{index}]", f'expected an object such as {{"prompt": "1girl"}}; got {item!r:.80}'))
            continue
        values = {"model": default_model, **defaults, **item}
        found = _check_keys(item, where, list(_REQUEST_KEYS)) or _field_problems(values, where)
        if found:
            problems += found
            continue
        try:
            model = check_model(values["model"]) if "model" in item or "model" not in defaults else values["model"]
        except TipoError as error:
            problems.append(_Problem(f"{where}model", str(error)))
            continue
        try:
            args = TipoArgs.from_dict({k: v for k, v in values.items() if k not in _REQUEST_KEYS})
            request = args.request(
                values.get("prompt", ""), width=int(values.get("width", 1024)), height=int(values.get("height", 1024)),
                seed=resolve_seed(args.seed),
            )  # fmt: skip
        except InvalidArgument as error:
            problems.append(_Problem(f"requests[{index}]", str(error)))
            continue
        parsed.append((model, args, request))
    if problems:
        raise _BadBody(problems)
    return parsed


def handle_expand(
    body: Any, expand: ExpandFn, *, default_model: str, check_model: Callable[[str], str] = lambda name: name
) -> tuple[int, dict[str, Any]]:
    """The expand route: 422 naming the bad fields, else 200 with one result per request in
    order (``prompt``, ``original``, ``seed`` used, ``error`` or null). Requests are expanded in
    one batched call per model; a failure is reported per request, never as an unchanged
    prompt without a reason."""
    try:
        parsed = parse_expand_body(body, default_model=default_model, check_model=check_model)
    except InvalidArgument as error:
        problems = getattr(error, "problems", [_Problem("body", str(error))])
        return 422, {"detail": str(error), "errors": [{"field": p.field, "message": p.message} for p in problems]}
    groups: dict[str, list[int]] = defaultdict(list)
    for index, (model, _, _) in enumerate(parsed):
        groups[model].append(index)
    results: list[dict[str, Any]] = [{} for _ in parsed]
    for model, indices in groups.items():
        requests = [parsed[i][2] for i in indices]
        try:
            expansions: Sequence[Expansion | None] = expand(model, requests)
            reasons = [None if e.ok else e.error for e in expansions]  # type: ignore[union-attr]
        except Exception as failure:  # the route's broad guard: each request says why (style sheet, 5)
            reason = str(failure) if isinstance(failure, TipoError) else f"{type(failure).__name__}: {failure}"
            expansions, reasons = [None] * len(requests), [reason] * len(requests)
        for index, request, expansion, reason_ in zip(indices, requests, expansions, reasons):
            results[index] = {
                "prompt": request.prompt if expansion is None else expansion.prompt, "original": request.prompt,
                "seed": request.seed if expansion is None else expansion.seed, "model": model, "error": reason_,
            }  # fmt: skip
    return 200, {"results": results, "failed": sum(r["error"] is not None for r in results)}


def authorized(header: str | None, credentials: str | None) -> bool:
    """HTTP basic auth against the WebUI's ``--api-auth user:password[,user2:password2]``, which
    the WebUI applies to its own API routes only; no credentials configured means open."""
    if not credentials:
        return True
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    known = dict(pair.split(":", 1) for pair in credentials.split(",") if ":" in pair)
    expected = known.get(user)
    return expected is not None and secrets.compare_digest(password.encode(), expected.encode())
