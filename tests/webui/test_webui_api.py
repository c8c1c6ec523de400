"""The extension inside a real, running AUTOMATIC1111 1.10 or Forge, driven through its HTTP API.

Skipped unless ``WEBUI_URL`` names a WebUI started with ``--api`` and this extension installed;
``TIPO_WEBUI_MODEL`` names the TIPO model it should use (a folder name inside the WebUI's
``models/TIPO``, e.g. one made by ``tools/make_tiny_model.py``). How to set one up offline on
the CPU: ``tests/webui/README.md``. Only the standard library is used, so the test runs from any
Python with pytest. Every generation is 64x64, one step; the TIPO settings are the shortest
targets, so a tiny random-weight model answers in seconds.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

WEBUI_URL = os.environ.get("WEBUI_URL", "").rstrip("/")
MODEL = os.environ.get("TIPO_WEBUI_MODEL", "")
TIMEOUT_S = float(os.environ.get("TIPO_WEBUI_TIMEOUT", "900"))

pytestmark = [
    pytest.mark.skipif(not WEBUI_URL, reason="set WEBUI_URL to a running WebUI (see tests/webui/README.md)"),
    pytest.mark.skipif(bool(WEBUI_URL) and not MODEL, reason="set TIPO_WEBUI_MODEL to a TIPO model folder name in models/TIPO"),
]

TITLE = "TIPO"
PROMPT = "1girl, solo, scenery"
#: The shortest targets: a random-weight model never reaches long ones and retries until its bound.
FAST = {"tag_length": "very_short", "nl_length": "very_short", "max_new_tokens": 16}
#: The documented positional order of the args (README.md, WebUI extension), used when /tipo/v1/schema is absent.
DOCUMENTED_ORDER = (
    "enabled", "mode", "template", "tag_length", "nl_length", "ban_tags", "ban_nl", "nl_prompt", "seed", "model",
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "strict", "timing", "presampling",
)  # fmt: skip
#: A1111 1.10's infotext parameter syntax (modules/infotext_utils.py, re_param_code).
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """``(HTTP status, decoded JSON or text)``; HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(WEBUI_URL + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def txt2img(extra: dict[str, Any], tipo_args: list[Any] | None = None) -> tuple[int, Any]:
    body = {"prompt": PROMPT, "negative_prompt": "lowres", "width": 64, "height": 64, "steps": 1,
            "sampler_name": "Euler", "seed": 100, **extra}  # fmt: skip
    if tipo_args is not None:
        body["alwayson_scripts"] = {TITLE: {"args": tipo_args}}
    return call("POST", "/sdapi/v1/txt2img", body)


def info_of(response: Any) -> dict[str, Any]:
    assert isinstance(response, dict) and "info" in response, f"not a txt2img answer: {str(response)[:2000]}"
    return json.loads(response["info"])


def infotext_params(infotext: str) -> dict[str, str]:
    """The ``key: value`` pairs of an infotext's last line, quoted values unquoted (as the WebUI reads them)."""
    params = {}
    for key, value in _PARAM.findall(infotext.strip().split("\n")[-1]):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        params[key.strip()] = value
    return params


def infotext_prompt(infotext: str) -> str:
    """The prompt part of an infotext: everything before the negative prompt or the parameter line."""
    lines = infotext.strip().split("\n")
    end = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt:")), len(lines) - 1)
    return "\n".join(lines[:end])


def tipo_ran(info: dict[str, Any], index: int) -> dict[str, str]:
    """Image ``index``'s infotext parameters, after checking TIPO expanded its prompt without error."""
    params = infotext_params(info["infotexts"][index])
    assert "TIPO error" not in params, f"TIPO failed: {params['TIPO error']}"
    assert params.get("TIPO original prompt") == PROMPT, info["infotexts"][index]
    assert info["all_prompts"][index] != PROMPT
    return params


@pytest.fixture(scope="module")
def server() -> dict[str, Any]:
    """The WebUI's options (it must answer); ``forge`` tells Forge (its own options) from A1111."""
    status, options = call("GET", "/sdapi/v1/options")
    assert status == 200, f"{WEBUI_URL} does not answer /sdapi/v1/options ({status}): is it started with --api?"
    return {"forge": any(key.startswith("forge_") for key in options)}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any] | None:
    """``GET /tipo/v1/schema``, or None where this build of the extension has no such route."""
    status, body = call("GET", "/tipo/v1/schema")
    if status == 404:
        return None
    assert status == 200, (status, body)
    return body


