"""The HTTP routes: ``GET /tipo/v1/schema`` and ``POST /tipo/v1/expand`` as plain functions
(tipo/routes.py) with the tiny real model, and their FastAPI wiring in the entry script where
FastAPI is installed (the WebUIs have it; CI does not)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Sequence

import pytest
from test_extension import fresh_state, webui  # noqa: F401  (fixtures: the entry script over fake modules)

from tipo import extension, routes
from tipo.api import Expander
from tipo.args import fields, spec
from tipo.models.registry import DEFAULT_MODEL
from tipo.request import ExpandRequest
from tipo.settings import model_location

FAST = {"tag_length": "very_short", "nl_length": "very_short", "max_new_tokens": 8}


@pytest.fixture(scope="module")
def expand(tiny_model_dir: Path) -> Any:
    """``expand(model, requests)`` as the script gives it, with one tiny-model expander, recording calls."""
    expander = Expander(tiny_model_dir, device="cpu")
    calls: list[tuple[str, int]] = []

    def run(model: str, requests: Sequence[ExpandRequest]) -> Any:
        calls.append((model, len(requests)))
        if model != str(tiny_model_dir):
            return Expander(model, device="cpu").expand(requests)
        return expander.expand(requests)

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_schema_lists_every_arg_in_positional_order_with_its_bounds():
    published = routes.schema()
    assert json.loads(json.dumps(published)) == published, "plain JSON"
    args = published["args"]
    assert [a["name"] for a in args] == [f.name for f in fields()] and [a["index"] for a in args] == list(range(len(args)))
    assert [a["default"] for a in args] == extension.default_values()
    by_name = {a["name"]: a for a in args}
    assert by_name["temperature"]["minimum"] == spec("temperature").minimum and by_name["temperature"]["type"] == "float"
    assert by_name["mode"]["choices"] == list(spec("mode").choices) and by_name["seed"]["infotext"] == "TIPO seed"
    assert by_name["timing"]["webui_only"] and all(a["label"] and a["help"] for a in args)
    assert DEFAULT_MODEL in published["models"] and published["expand"]["max_requests"] == routes.MAX_REQUESTS
    assert [k["name"] for k in published["expand"]["request_keys"]] == ["prompt", "width", "height"]


@pytest.mark.parametrize(
    ("body", "fields_named", "words"),
    [
        ([], ["body"], ["JSON object"]),
        ({}, ["requests"], ["list of 1 to"]),
        ({"requests": []}, ["requests"], []),
        ({"requests": [{}] * (routes.MAX_REQUESTS + 1)}, ["requests"], []),
        ({"requests": ["1girl"]}, ["requests[0]"], ["expected an object"]),
        ({"requests": [{"prompt": "a"}, {"prompt": "b", "seed": "abc", "top_p": 2}]},
         ["requests[1].seed", "requests[1].top_p"], ["seed='abc'", "maximum 1"]),
        ({"requests": [{"prompt": "a", "sed": 1}]}, ["requests[0].sed"], ["unknown key", "seed"]),
        ({"requests": [{"prompt": 3}]}, ["requests[0].prompt"], ["expected a string"]),
        ({"requests": [{"width": 0, "height": "x"}]}, ["requests[0].width", "requests[0].height"], ["an integer in"]),
        ({"requests": [{"mode": "custom"}]}, ["requests[0]"], ["template is empty"]),
        ({"requests": [{"prompt": "a"}], "seed": -5}, ["seed"], ["minimum -1"]),
        ({"requests": [{"prompt": "a"}], "bogus": 1}, ["bogus"], ["unknown key"]),
    ],
)
def test_bad_bodies_are_422_naming_each_field(body, fields_named, words, expand):
    before = len(expand.calls)
    status, answer = routes.handle_expand(body, expand, default_model=DEFAULT_MODEL)
    assert status == 422 and [e["field"] for e in answer["errors"]] == fields_named
    for word in words:
        assert word in answer["detail"]
    assert len(expand.calls) == before, "nothing is expanded when any request is invalid"


def test_model_names_outside_the_models_folder_are_refused(tmp_path, expand):
    models = tmp_path / "models" / "TIPO"
    (models / "mine").mkdir(parents=True)
    def check(name: str) -> str:
        return model_location(name, models, inside_only=True)

    for name in ("/etc", "../TIPO/../x", str(tmp_path), "nope", "mine/../../TIPO"):
        status, answer = routes.handle_expand({"requests": [{"model": name}]}, expand, default_model=DEFAULT_MODEL, check_model=check)
        assert status == 422 and answer["errors"][0]["field"] == "requests[0].model", name
        assert "models folder" in answer["errors"][0]["message"]
    assert check("mine") == str(models / "mine"), "an entry of the folder, by name"
    status, answer = routes.handle_expand({"model": str(models / "mine"), "requests": [{}]}, expand,
                                          default_model=DEFAULT_MODEL, check_model=check)  # fmt: skip
    assert status == 422 and answer["errors"][0]["field"] == "model", "a path, even into the folder, is refused"
    assert check("kblueleaf/tipo-200m-ft2") == "KBlueLeaf/TIPO-200M-ft2", "registry ids pass, spelled as the registry does"


def test_expand_returns_one_result_per_request_with_the_seed_used(tiny_model_dir, expand):
    body = {"model": str(tiny_model_dir), **FAST, "requests": [
        {"prompt": "1girl, solo", "seed": 0}, {"prompt": "1girl, solo", "seed": 0, "width": 640, "height": 1536},
        {"prompt": "scenery", "seed": -1}, {"prompt": "1girl, solo", "seed": 0},
    ]}  # fmt: skip
    status, answer = routes.handle_expand(body, expand, default_model=DEFAULT_MODEL)
    assert status == 200 and answer["failed"] == 0 and expand.calls[-1] == (str(tiny_model_dir), 4), "one batched call"
    results = answer["results"]
    assert [r["original"] for r in results] == ["1girl, solo", "1girl, solo", "scenery", "1girl, solo"]
    assert all(r["error"] is None and r["prompt"] != r["original"] for r in results)
    assert results[0] == results[3] and results[0]["seed"] == 0 and results[2]["seed"] >= 0
    assert results[1]["prompt"] != results[0]["prompt"], "the image size is part of the model input"
    one = routes.handle_expand({**body, "requests": [{"prompt": "1girl, solo", "seed": 0}]}, expand, default_model=DEFAULT_MODEL)
    assert one[1]["results"][0]["prompt"] == results[0]["prompt"], "a result does not depend on its batch"


def test_a_model_that_fails_gives_each_of_its_requests_the_reason(tiny_model_dir, tmp_path, expand):
    body = {**FAST, "requests": [{"prompt": "1girl", "model": str(tmp_path / "gone"), "seed": 1},
                                 {"prompt": "1girl", "model": str(tiny_model_dir), "seed": 1}]}  # fmt: skip
    status, answer = routes.handle_expand(body, expand, default_model=DEFAULT_MODEL)
    assert status == 200 and answer["failed"] == 1
    gone, fine = answer["results"]
    assert gone["prompt"] == gone["original"] == "1girl" and "no model folder" in gone["error"]
    assert fine["error"] is None and fine["prompt"] != "1girl"


def test_basic_auth_follows_the_webui_api_auth_setting():
    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert routes.authorized(None, None) and routes.authorized("junk", "")
    assert routes.authorized(header("a", "p:q"), "x:y,a:p:q")
    for wrong in (None, "Bearer t", "Basic !!!", header("a", "p"), header("x", "p:q")):
        assert not routes.authorized(wrong, "x:y,a:p:q"), wrong


# -- the FastAPI wiring (skipped without FastAPI: CI; checked with A1111's 0.94 and Forge's 0.112) --


def test_routes_are_added_to_the_webui_app(webui):
    fastapi = pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    app = fastapi.FastAPI()
    for callback in webui.callbacks["app_started"]:
        callback(None, app)
    client = TestClient(app)
    assert client.get(routes.SCHEMA_PATH).json() == json.loads(json.dumps(routes.schema()))
    bad = client.post(routes.EXPAND_PATH, json={"requests": [{"seed": "x"}]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "requests[0].seed"
    not_json = client.post(routes.EXPAND_PATH, content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["errors"][0]["field"] == "body"
    outside = client.post(routes.EXPAND_PATH, json={"requests": [{"model": "/etc"}]})
    assert outside.status_code == 422 and outside.json()["errors"][0]["field"] == "requests[0].model"
    webui.shared.cmd_opts.api_auth = "u:p"
    try:
        assert client.post(routes.EXPAND_PATH, json={"requests": [{}]}).status_code == 401
        assert client.post(routes.EXPAND_PATH, json={"requests": [{"seed": "x"}]}, auth=("u", "p")).status_code == 422
    finally:
        webui.shared.cmd_opts.api_auth = None
