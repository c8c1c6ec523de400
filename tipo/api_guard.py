"""HTTP errors for TIPO problems in ``/sdapi/v1/txt2img`` and ``img2img`` requests.

The WebUIs catch every exception a script hook raises and log it (A1111 1.10.1 and Forge
``modules/scripts.py``, ``ScriptRunner.before_process``/``process``: ``except Exception:
errors.report(...)``), so the API endpoint returns HTTP 200 with ``images: []`` and no error
text. Two things are answered here instead, by a plain ASGI middleware (no FastAPI/Starlette
import, the same on both WebUIs' versions):

- bad TIPO args: :class:`ArgsGuard` checks TIPO's entry of ``alwayson_scripts`` before the
  WebUI sees the request and answers 422 naming the field;
- a TIPO failure that stopped the generation (strict mode, or args only the generation could
  check): the script hands the error to a :class:`FailureRelay`, and the guard answers the
  request that ran the generation with 500 (422 for an argument error) naming the reason, in
  place of the WebUI's HTTP 200.

Other requests pass untouched.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Awaitable, Callable, Iterator

from tipo.errors import InvalidArgument, TipoError

__all__ = ["GENERATION_PATHS", "ArgsGuard", "FailureRelay", "Outcome", "failure_answer", "install", "problem_of"]

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
        return _error_body(error)
    return None


def failure_answer(error: BaseException) -> tuple[int, dict[str, str]]:
    """(HTTP status, JSON body) for a TIPO failure that stopped a generation: 422 when an
    argument was refused, else 500 (the WebUI's own status for a failed generation)."""
    return (422 if isinstance(error, InvalidArgument) else 500), _error_body(error)


def _error_body(error: BaseException) -> dict[str, str]:
    text = str(error)
    return {"error": type(error).__name__, "detail": text if text.startswith("TIPO") else f"TIPO: {text}"}


class Outcome:
    """What became of one guarded request's generation, as far as TIPO is concerned."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        """Record the failure that stopped the generation (the first one wins: later hooks see
        an interrupted generation)."""
        if self.error is None:
            self.error = error


class FailureRelay:
    """Carries a TIPO failure from the script's hooks to the HTTP answer of the request whose
    generation they ran.

    Each guarded request opens its own :class:`Outcome` in a context variable owned by this
    relay. The WebUIs' txt2img/img2img endpoints are plain functions that FastAPI runs in a
    worker thread through anyio, which runs them in a copy of the request's context; so the
    hooks see their own request's outcome, concurrent requests never see each other's, and a
    generation started from the UI (no guarded request) sees none: :meth:`record` is then a
    no-op. Nothing is shared between requests, so nothing needs a lock or a cleanup."""

    def __init__(self) -> None:
        self._current: ContextVar[Outcome | None] = ContextVar(f"tipo_api_outcome_{id(self):x}", default=None)

    @contextmanager
    def request(self) -> Iterator[Outcome]:
        """The outcome of the request being served: what runs inside (in this context or a copy
        of it) records into it."""
        outcome = Outcome()
        token = self._current.set(outcome)
        try:
            yield outcome
        finally:
            self._current.reset(token)

    def record(self, error: BaseException) -> bool:
        """Hand ``error`` to the request being served; False when there is none (a UI generation)."""
        outcome = self._current.get()
        if outcome is None:
            return False
        outcome.fail(error)
        return True


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    content = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _answering(outcome: Outcome, send: Send) -> Send:
    """``send`` that replaces the WebUI's answer with the recorded failure, if there is one
    when the answer starts (the WebUI answers only once the generation has ended)."""
    replaced = False

    async def answer(message: Message) -> None:
        nonlocal replaced
        if message.get("type") == "http.response.start" and outcome.error is not None:
            replaced = True
            await _send_json(send, *failure_answer(outcome.error))
        elif not replaced:
            await send(message)

    return answer


class ArgsGuard:
    """ASGI middleware: reads a generation request's body, refuses bad TIPO args with 422, or
    hands the very same body on to the WebUI; with a ``relay``, a TIPO failure recorded while
    the WebUI ran the request becomes the answer (see :func:`failure_answer`)."""

    def __init__(
        self, app: App, check: Callable[[Any], None], paths: tuple[str, ...] = GENERATION_PATHS, relay: FailureRelay | None = None
    ) -> None:
        self.app = app
        self.check = check
        self.paths = paths
        self.relay = relay

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
            await _send_json(send, 422, problem)
            return
        pending = iter(messages)

        async def replay() -> Message:
            for message in pending:
                return message
            return await receive()

        if self.relay is None:
            await self.app(scope, replay, send)
            return
        with self.relay.request() as outcome:
            await self.app(scope, replay, _answering(outcome, send))


def install(app: Any, check: Callable[[Any], None], relay: FailureRelay | None = None) -> bool:
    """Put :class:`ArgsGuard` in front of a started Starlette/FastAPI ``app``; False if this
    Starlette refuses (the generation then still reports bad args in the console)."""
    try:
        app.middleware_stack = None  # Starlette builds the stack once; rebuild it with ours
        app.add_middleware(ArgsGuard, check=check, relay=relay)
        app.middleware_stack = app.build_middleware_stack()
    except (AttributeError, RuntimeError, TypeError):
        return False
    return True