@pytest.fixture(scope="module")
def batch(server: dict[str, Any]) -> dict[str, Any]:
    """batch_size 2 x n_iter 2 with the named (dict) args: four images, seeds 100..103."""
    status, response = txt2img({"batch_size": 2, "n_iter": 2}, [{"enabled": True, "model": MODEL, "seed": 42, **FAST}])
    assert status == 200, response
    info = info_of(response)
    print("\nbatch 2 x n_iter 2, all_prompts:", json.dumps(info["all_prompts"], ensure_ascii=False)[:1500])
    return info


def arg_names(schema: dict[str, Any] | None) -> list[str]:
    return [a["name"] for a in sorted(schema["args"], key=lambda a: a["index"])] if schema else list(DOCUMENTED_ORDER)


def test_batch_gives_four_different_expansions(batch: dict[str, Any]) -> None:
    prompts = batch["all_prompts"]
    assert len(prompts) == 4 and len(batch["infotexts"]) == 4
    assert len(set(prompts)) == 4, prompts
    for index, prompt in enumerate(prompts):
        tipo_ran(batch, index)
        for tag in PROMPT.split(", "):
            assert tag in prompt, f"the typed tag {tag!r} is missing from {prompt!r}"


def test_infotext_holds_original_prompt_settings_and_seeds(batch: dict[str, Any]) -> None:
    assert batch["all_seeds"] == [100, 101, 102, 103]
    for index in range(4):
        params = tipo_ran(batch, index)
        print(f"\ninfotext {index}: {batch['infotexts'][index][-900:]}")
        assert infotext_prompt(batch["infotexts"][index]) == batch["all_prompts"][index]
        assert params["Seed"] == str(batch["all_seeds"][index])
        assert params.get("TIPO seed") == "42"
        assert params.get("TIPO model") == MODEL
        assert params.get("TIPO tag length") == "very_short"
        assert params.get("TIPO NL length") == "very_short"
        assert params.get("TIPO max new tokens") == "16"
        assert params.get("TIPO mode") == "both_tag_first"


def test_same_seeds_give_the_same_expansion(batch: dict[str, Any]) -> None:
    """An image made again alone with its own seed and the same TIPO seed gets the same expansion."""
    status, response = txt2img({"seed": 101}, [{"enabled": True, "model": MODEL, "seed": 42, **FAST}])
    assert status == 200, response
    assert info_of(response)["all_prompts"] == [batch["all_prompts"][1]]


def test_positional_args(schema: dict[str, Any] | None) -> None:
    """The positional list in ui() order, defaults from script-info for the slots not set."""
    status, scripts = call("GET", "/sdapi/v1/script-info")
    assert status == 200
    entry = next(s for s in scripts if s["name"].lower() == TITLE.lower() and not s["is_img2img"])
    values = [arg["value"] for arg in entry["args"]]
    names = arg_names(schema)
    chosen = {"enabled": True, "model": MODEL, "seed": 7, **FAST}
    for name, value in chosen.items():
        values[names.index(name)] = value
    status, response = txt2img({}, values)
    assert status == 200, response
    info = info_of(response)
    params = tipo_ran(info, 0)
    assert params.get("TIPO seed") == "7"


def test_hires_uses_the_expanded_prompt(server: dict[str, Any]) -> None:
    """Without a separate hires prompt the hires pass gets the expansion itself: the WebUI writes
    ``Hires prompt`` into the infotext only when it differs from the prompt."""
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 1, "denoising_strength": 0.5}
    if server["forge"]:
        hires["hr_additional_modules"] = ["Use same choices"]  # Forge f2.0.1 fails every hires request without it
    status, response = txt2img(hires, [{"enabled": True, "model": MODEL, "seed": 42, **FAST}])
    assert status == 200, response
    info = info_of(response)
    params = tipo_ran(info, 0)
    print("\nhires infotext:", info["infotexts"][0][-600:])
    assert "Hires upscale" in params, "the hires pass did not run"
    assert "Hires prompt" not in params, f"the hires pass used another prompt: {params['Hires prompt']!r}"


