"""HTTP 422 for bad TIPO args in ``/sdapi/v1/txt2img`` and ``img2img`` requests.

The WebUIs catch every exception a script hook raises and log it, so an invalid TIPO argument
found in ``process()`` ends as HTTP 200 with no images and no error text (measured on A1111
1.10.1 and Forge). :class:`ArgsGuard` checks TIPO's entry of ``alwayson_scripts`` before the
WebUI sees the request and answers 422 naming the field; other requests pass untouched. A plain
ASGI middleware: no FastAPI/Starlette import, the same on both WebUIs' versions.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from tipo.errors import TipoError

__all__ = ["ArgsGuard", "GENERATION_PATHS", "problem_of", "install"]

GENERATION_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


def problem_of(body: bytes, check: Callable[[Any], None]) -> dict[str, str] | None:
    """The 422 body for a request body whose TIPO args ``check`` refuses, else None.

    Bodies that are not JSON or name no ``alwayson_scripts`` are the WebUI's business."""
    if b"alwayson_scripts" not in body:
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    try:
        check(payload)
    except TipoError as error:
        return {"error": type(error).__name__, "detail": f"TIPO: {error}"}
    return None


class ArgsGuard:
    """ASGI middleware: reads a generation request's body, refuses bad TIPO args with 422, or
    hands the very same body on to the WebUI."""

    def __init__(self, app: App, check: Callable[[Any], None], paths: tuple[str, ...] = GENERATION_PATHS) -> None:
        self.app = app
        self.check = check
        self.paths = paths

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message.get("type") != "http.request":
                break  # a disconnect: pass it on as it came
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        problem = problem_of(bytes(body), self.check)
        if problem is not None:
            content = json.dumps(problem).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
            await send({"type": "http.response.start", "status": 422, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        pending = iter(messages)

        async def replay() -> Message:
            for message in pending:
                return message
            return await receive()

        await self.app(scope, replay, send)


def install(app: Any, check: Callable[[Any], None]) -> bool:
    """Put :class:`ArgsGuard` in front of a started Starlette/FastAPI ``app``; False if this
    Starlette refuses (the generation then still reports bad args in the console)."""
    try:
        app.middleware_stack = None  # Starlette builds the stack once; rebuild it with ours
        app.add_middleware(ArgsGuard, check=check)
        app.middleware_stack = app.build_middleware_stack()
    except (AttributeError, RuntimeError, TypeError):
        return False
    return True
