"""Bad TIPO args in a txt2img/img2img API request are HTTP 422 naming the field, before the
WebUI runs anything; a TIPO failure that stops the generation (strict mode) is an HTTP error
naming the reason (the WebUIs swallow exceptions from script hooks: HTTP 200, no images)."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
from test_extension import FakeState, P, fresh_state, values, webui  # noqa: F401  (fixtures: the entry script over a fake WebUI)

from tipo.api_guard import ArgsGuard, FailureRelay, failure_answer, problem_of
from tipo.errors import GenerationError, InvalidArgument, TipoError
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


# -- a TIPO failure that stopped the generation (strict mode) becomes the HTTP answer ---------


class Generation:
    """Stands for the WebUI's txt2img endpoint: FastAPI runs it in a worker thread (in a copy of
    the request's context); the script's hook fails inside it, the WebUI's ``ScriptRunner``
    swallows the exception, and the endpoint answers 200 with no images."""

    def __init__(self, relay: FailureRelay, hook: Callable[[], None]) -> None:
        self.relay, self.hook = relay, hook

    def run(self) -> None:
        try:
            self.hook()
        except TipoError:  # what A1111/Forge ScriptRunner.process does: errors.report(...)
            pass

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await asyncio.to_thread(self.run)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"images": [], "info": "{}"}'})


def strict_failure() -> None:
    raise GenerationError("TIPO failed and strict mode is on: ModelNotFoundError: 'no-such-model' ...\nversions: python 3.11")


def test_a_strict_failure_during_the_generation_is_an_http_500_naming_the_reason():
    relay = FailureRelay()

    def hook() -> None:
        try:
            strict_failure()
        except TipoError as error:  # the script's _refuse(): record, then raise to the WebUI
            assert relay.record(error)
            raise

    status, answer = call(ArgsGuard(Generation(relay, hook), check_api_payload, relay=relay), body([{"strict": True}]))
    payload = json.loads(answer)
    assert status == 500 and payload["error"] == "GenerationError"
    assert payload["detail"].startswith("TIPO failed and strict mode is on: ModelNotFoundError: 'no-such-model'")
    assert "images" not in payload


def test_an_argument_refused_during_the_generation_is_422():
    relay = FailureRelay()
    app = Generation(relay, lambda: relay.record(InvalidArgument("ban_tags: bad pattern '/(/'")))
    status, answer = call(ArgsGuard(app, check_api_payload, relay=relay), body([True]))
    assert status == 422 and json.loads(answer) == {"error": "InvalidArgument", "detail": "TIPO: ban_tags: bad pattern '/(/'"}


def test_without_a_failure_the_webui_answer_passes_unchanged():
    relay = FailureRelay()
    status, answer = call(ArgsGuard(Generation(relay, lambda: None), check_api_payload, relay=relay), body([True]))
    assert (status, answer) == (200, b'{"images": [], "info": "{}"}')


def test_a_failure_outside_a_guarded_request_is_nobodys_answer():
    """A generation started from the UI (no API request) records nothing; another path's
    request, a GET, and a later request of the same guard see no earlier failure."""
    relay = FailureRelay()
    assert relay.record(GenerationError("x")) is False
    failing = Generation(relay, lambda: relay.record(GenerationError("strict")))
    guard = ArgsGuard(failing, check_api_payload, relay=relay)
    assert call(guard, body([True]), path="/sdapi/v1/options")[0] == 200
    assert call(guard, body([True]))[0] == 500
    quiet = ArgsGuard(Generation(relay, lambda: None), check_api_payload, relay=relay)
    assert call(quiet, body([True]))[0] == 200
    assert relay.record(GenerationError("x")) is False


def test_concurrent_requests_get_only_their_own_failure():
    """Sixteen requests in flight at once, every other one failing in its worker thread: each
    answer is its own (the relay keeps one outcome per request context, nothing shared)."""
    relay = FailureRelay()
    started = threading.Barrier(16, timeout=10)

    def hook_for(index: int) -> Callable[[], None]:
        def hook() -> None:
            started.wait()  # all sixteen generations run at the same time
            if index % 2:
                relay.record(GenerationError(f"strict failure of request {index}"))

        return hook

    async def one(index: int) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []
        incoming = [{"type": "http.request", "body": body([{"seed": index}]), "more_body": False}]

        async def receive() -> dict[str, Any]:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        guard = ArgsGuard(Generation(relay, hook_for(index)), check_api_payload, relay=relay)
        await guard({"type": "http", "method": "POST", "path": "/sdapi/v1/img2img"}, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    async def main() -> list[tuple[int, bytes]]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(16))  # anyio's pool has 40
        return await asyncio.gather(*(one(i) for i in range(16)))

    answers = asyncio.run(main())
    for index, (status, answer) in enumerate(answers):
        if index % 2:
            assert status == 500 and json.loads(answer)["detail"] == f"TIPO: strict failure of request {index}"
        else:
            assert (status, answer) == (200, b'{"images": [], "info": "{}"}')


def test_the_entry_script_hands_strict_failures_to_its_relay_and_not_the_others(webui, tmp_path):
    """The real entry script over the fake WebUI: a strict failure in ``process()`` is recorded
    for the API request running it (what the guard installed by ``on_app_started`` answers
    with); a non-strict failure keeps the prompt, records nothing, and the answer stays 200."""
    relay = webui.module.API_FAILURES
    with relay.request() as outcome:
        p = P("1girl").setup_prompts()
        with pytest.raises(GenerationError):
            webui.script.process(p, *values(tmp_path / "no-model", strict=True))
    assert isinstance(outcome.error, GenerationError) and "no-model" in str(outcome.error)
    assert failure_answer(outcome.error)[0] == 500
    webui.shared.state = FakeState()
    with relay.request() as outcome:
        p = P("1girl").setup_prompts()
        webui.script.process(p, *values(tmp_path / "no-model"))
    assert outcome.error is None and p.all_prompts == ["1girl"] and "TIPO error" in p.extra_generation_params
    with relay.request() as outcome, pytest.raises(InvalidArgument):
        webui.script.process(P("1girl").setup_prompts(), {"seed": "abc"})
    assert isinstance(outcome.error, InvalidArgument) and failure_answer(outcome.error)[0] == 422


def test_the_guard_answers_a_strict_failure_in_a_fastapi_app(webui, tmp_path):
    """``on_app_started`` installs the guard with the script's relay; a sync endpoint (run by
    FastAPI in a worker thread, as the WebUIs' txt2img is) whose hook fails in strict mode is
    answered 500. Skipped without FastAPI (CI); the WebUIs' own apps: tests/webui."""
    fastapi = pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    app = fastapi.FastAPI()

    def txt2img(payload: dict[str, Any]) -> dict[str, Any]:
        webui.shared.state = FakeState()
        p = P(payload["prompt"]).setup_prompts()
        try:
            webui.script.process(p, *payload["alwayson_scripts"]["TIPO"]["args"])
        except Exception:
            pass  # ScriptRunner.process
        return {"images": [], "all_prompts": p.all_prompts}

    app.add_api_route("/sdapi/v1/txt2img", txt2img, methods=["POST"])
    for callback in webui.callbacks["app_started"]:
        callback(None, app)
    client = TestClient(app)
    strict = client.post("/sdapi/v1/txt2img", json={"prompt": "1girl", "alwayson_scripts": {"TIPO": {"args": values(tmp_path / "gone", strict=True)}}})
    assert strict.status_code == 500 and "gone" in strict.json()["detail"], strict.text
    lenient = client.post("/sdapi/v1/txt2img", json={"prompt": "1girl", "alwayson_scripts": {"TIPO": {"args": values(tmp_path / "gone")}}})
    assert lenient.status_code == 200 and lenient.json()["all_prompts"] == ["1girl"]