def test_typed_hires_prompt_is_expanded_too(server: dict[str, Any]) -> None:
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 1,
             "denoising_strength": 0.5, "hr_prompt": "1girl, night"}  # fmt: skip
    if server["forge"]:
        hires["hr_additional_modules"] = ["Use same choices"]
    status, response = txt2img(hires, [{"enabled": True, "model": MODEL, "seed": 42, **FAST}])
    assert status == 200, response
    params = tipo_ran(info_of(response), 0)
    hr_prompt = params.get("Hires prompt", "")
    print("\ntyped hires prompt became:", hr_prompt[:300])
    assert hr_prompt != "1girl, night" and "1girl" in hr_prompt and "night" in hr_prompt


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ([{"enabled": True, "tag_length": "huge"}], "tag_length"),
        ([{"enabled": True, "bogus": 1}], "bogus"),
        ([{"enabled": True, "temperature": "hot"}], "temperature"),
    ],
    ids=["bad-choice", "unknown-key", "wrong-type"],
)
def test_bad_args_are_an_http_error_naming_the_field(args: list[Any], field: str) -> None:
    """Issue 5: invalid args give an HTTP error that names the field, never a half-applied generation."""
    status, response = txt2img({}, [{**args[0], "model": MODEL}])
    body = json.dumps(response, ensure_ascii=False) if not isinstance(response, str) else response
    images = len(response.get("images") or []) if isinstance(response, dict) else 0
    print(f"\nbad args {args}: HTTP {status}, {images} image(s), body {body[:600]}")
    assert status >= 400, f"HTTP {status} with {images} image(s); the error is not in the answer"
    assert field in body


def test_failure_keeps_the_prompt_and_says_why() -> None:
    """A model that cannot load: every image keeps its typed prompt, and its infotext says why."""
    status, response = txt2img({"batch_size": 2}, [{"enabled": True, "model": "no-such-model", **FAST}])
    assert status == 200, response
    info = info_of(response)
    assert info["all_prompts"] == [PROMPT, PROMPT] and len(response["images"]) == 2
    for infotext in info["infotexts"]:
        assert "no-such-model" in infotext_params(infotext).get("TIPO error", ""), infotext


