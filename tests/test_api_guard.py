"""Bad TIPO args in a txt2img/img2img API request are HTTP 422 naming the field, before the
WebUI runs anything (the WebUIs swallow exceptions from script hooks: HTTP 200, no images)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tipo.api_guard import ArgsGuard, problem_of
from tipo.extension import TITLE, check_api_payload


class Downstream:
    """Stands for the WebUI's app: records what reached it and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def call(guard: ArgsGuard, body: bytes, path: str = "/sdapi/v1/txt2img", chunks: int = 1) -> tuple[int, bytes]:
    size = max(1, -(-len(body) // chunks))
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    incoming = [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard({"type": "http", "method": "POST", "path": path}, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def body(args: Any, title: str = TITLE) -> bytes:
    return json.dumps({"prompt": "1girl", "alwayson_scripts": {title: {"args": args}}}).encode()


def test_bad_args_are_422_naming_the_field_and_never_reach_the_webui():
    app = Downstream()
    guard = ArgsGuard(app, check_api_payload)
    status, answer = call(guard, body([{"enabled": True, "tag_length": "huge"}], title=TITLE.upper()))
    assert status == 422 and "tag_length='huge'" in json.loads(answer)["detail"]
    status, answer = call(guard, body({"enabled": True}))  # the dict without its list: KeyError 0 in the WebUI
    assert status == 422 and '"args": [{"enabled": true}]' in json.loads(answer)["detail"]
    status, answer = call(guard, body([True, "no-such-mode"]))
    assert status == 422 and "mode" in json.loads(answer)["detail"]
    assert app.bodies == []


def test_good_and_foreign_requests_reach_the_webui_byte_for_byte():
    app = Downstream()
    guard = ArgsGuard(app, check_api_payload)
    good = body([{"enabled": True, "seed": 42, "tag_length": "long"}]) + b" " * 100_000
    assert call(guard, good, chunks=7)[0] == 200
    other = json.dumps({"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": [{"x": 1}]}}}).encode()
    assert call(guard, other)[0] == 200
    assert call(guard, b"not json, alwayson_scripts")[0] == 200  # the WebUI answers that itself
    assert call(guard, body([{"tag_length": "huge"}]), path="/sdapi/v1/options")[0] == 200
    assert app.bodies == [good, other, b"not json, alwayson_scripts", body([{"tag_length": "huge"}])]


def test_problem_of_skips_bodies_without_script_args():
    assert problem_of(b'{"prompt": "1girl"}', check_api_payload) is None
    assert problem_of(body([{"enabled": True}]), check_api_payload) is None