def tiny_png(width: int = 64, height: int = 64) -> str:
    """A grey PNG as the API's base64 string, made with the standard library (img2img's init image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


@pytest.mark.parametrize(
    ("path", "timing"),
    [("txt2img", "after"), ("txt2img", "before"), ("img2img", "after")],
    ids=["txt2img", "txt2img-timing-before", "img2img"],
)
def test_strict_failure_is_an_http_error(path: str, timing: str) -> None:
    """Issue 5: strict mode turns a failure into an error naming it, never images from the
    unchanged prompt (in ``process()`` for timing after, ``before_process()`` for before)."""
    tipo = {"enabled": True, "model": "no-such-model", "strict": True, "timing": timing, **FAST}
    body = {"prompt": PROMPT, "width": 64, "height": 64, "steps": 1, "sampler_name": "Euler", "seed": 100,
            "alwayson_scripts": {TITLE: {"args": [tipo]}}}  # fmt: skip
    if path == "img2img":
        body.update(init_images=[tiny_png()], denoising_strength=0.5)
    status, response = call("POST", f"/sdapi/v1/{path}", body)
    text = json.dumps(response, ensure_ascii=False) if not isinstance(response, str) else response
    images = len(response.get("images") or []) if isinstance(response, dict) else 0
    print(f"\nstrict failure ({path}, timing {timing}): HTTP {status}, {images} image(s), body {text[:600]}")
    assert images == 0
    assert status >= 400 and "no-such-model" in text, f"HTTP {status}; the error is not in the answer"
    assert status == 500 and response["error"] == "GenerationError" and "strict mode" in response["detail"]


def test_a_request_after_a_strict_failure_generates_normally() -> None:
    """The failure belongs to its request: the next request (non-strict, same bad model) is HTTP 200
    with its images, the typed prompt and the reason in the infotext."""
    status, response = txt2img({}, [{"enabled": True, "model": "no-such-model", "strict": True, **FAST}])
    assert status == 500, response
    status, response = txt2img({}, [{"enabled": True, "model": "no-such-model", **FAST}])
    assert status == 200 and len(response["images"]) == 1, response
    info = info_of(response)
    assert info["all_prompts"] == [PROMPT] and "no-such-model" in infotext_params(info["infotexts"][0]).get("TIPO error", "")


def test_script_info_lists_every_arg(schema: dict[str, Any] | None) -> None:
    status, scripts = call("GET", "/sdapi/v1/script-info")
    assert status == 200
    entries = [s for s in scripts if s["name"].lower() == TITLE.lower()]
    assert sorted(s["is_img2img"] for s in entries) == [False, True]
    for entry in entries:
        args = entry["args"]
        assert len(args) == len(arg_names(schema))
        assert all(isinstance(a["label"], str) and a["label"].strip() for a in args), args
        by_name = dict(zip(arg_names(schema), args))
        assert {"tag_only", "nl_only", "both_tag_first", "both_nl_first", "both_generated", "custom"} <= set(by_name["mode"]["choices"])
        assert by_name["tag_length"]["choices"] == ["very_short", "short", "long", "very_long"]
        assert by_name["seed"]["minimum"] == -1
        for name in ("temperature", "top_p", "top_k", "min_p"):
            assert by_name[name]["minimum"] is not None and by_name[name]["maximum"] is not None, by_name[name]
        if schema:
            for spec in schema["args"]:
                arg = args[spec["index"]]
                assert arg["value"] == spec["default"] or spec["name"] == "model", (spec, arg)
                if "choices" in spec and spec["name"] != "model":
                    assert arg["choices"] == spec["choices"], (spec, arg)
                for bound in ("minimum", "maximum"):
                    if bound in spec:
                        assert arg[bound] == spec[bound], (spec, arg)


def test_api_infotext_field_reproduces_the_image(server: dict[str, Any], batch: dict[str, Any]) -> None:
    """The request's ``infotext`` restores the image's (expanded) prompt and seed; TIPO must not expand it again."""
    if server["forge"]:
        pytest.skip("Forge f2.0.1 answers HTTP 500 to every request with an infotext field, extension or not")
    status, response = call("POST", "/sdapi/v1/txt2img", {"infotext": batch["infotexts"][2], "width": 64, "height": 64, "steps": 1})
    assert status == 200, response
    info = info_of(response)
    assert info["all_seeds"] == [batch["all_seeds"][2]]
    assert info["all_prompts"] == [batch["all_prompts"][2]]


def test_expand_route(schema: dict[str, Any] | None) -> None:
    body = {"requests": [{"prompt": PROMPT, "seed": 1}, {"prompt": PROMPT, "seed": 2}], "model": MODEL, **FAST}
    status, answer = call("POST", "/tipo/v1/expand", body)
    if status == 404:
        pytest.skip("POST /tipo/v1/expand answers 404: this build of the extension has no expand route")
    assert status == 200, answer
    print("\nexpand:", json.dumps(answer, ensure_ascii=False)[:800])
    results = answer["results"]
    assert [r["error"] for r in results] == [None, None] and answer["failed"] == 0
    assert [r["original"] for r in results] == [PROMPT, PROMPT]
    assert [r["seed"] for r in results] == [1, 2]
    assert results[0]["prompt"] != results[1]["prompt"] and PROMPT not in (results[0]["prompt"], results[1]["prompt"])
    status, again = call("POST", "/tipo/v1/expand", {"requests": [{"prompt": PROMPT, "seed": 2}], "model": MODEL, **FAST})
    assert status == 200 and again["results"][0]["prompt"] == results[1]["prompt"]


def test_concurrent_strict_and_lenient_requests_get_their_own_answers() -> None:
    """Four txt2img requests in flight at once, strict and not in turn, all failing to load the
    model: the strict ones are HTTP 500, the others HTTP 200 with their image (the WebUI runs
    them one after the other under its queue lock; each answer is its own request's)."""
    def one(strict: bool) -> tuple[int, Any]:
        return txt2img({}, [{"enabled": True, "model": "no-such-model", "strict": strict, **FAST}])

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, [True, False, True, False]))
    print("\nconcurrent strict/lenient:", [status for status, _ in answers])
    for index, (status, response) in enumerate(answers):
        if index % 2 == 0:
            assert status == 500 and "no-such-model" in response["detail"], (index, response)
        else:
            assert status == 200 and len(response["images"]) == 1, (index, response)


#: Sixteen different expand requests (prompt, mode, lengths, size, bans, NL prompt, sampling),
#: each with a fixed seed.
_CONCURRENT = [
    {"prompt": f"{subject}, {scene}", "seed": 1000 + index, "mode": mode, "width": 832 + 64 * (index % 4),
     "height": 1216 - 64 * (index % 4), **({"ban_tags": "rain, *hat"} if index % 3 == 0 else {}),
     **({"nl_prompt": "A girl under the stars."} if index % 5 == 0 else {}),
     **({"temperature": 0.7, "top_k": 40} if index % 4 == 1 else {})}
    for index, (subject, scene, mode) in enumerate(
        (subject, scene, mode)
        for subject in ("1girl, solo", "2boys", "cat, no humans", "1girl, long hair")
        for scene, mode in (("scenery", "both_tag_first"), ("night, city", "tag_only"), ("sunset", "both_nl_first"),
                            ("forest, rain", "tags"))
    )
]  # fmt: skip


def test_sixteen_concurrent_expand_calls_equal_the_same_calls_alone(schema: dict[str, Any] | None) -> None:
    """Sixteen POST /tipo/v1/expand calls at once over HTTP, each a different request with a fixed
    seed: each answer equals the same call made alone afterwards."""
    bodies = [{"requests": [request], "model": MODEL, **FAST} for request in _CONCURRENT]
    start = time.perf_counter()
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: call("POST", "/tipo/v1/expand", body), bodies))
    concurrent_s = time.perf_counter() - start
    if together[0][0] == 404:
        pytest.skip("POST /tipo/v1/expand answers 404: this build of the extension has no expand route")
    start = time.perf_counter()
    alone = [call("POST", "/tipo/v1/expand", body) for body in bodies]
    alone_s = time.perf_counter() - start
    print(f"\n16 expand calls: concurrent {concurrent_s:.1f} s, one after the other {alone_s:.1f} s")
    for index, ((status, answer), (status_alone, answer_alone)) in enumerate(zip(together, alone)):
        assert status == status_alone == 200, (index, answer, answer_alone)
        assert answer["failed"] == 0, (index, answer)
        assert answer == answer_alone, f"call {index}: concurrent {answer} != alone {answer_alone}"
        assert answer["results"][0]["seed"] == _CONCURRENT[index]["seed"]
    assert len({answer["results"][0]["prompt"] for _, answer in together}) == len(bodies)


def test_expand_route_names_bad_fields() -> None:
    status, answer = call("POST", "/tipo/v1/expand", {"requests": [{"prompt": PROMPT}, {"prompt": PROMPT, "seed": "x"}]})
    if status == 404:
        pytest.skip("POST /tipo/v1/expand answers 404: this build of the extension has no expand route")
    print(f"\nexpand with a bad seed: HTTP {status} {json.dumps(answer)[:400]}")
    assert status == 422, answer
    assert [e["field"] for e in answer["errors"]] == ["requests[1].seed"]


def test_schema_route(schema: dict[str, Any] | None) -> None:
    if schema is None:
        pytest.skip("GET /tipo/v1/schema answers 404: this build of the extension has no schema route")
    names = arg_names(schema)
    assert names[0] == "enabled" and set(DOCUMENTED_ORDER) <= set(names)
    assert [a["index"] for a in schema["args"]] == list(range(len(names)))
    assert all(a["label"] and a["infotext"] for a in schema["args"])
