"""The WebUI glue without a WebUI: fake ``modules.*``, a dataclass for ``p``, the real entry
script's ``process()`` and the tiny real model (style sheet, section 10).

The WebUI behaviour the fakes reproduce (hook order, how ``extra_generation_params`` become
infotext, how infotext is parsed) is in ``shared/reference/webui-facts.md``; the quoting and
parsing helpers below follow A1111 1.10's ``modules/infotext_utils.py`` (same regular
expression and quoting rule).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import re
import subprocess
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tipo
from tipo import extension
from tipo.args import TipoArgs, fields, spec, webui_fields
from tipo.errors import GenerationError, InvalidArgument
from tipo.models.registry import DEFAULT_MODEL, MODELS
from tipo.settings import WebuiSettings, local_models, model_location

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "tipo_script.py"

# -- a fake WebUI ----------------------------------------------------------------------------


class FakeState:
    """``shared.state``: what A1111 1.10's ``modules/shared_state.py`` does with these fields."""

    def __init__(self) -> None:
        self.interrupted = self.skipped = False
        self.textinfo: str | None = ""
        self.sampling_step = self.sampling_steps = 0
        self.jobs: list[str] = []
        self.texts: list[str] = []

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "textinfo" and value:
            self.__dict__.setdefault("texts", []).append(value)
        super().__setattr__(name, value)

    def interrupt(self) -> None:
        self.interrupted = True

    def begin(self, job: str = "(unknown)") -> None:
        self.interrupted = self.skipped = False
        self.textinfo = None
        self.jobs.append(job)

    def end(self) -> None:
        self.jobs.append("end")


class FakeOpts:
    """``shared.opts``: unset options read as their registered default."""

    def __init__(self) -> None:
        self.data_labels: dict[str, Any] = {}

    def add_option(self, key: str, info: Any) -> None:
        self.data_labels[key] = info
        setattr(self, key, info.default)


class FakeOptionInfo:
    def __init__(self, default: Any, label: str, component: Any = None, component_args: Any = None, *, section: Any = None) -> None:
        self.default, self.label, self.component_args, self.section = default, label, component_args, section


class FakeScript:
    """The parts of ``modules.scripts.Script`` the entry file uses."""

    is_img2img = False
    on_after_component_elem_id: list[tuple[str, Any]] | None = None

    def on_after_component(self, callback: Any, *, elem_id: str) -> None:
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def elem_id(self, item_id: str) -> str:
        return f"script_txt2img_tipo_{item_id}"


class QueueLock:
    """``modules.call_queue.queue_lock``, recording whether it was held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entered = 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.entered += 1

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


def _fake_modules(models_path: Path) -> dict[str, types.ModuleType]:
    callbacks: dict[str, list[Any]] = {"infotext_pasted": [], "ui_settings": [], "before_ui": [], "app_started": []}
    mods = {name: types.ModuleType(name) for name in
            ("modules", "modules.scripts", "modules.script_callbacks", "modules.shared", "modules.devices", "modules.paths",
             "modules.call_queue", "modules.images", "modules.infotext_utils")}  # fmt: skip
    # What ✨ (upscale one image) reads: the image's own infotext, as A1111 1.10 and Forge do.
    mods["modules.images"].read_info_from_image = lambda image: (image.info.get("parameters"), {})  # type: ignore[attr-defined]
    mods["modules.infotext_utils"].parse_generation_parameters = lambda text: parse_infotext(text)  # type: ignore[attr-defined]
    mods["modules.scripts"].Script = FakeScript  # type: ignore[attr-defined]
    mods["modules.scripts"].AlwaysVisible = object()  # type: ignore[attr-defined]
    mods["modules.scripts"].scripts_data = []  # type: ignore[attr-defined]
    mods["modules.script_callbacks"].registered = callbacks  # type: ignore[attr-defined]
    for name, registered in callbacks.items():
        setattr(mods["modules.script_callbacks"], f"on_{name}", registered.append)
    mods["modules.call_queue"].queue_lock = QueueLock()  # type: ignore[attr-defined]
    mods["modules.shared"].opts = FakeOpts()  # type: ignore[attr-defined]
    mods["modules.shared"].cmd_opts = types.SimpleNamespace(api=True, nowebui=False, api_auth=None)  # type: ignore[attr-defined]
    mods["modules.shared"].state = FakeState()  # type: ignore[attr-defined]
    mods["modules.shared"].OptionInfo = FakeOptionInfo  # type: ignore[attr-defined]
    mods["modules.devices"].device = "cpu"  # type: ignore[attr-defined]
    mods["modules.paths"].models_path = str(models_path)  # type: ignore[attr-defined]
    for name, module in mods.items():
        if "." in name:
            setattr(mods["modules"], name.split(".", 1)[1], module)
    return mods


@pytest.fixture(scope="module")
def webui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[types.SimpleNamespace]:
    """The entry script loaded as the WebUI loads it, over fake ``modules.*`` (restored after)."""
    patcher = pytest.MonkeyPatch()
    mods = _fake_modules(tmp_path_factory.mktemp("webui-models"))
    for name, module in mods.items():
        patcher.setitem(sys.modules, name, module)
    spec_ = importlib.util.spec_from_file_location("tipo_script_under_test", SCRIPT)
    assert spec_ is not None and spec_.loader is not None
    script_module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(script_module)
    try:
        yield types.SimpleNamespace(module=script_module, script=script_module.TipoScript(), shared=mods["modules.shared"],
                                    callbacks=mods["modules.script_callbacks"].registered)  # fmt: skip
    finally:
        patcher.undo()


@pytest.fixture(autouse=True)
def fresh_state(request: pytest.FixtureRequest) -> None:
    if "webui" in request.fixturenames:
        shared = request.getfixturevalue("webui").shared
        shared.state = FakeState()
        if "tiny_model_dir" in request.fixturenames:  # the models folder holds it, as models/TIPO would
            shared.opts.tipo_models_dir = str(request.getfixturevalue("tiny_model_dir").parent)


@dataclass
class P:
    """The processing object after ``setup_prompts`` and seeding (webui-facts, "Order of things")."""

    prompt: str
    batch_size: int = 1
    n_iter: int = 1
    seed: int = 1000
    hr_prompt: str = ""
    enable_hr: bool = False
    width: int = 64
    height: int = 48
    subseed: int = 77
    subseed_strength: float = 0.0
    all_prompts: list[str] = field(default_factory=list)
    all_hr_prompts: list[str] | None = None
    all_seeds: list[int] = field(default_factory=list)
    all_subseeds: list[int] = field(default_factory=list)
    main_prompt: str | None = None
    main_hr_prompt: str | None = None
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, int] = field(default_factory=dict)

    def setup_prompts(self) -> P:
        count = self.batch_size * self.n_iter
        self.all_prompts = [self.prompt] * count
        self.main_prompt = self.all_prompts[0]
        if self.enable_hr:
            self.all_hr_prompts = [self.hr_prompt or self.prompt] * count
            self.main_hr_prompt = self.all_hr_prompts[0]
        self.all_seeds = [self.seed + i for i in range(count)]
        self.all_subseeds = [self.subseed + i for i in range(count)]
        return self

    def comment(self, text: str) -> None:
        self.comments[text] = 1


def quote(value: Any) -> Any:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if ("," in text or "\n" in text or ":" in text) else value


RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def infotext(p: P, index: int) -> str:
    """What the WebUI writes for image ``index``: list values are per image, ``None`` is left out."""
    params = {"Steps": 20, "Seed": p.all_seeds[index], "Size": f"{p.width}x{p.height}", **p.extra_generation_params}
    if p.all_hr_prompts is not None and p.all_hr_prompts[index] != p.all_prompts[index]:
        params["Hires prompt"] = p.all_hr_prompts[index]
    values = {k: v[index] if isinstance(v, list) else v for k, v in params.items()}
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in values.items() if v is not None)
    return f"{p.all_prompts[index]}\n{line}".strip()


def parse_infotext(text: str) -> dict[str, Any]:
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        lines, last = [*lines, last], ""
    params: dict[str, Any] = {"Prompt": "\n".join(line.strip() for line in lines)}
    for key, value in RE_PARAM.findall(last):
        if value and value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        params[key] = value
    params.setdefault("Hires prompt", "")
    return params


def paste(webui: types.SimpleNamespace, text: str) -> dict[str, Any]:
    """The UI's paste: parse, run the paste callbacks, then read every TIPO control."""
    params = parse_infotext(text)
    for callback in webui.callbacks["infotext_pasted"]:
        callback(text, params)
    return params


# -- helpers ---------------------------------------------------------------------------------


def values(model: Path, **overrides: Any) -> list[Any]:
    """The positional args as the UI sends them: tiny model, short targets, few tokens."""
    settings_ = {"enabled": True, "model": model.name, "tag_length": "very_short", "nl_length": "very_short",
                 "max_new_tokens": 8, "seed": 5, **overrides}  # fmt: skip
    return [settings_.get(f.name, f.default) for f in fields()]


def run(webui: types.SimpleNamespace, p: P, args: list[Any]) -> P:
    webui.script.before_process(p, *args)
    p.setup_prompts()
    webui.script.process(p, *args)
    return p


# -- argument forms --------------------------------------------------------------------------


def test_positional_order_is_the_schema_and_webui_fields_come_last():
    names = [f.name for f in fields()]
    assert names[0] == "enabled" and names[-2:] == ["timing", "presampling"]
    assert [f.name for f in webui_fields()] == ["timing", "presampling"]
    assert extension.default_values() == [f.default for f in fields()]
    assert extension.parse_script_args(extension.default_values()) is None


def test_named_args_in_the_first_slot_are_laid_over_the_rest():
    args = extension.parse_script_args([{"seed": 42, "tag_length": "short"}, *extension.default_values()[1:]])
    assert args == TipoArgs(enabled=True, seed=42, tag_length="short")
    assert extension.parse_script_args([{"enabled": False, "seed": 1}]) is None
    assert extension.parse_script_args([{"seed": "7", "temperature": 1}]) == TipoArgs(enabled=True, seed=7, temperature=1.0)


@pytest.mark.parametrize(
    ("given", "names"),
    [
        ([{"seed": "abc"}], ["seed='abc'", "expected int"]),
        ([{"seeed": 1}], ["unknown TIPO argument(s) ['seeed']", "allowed:", "'seed'"]),
        (["yes"], ["args[0]", "str 'yes'", "true/false"]),
        ([1], ["args[0]", "int 1"]),
        ([True, "no-such-mode"], ["mode='no-such-mode'", "one of"]),
        ([{"mode": "custom"}], ["template is empty"]),
        ([{"ban_tags": "/(unclosed/"}], ["(unclosed"]),
        ([{"top_p": 2}], ["top_p=2.0", "maximum 1"]),
        ([True] + [None] * 30, ["at most"]),
    ],
)
def test_bad_args_are_errors_naming_the_field(given, names):
    with pytest.raises(InvalidArgument) as caught:
        extension.parse_script_args(given)
    for name in names:
        assert name in str(caught.value)


def test_disabled_positional_args_are_not_validated():
    assert extension.parse_script_args([False, "no-such-mode", "", 3]) is None


def test_api_payload_check_names_the_list_form():
    extension.check_api_payload({"alwayson_scripts": {"tipo": {"args": [{"seed": 3}]}}})
    extension.check_api_payload({"alwayson_scripts": {"Other": {"args": {"x": 1}}}})
    with pytest.raises(InvalidArgument, match=r'must be a list; put the named args inside one: \{"args": \[\{"seed": 3\}\]\}'):
        extension.check_api_payload({"alwayson_scripts": {"TIPO": {"args": {"seed": 3}}}})
    with pytest.raises(InvalidArgument, match="unknown TIPO argument"):
        extension.check_api_payload({"alwayson_scripts": {"TiPo": {"args": [{"sed": 3}]}}})


# -- seeds -----------------------------------------------------------------------------------


def test_seeds_per_image_per_batch_zero_and_variation():
    per_image = extension.expansion_seeds([10, 11, 12, 13], 0)
    assert len(set(per_image)) == 4
    assert per_image == extension.expansion_seeds([10, 11, 12, 13], 0), "deterministic"
    assert per_image != extension.expansion_seeds([10, 11, 12, 13], 1), "the TIPO seed matters, 0 included"
    assert extension.expansion_seeds([12], 0) == per_image[2:3], "an image's seed does not depend on its place"
    per_batch = extension.expansion_seeds([10, 11, 12, 13], 0, per_batch=True, batch_size=2)
    assert per_batch == (per_image[0], per_image[0], per_image[2], per_image[2])
    same_image_seed = extension.expansion_seeds([10, 10], 3, variation_seeds=[5, 6])
    assert same_image_seed[0] != same_image_seed[1]


def test_random_tipo_seed_is_drawn_and_other_seeds_are_kept():
    assert extension.resolve_tipo_seed(0) == 0
    drawn = {extension.resolve_tipo_seed(-1) for _ in range(5)}
    assert all(seed >= 0 for seed in drawn) and len(drawn) > 1


def test_reuse_seed_reads_the_last_generation():
    info = json.dumps({"all_seeds": [1], "extra_generation_params": {"TIPO seed": 1234, "TIPO mode": "tag_only"}})
    assert extension.seed_from_generation_info(info) == 1234
    assert extension.seed_from_generation_info('{"extra_generation_params": {}}') is None
    assert extension.seed_from_generation_info("not json") is None


# -- the script's process(), with the tiny real model ----------------------------------------


def test_batch_of_two_times_two_gets_four_different_expansions(webui, tiny_model_dir):
    p = run(webui, P("1girl, solo", batch_size=2, n_iter=2), values(tiny_model_dir))
    assert len(set(p.all_prompts)) == 4
    for prompt in p.all_prompts:
        assert prompt != "1girl, solo" and prompt.startswith("1girl,") and "solo" in prompt
    assert p.main_prompt == p.all_prompts[0]
    assert p.extra_generation_params["TIPO seed"] == 5
    assert p.extra_generation_params["TIPO original prompt"] == "1girl, solo"
    assert "TIPO error" not in p.extra_generation_params and not p.comments
    again = run(webui, P("1girl, solo", batch_size=2, n_iter=2), values(tiny_model_dir))
    assert again.all_prompts == p.all_prompts, "same seeds, same expansions"


def test_per_batch_presampling_shares_one_expansion_per_batch(webui, tiny_model_dir):
    p = run(webui, P("1girl, solo", batch_size=2, n_iter=2), values(tiny_model_dir, presampling="per_batch"))
    assert p.all_prompts[0] == p.all_prompts[1] != p.all_prompts[2] == p.all_prompts[3]
    per_image = run(webui, P("1girl, solo", batch_size=2, n_iter=2), values(tiny_model_dir))
    assert p.all_prompts[0] == per_image.all_prompts[0] and p.all_prompts[2] == per_image.all_prompts[2]


def test_hires_prompts_use_the_expanded_prompt(webui, tiny_model_dir):
    p = run(webui, P("1girl, solo", batch_size=2, enable_hr=True), values(tiny_model_dir))
    assert p.all_hr_prompts == p.all_prompts and p.main_hr_prompt == p.all_prompts[0]
    assert len(set(p.all_prompts)) == 2
    assert "TIPO original hires prompt" not in p.extra_generation_params


def test_a_typed_hires_prompt_is_expanded_in_the_same_call_with_the_image_seed(webui, tiny_model_dir):
    p = run(webui, P("1girl, solo", batch_size=2, enable_hr=True, hr_prompt="scenery"), values(tiny_model_dir))
    assert all(h.startswith("scenery") and h != "scenery" for h in p.all_hr_prompts)
    assert len(set(p.all_hr_prompts)) == 2 and not set(p.all_hr_prompts) & set(p.all_prompts)
    alone = run(webui, P("scenery", batch_size=2), values(tiny_model_dir))
    assert p.all_hr_prompts == alone.all_prompts, "one text and one seed give one expansion"
    assert p.extra_generation_params["TIPO original hires prompt"] == "scenery"


def test_timing_before_expands_the_typed_prompt_once(webui, tiny_model_dir):
    p = run(webui, P("1girl, solo", batch_size=2, n_iter=2, enable_hr=True), values(tiny_model_dir, timing="before"))
    assert p.prompt != "1girl, solo" and p.all_prompts == [p.prompt] * 4 and p.all_hr_prompts == p.all_prompts
    assert p.extra_generation_params["TIPO timing"] == "before"
    assert p.extra_generation_params["TIPO original prompt"] == "1girl, solo"


def test_dict_args_through_process(webui, tiny_model_dir):
    named = {"model": tiny_model_dir.name, "seed": 0, "tag_length": "very_short", "nl_length": "very_short", "max_new_tokens": 8}
    p = run(webui, P("1girl, solo", batch_size=2), [named, *extension.default_values()[1:]])
    assert len(set(p.all_prompts)) == 2 and p.extra_generation_params["TIPO seed"] == 0
    assert p.all_prompts == run(webui, P("1girl, solo", batch_size=2), values(tiny_model_dir, seed=0)).all_prompts


def test_bad_api_args_stop_the_generation_and_leave_the_prompts(webui):
    p = P("1girl, solo", batch_size=2).setup_prompts()
    with pytest.raises(InvalidArgument, match="seed='abc'"):
        webui.script.process(p, {"seed": "abc"}, *extension.default_values()[1:])
    assert p.all_prompts == ["1girl, solo"] * 2 and not p.extra_generation_params
    assert webui.shared.state.interrupted and any("seed='abc'" in c for c in p.comments)


def test_failure_keeps_every_original_prompt_and_says_why(webui, tmp_path, caplog):
    prompt = "1girl, (solo:1.2), <lora:x:0.5>, A girl walks."
    with caplog.at_level(logging.WARNING, logger="tipo"):
        p = run(webui, P(prompt, batch_size=2, enable_hr=True), values(tmp_path / "no-model"))
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1, "one warning per fallback"
    assert p.all_prompts == [prompt] * 2 and p.all_hr_prompts == [prompt] * 2
    assert "neither a known TIPO model nor a model in the TIPO models folder" in p.extra_generation_params["TIPO error"]
    assert "TIPO original prompt" not in p.extra_generation_params
    assert p.comments and not webui.shared.state.interrupted
    params = paste(webui, infotext(p, 1))
    assert params["Prompt"] == prompt and "neither a known TIPO model" in params["TIPO error"]


def test_strict_mode_fails_with_versions_model_device_and_args(webui, tmp_path):
    p = P("1girl", batch_size=1).setup_prompts()
    with pytest.raises(GenerationError) as caught:
        webui.script.process(p, *values(tmp_path / "no-model", strict=True))
    message = str(caught.value)
    for part in ("strict mode", "ModelNotFoundError", "versions: python", "transformers", "model: no-model",
                 "device: cpu", '"strict": true'):  # fmt: skip
        assert part in message
    assert f"tipo {tipo.__version__}," in message  # the package's version, installed by pip or not
    assert caught.value.__cause__ is not None
    assert p.all_prompts == ["1girl"] and webui.shared.state.interrupted


def test_infotext_round_trip_reproduces_the_expansion(webui, tiny_model_dir):
    args = values(tiny_model_dir, seed=-1, ban_nl="rain, snow", template="<|general|>", mode="custom")
    p = run(webui, P("1girl, solo", batch_size=2, n_iter=2), args)
    for index in (0, 3):
        params = paste(webui, infotext(p, index))
        assert params["Prompt"] == "1girl, solo", "the prompt box gets the prompt as typed"
        pasted = extension.paste_values(params)
        assert pasted["seed"] == p.extra_generation_params["TIPO seed"] != -1
        assert pasted == {**dict(zip([f.name for f in fields()], args)), "seed": pasted["seed"]}
        again = run(webui, P(params["Prompt"], seed=p.all_seeds[index]), [pasted[f.name] for f in fields()])
        assert again.all_prompts == [p.all_prompts[index]]


@pytest.mark.parametrize("timing", ["after", "before"])
def test_upscaling_one_image_reuses_its_expansion(webui, tiny_model_dir, timing: str):
    """✨ runs the script again with the UI's arguments (TIPO seed -1, per batch here) and the
    image's seed only: the image's own expansion is reused, not a new one, and the upscaled
    image's infotext keeps the original prompt and settings."""
    args = values(tiny_model_dir, seed=-1, presampling="per_batch", timing=timing)
    p = run(webui, P("1girl, solo", batch_size=2, n_iter=2, enable_hr=True), args)
    index = 3
    image = types.SimpleNamespace(info={"parameters": infotext(p, index)})
    upscale = P("1girl, solo", seed=p.all_seeds[index], enable_hr=True)
    upscale.txt2img_upscale, upscale.firstpass_image = True, image  # type: ignore[attr-defined]
    run(webui, upscale, args)
    assert upscale.all_prompts == [p.all_prompts[index]] != ["1girl, solo"]
    assert upscale.all_hr_prompts == [p.all_hr_prompts[index]]
    assert upscale.extra_generation_params["TIPO original prompt"] == "1girl, solo"
    assert upscale.extra_generation_params["TIPO seed"] == str(p.extra_generation_params["TIPO seed"])


def test_upscaling_reuses_the_whole_expansion_when_the_webui_parser_strips_style_text(webui, tiny_model_dir, monkeypatch):
    """A1111's parser removes the text of known styles from ``Prompt``; the expansion that is
    reused is the prompt as the infotext wrote it."""
    args = values(tiny_model_dir, seed=-1)
    p = run(webui, P("1girl, solo", enable_hr=True), args)
    text = infotext(p, 0)
    stripping = lambda text: {**parse_infotext(text), "Prompt": "1girl"}  # noqa: E731
    monkeypatch.setattr(sys.modules["modules.infotext_utils"], "parse_generation_parameters", stripping)
    upscale = P("1girl, solo", seed=p.all_seeds[0], enable_hr=True)
    upscale.txt2img_upscale, upscale.firstpass_image = True, types.SimpleNamespace(info={"parameters": text})  # type: ignore[attr-defined]
    run(webui, upscale, args)
    assert upscale.all_prompts == p.all_prompts


def test_written_prompt_is_the_text_before_the_negative_prompt_and_the_settings():
    text = "1girl, (solo:1.2),\nnote: a, b\nNegative prompt: bad, worse\nSteps: 20, Seed: 5, Size: 64x64"
    assert extension.written_prompt(text) == "1girl, (solo:1.2),\nnote: a, b"
    assert extension.written_prompt("a prompt, with: a colon") == "a prompt, with: a colon"
    assert extension.written_prompt("p\nSteps: 20, Seed: 1, Size: 64x64") == "p"
    # A line of the expansion ending in a space keeps it (found in a real A1111 with ✨).
    assert extension.written_prompt("a, b \n\nc \nSteps: 20, Seed: 1, Size: 64x64") == "a, b \n\nc "


def test_upscaling_an_image_without_a_tipo_infotext_expands_its_prompt(webui, tiny_model_dir, caplog):
    args = values(tiny_model_dir, seed=9)
    upscale = P("1girl, solo", seed=1000, enable_hr=True)
    upscale.txt2img_upscale, upscale.firstpass_image = True, types.SimpleNamespace(info={})  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING):
        run(webui, upscale, args)
    assert upscale.all_prompts == run(webui, P("1girl, solo", seed=1000, enable_hr=True), args).all_prompts
    assert "records no TIPO expansion" in caplog.text


def test_api_infotext_without_the_paste_callback_does_not_expand_twice(webui, tiny_model_dir):
    p = run(webui, P("1girl, solo"), values(tiny_model_dir))
    params = parse_infotext(infotext(p, 0))  # the API's `infotext` field: no on_infotext_pasted
    assert params["Prompt"] == p.all_prompts[0]
    assert extension.paste_values(params)["enabled"] is False


def test_paste_tolerates_missing_old_and_foreign_keys():
    assert extension.paste_values({"Prompt": "x", "Steps": "20"}) == {"enabled": False}
    pasted = extension.paste_values({"Prompt": "x", "TIPO": "True", "TIPO top k": "lots", "TIPO mode": "retired_mode",
                                     "TIPO seed": "12", "TIPO temperature": "0.7"})  # fmt: skip
    assert pasted == {**TipoArgs().to_dict(), "enabled": True, "seed": 12, "temperature": 0.7}


def test_a_value_starting_with_a_double_quote_does_not_swallow_the_next_keys():
    """Regression: a ban list of just ``"`` was written bare, and the WebUI's parser read it as
    the start of a quoted value running over every key after it."""
    args = TipoArgs(enabled=True, ban_tags='"', ban_nl='"a, b', seed=0)
    p = P("x").setup_prompts()
    p.extra_generation_params.update(extension.infotext_params(args, 0))
    pasted = extension.paste_values(parse_infotext(infotext(p, 0)))
    assert pasted["ban_tags"] == '"' and pasted["ban_nl"] == '"a, b' and pasted["seed"] == 0


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(min_size=1) | st.sampled_from(["TIPO original prompt", '"q"', " lead", "json:x"]))
def test_any_text_survives_the_webui_quoting(ban_tags, prompt):
    """Style sheet 10: args round-trip through infotext, whatever the text."""
    args = TipoArgs(enabled=True, ban_tags=ban_tags, seed=0)
    p = P(prompt.replace("\n", " ").strip() or "x").setup_prompts()
    p.extra_generation_params.update(extension.infotext_params(args, 0))
    p.extra_generation_params[extension.ORIGINAL_PROMPT_KEY] = extension.encode_value(prompt, extension.ORIGINAL_PROMPT_KEY)
    params = parse_infotext(infotext(p, 0))
    assert extension.paste_values(params)["ban_tags"] == ban_tags
    extension.restore_original_prompts(params)
    assert params["Prompt"] == prompt


def test_settings_and_paste_callback_are_registered_once_at_import(webui):
    assert len(webui.callbacks["infotext_pasted"]) == 1 and len(webui.callbacks["ui_settings"]) == 1
    keys = [s.key for s in extension.SETTINGS]
    assert all(key.startswith("tipo_") for key in keys) and len(set(keys)) == len(keys)


def test_extension_logic_imports_neither_gradio_nor_the_webui_nor_torch():
    code = ("import sys, tipo.extension; bad = [m for m in ('gradio', 'modules', 'torch', 'transformers') if m in sys.modules];"
            " print(bad); sys.exit(1 if bad else 0)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_parity_every_field_has_a_label_key_and_help():
    keys = [spec(f.name).infotext for f in fields()]
    assert len(set(keys)) == len(keys) and all(k.startswith("TIPO") for k in keys)
    assert all(re.fullmatch(r"\w[\w \-/]+", k) for k in keys), "the WebUI's infotext parser reads these keys"
    assert all(spec(f.name).label and spec(f.name).help for f in fields())


# -- progress, Interrupt/Skip, "Expand now", the expand route -------------------------------


class SkipAt(FakeState):
    """Presses Skip once TIPO reports decode step ``step`` (as the WebUI's button would)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.__dict__["at"] = step

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "sampling_step" and value >= self.__dict__.get("at", 1 << 30):
            self.__dict__["skipped"] = True


def test_progress_shows_tipo_steps_in_the_webui_state(webui, tiny_model_dir):
    run(webui, P("1girl, solo", batch_size=2), values(tiny_model_dir))
    steps = [text for text in webui.shared.state.texts if text.startswith("TIPO: pass")]
    assert steps and steps[0] == "TIPO: pass 1, step 1/8, 2 prompts"
    assert all(re.fullmatch(r"TIPO: pass \d+, step \d+/8, \d+ prompts?", text) for text in steps)
    assert webui.shared.state.sampling_step == 0, "the sampler's progress starts from zero"


def test_skip_stops_tipo_between_steps_and_the_images_keep_their_prompts(webui, tiny_model_dir):
    webui.shared.state = SkipAt(2)
    p = run(webui, P("1girl, solo", batch_size=2), values(tiny_model_dir, strict=True))  # stopping is no failure
    assert p.all_prompts == ["1girl, solo"] * 2 and "interrupted" in p.extra_generation_params["TIPO error"]
    assert not webui.shared.state.interrupted, "Skip skips TIPO; the generation goes on"
    assert extension.webui_control(FakeState()).should_stop() is False
    stopped = FakeState()
    stopped.interrupted = True
    assert extension.webui_control(stopped).should_stop() is True


def test_expand_now_previews_under_the_queue_lock_and_shows_the_diff(webui, tiny_model_dir):
    lock = sys.modules["modules.call_queue"].queue_lock
    entered = lock.entered
    webui.shared.state.interrupted = True  # left over from an earlier generation: begin() clears it
    text, markup = webui.module._expand_now("1girl, solo", 640, 832, *values(tiny_model_dir, enabled=False, seed=3))
    assert lock.entered == entered + 1 and webui.shared.state.jobs == ["tipo_preview", "end"]
    assert text != "1girl, solo" and "1girl" in text and "solo" in text
    assert 'class="tipo-diff-added"' in markup and "TIPO seed 3" in markup
    assert webui.module._expand_now("1girl, solo", 640, 832, *values(tiny_model_dir, seed=3))[0] == text, "seeded"
    wide = webui.module._expand_now("1girl, solo", 1536, 640, *values(tiny_model_dir, seed=3))[0]
    assert wide != text, "the image size of the page is used"
    drawn = extension.preview("1girl", values(tiny_model_dir, seed=-1), lambda args: webui.module._expander(args.model, webui.module._settings()))
    assert drawn.error is None and drawn.seed is not None and drawn.seed >= 0


def test_expand_now_reports_bad_settings_and_failures_without_raising(webui, tmp_path, tiny_model_dir):
    text, markup = webui.module._expand_now("1girl", 64, 64, *values(tiny_model_dir, top_p=5))
    assert text == "" and "top_p=5" in markup and "TIPO kept the prompt" in markup
    text, markup = webui.module._expand_now("1girl", 64, 64, *values(tmp_path / "none"))
    assert text == "" and "neither a known TIPO model" in markup


def test_the_expand_route_takes_models_of_the_models_folder_under_the_queue_lock(webui, tiny_model_dir):
    lock = sys.modules["modules.call_queue"].queue_lock
    entered = lock.entered
    body = {"model": tiny_model_dir.name, "tag_length": "very_short", "max_new_tokens": 8, "requests": [{"prompt": "1girl", "seed": 2}]}
    status, answer = webui.module._expand_http(body)
    refused = webui.module._expand_http({**body, "model": str(tiny_model_dir.parent.parent)})
    assert status == 200 and answer["results"][0]["error"] is None and answer["results"][0]["prompt"].startswith("1girl")
    assert answer["results"][0]["model"] == str(tiny_model_dir) and lock.entered == entered + 1
    assert webui.shared.state.jobs == ["tipo_expand", "end"]
    assert refused[0] == 422 and refused[1]["errors"][0]["field"] == "model", "a default outside the folder is refused too"


# -- the X/Y/Z plot --------------------------------------------------------------------------


class FakeAxisOption:
    """A1111 1.10 ``scripts/xyz_grid.py`` ``AxisOption``'s constructor."""

    def __init__(self, label: str, type: Any, apply: Any, format_value: Any = None, confirm: Any = None,
                 cost: float = 0.0, choices: Any = None, prepare: Any = None) -> None:  # fmt: skip
        self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices


@pytest.fixture
def xyz_axes(webui: types.SimpleNamespace) -> Iterator[dict[str, FakeAxisOption]]:
    """The plot script's module as the WebUI loads it (module name ``xyz_grid.py``), after our
    ``before_ui`` callback ran twice (a UI reload)."""
    module = types.ModuleType("xyz_grid.py")
    module.AxisOption = FakeAxisOption  # type: ignore[attr-defined]
    module.axis_options = [FakeAxisOption("Nothing", str, None)]  # type: ignore[attr-defined]
    plot_class = type("Script", (), {"__module__": "xyz_grid.py"})
    scripts_data = sys.modules["modules.scripts"].scripts_data
    scripts_data[:] = [types.SimpleNamespace(script_class=FakeScript, module=None),
                       types.SimpleNamespace(script_class=plot_class, module=module)]  # fmt: skip
    try:
        for _ in range(2):
            for callback in webui.callbacks["before_ui"]:
                callback()
        yield {option.label: option for option in module.axis_options}
    finally:
        scripts_data.clear()


def test_xyz_axes_are_registered_once_with_choices(xyz_axes):
    assert list(xyz_axes) == ["Nothing", "[TIPO] Enabled", "[TIPO] Model", "[TIPO] Mode", "[TIPO] Tag length",
                              "[TIPO] NL length", "[TIPO] Temperature", "[TIPO] Seed"]  # fmt: skip
    assert DEFAULT_MODEL in xyz_axes["[TIPO] Model"].choices()
    assert xyz_axes["[TIPO] Mode"].choices() == list(spec("mode").choices)
    assert xyz_axes["[TIPO] Temperature"].choices is None and xyz_axes["[TIPO] Temperature"].type is float
    assert xyz_axes["[TIPO] Seed"].type is int and xyz_axes["[TIPO] Enabled"].choices() == ["on", "off"]


def test_xyz_values_are_checked_before_the_plot_runs(xyz_axes):
    xyz_axes["[TIPO] Tag length"].confirm(None, ["short", "very_long"])
    xyz_axes["[TIPO] Temperature"].confirm(None, [0.3, 0.9])
    with pytest.raises(InvalidArgument, match=r"\[TIPO\] Tag length: tag_length='huge' \(one of"):
        xyz_axes["[TIPO] Tag length"].confirm(None, ["short", "huge"])
    with pytest.raises(InvalidArgument, match="maximum 5"):
        xyz_axes["[TIPO] Temperature"].confirm(None, [0.5, 9.0])
    with pytest.raises(InvalidArgument, match="on or off"):
        xyz_axes["[TIPO] Enabled"].confirm(None, ["yes"])


def test_each_xyz_cell_gets_its_own_tipo_values_and_turns_tipo_on(webui, tiny_model_dir, xyz_axes):
    p = P("1girl, solo")
    cell = copy.copy(p)
    xyz_axes["[TIPO] Seed"].apply(cell, 7, [7, 8])
    xyz_axes["[TIPO] Tag length"].apply(cell, "short", ["short"])
    other = copy.copy(cell)  # the plot copies p once per cell: the next cell's values must not leak back
    xyz_axes["[TIPO] Seed"].apply(other, 8, [7, 8])
    assert cell.tipo_overrides == {"seed": 7, "tag_length": "short"} and other.tipo_overrides["seed"] == 8
    assert not hasattr(p, "tipo_overrides")
    run(webui, cell, values(tiny_model_dir, enabled=False))
    assert cell.all_prompts != ["1girl, solo"] and cell.extra_generation_params["TIPO seed"] == 7
    assert cell.extra_generation_params["TIPO tag length"] == "short"
    off = copy.copy(p)
    xyz_axes["[TIPO] Enabled"].apply(off, "off", ["on", "off"])
    run(webui, off, values(tiny_model_dir))
    assert off.all_prompts == ["1girl, solo"] and not off.extra_generation_params


# -- settings and the model holder -----------------------------------------------------------


def test_settings_are_read_tolerantly_with_the_webui_device_and_models_folder():
    opts = types.SimpleNamespace(tipo_device="auto", tipo_dtype="float16", tipo_vram_policy="bogus",
                                 tipo_unload_minutes="x", tipo_model=" ", tipo_models_dir="")  # fmt: skip
    read = WebuiSettings.read(opts, webui_device="cuda:1", default_models_dir="/m/TIPO")
    assert read == WebuiSettings(DEFAULT_MODEL, "/m/TIPO", "cuda:1", "float16", "keep", 10.0)
    opts = types.SimpleNamespace(tipo_device="cpu", tipo_dtype="auto", tipo_vram_policy="offload",
                                 tipo_unload_minutes=2, tipo_model="KBlueLeaf/TIPO-200M-ft2", tipo_models_dir="/x")  # fmt: skip
    read = WebuiSettings.read(opts, webui_device="cuda", default_models_dir="/m/TIPO")
    assert read == WebuiSettings("KBlueLeaf/TIPO-200M-ft2", "/x", "cpu", None, "offload", 2.0)
    keys = {s.key for s in extension.SETTINGS}
    assert {"tipo_model", "tipo_models_dir", "tipo_device", "tipo_dtype", "tipo_vram_policy", "tipo_unload_minutes",
            "tipo_nl_prompt_box"} == keys  # fmt: skip


def test_the_pool_applies_the_vram_policy_and_unloads_the_model_it_replaces(tiny_model_dir):
    pool = extension.ExpanderPool()
    settings_ = WebuiSettings(str(tiny_model_dir), "", "cpu", None, "unload_idle", 0.0)
    expander = pool.get(str(tiny_model_dir), settings_)
    assert pool.get(str(tiny_model_dir), settings_) is expander
    assert expander.residency.value == "unload_idle" and expander.idle_minutes == 0.0
    assert expander.expand([TipoArgs(max_new_tokens=4).request("1girl", seed=1)])[0].ok
    assert not expander.is_loaded, "unload_idle with 0 minutes drops the model after each use"
    kept = pool.get(str(tiny_model_dir), WebuiSettings(str(tiny_model_dir), "", "cpu", None, "keep", 10.0))
    assert kept is not expander and kept.residency.value == "keep"
    kept.expand([TipoArgs(max_new_tokens=4).request("1girl", seed=1)])
    assert kept.is_loaded
    pool.clear()
    assert not kept.is_loaded, "replacing or clearing frees the model now"


def test_model_names_resolve_inside_the_models_folder(tmp_path):
    models = tmp_path / "TIPO"
    (models / "mine").mkdir(parents=True)
    (models / "x.gguf").write_bytes(b"")
    (models / "models--KBlueLeaf--TIPO-500M-ft").mkdir()
    assert model_location("mine", models) == str(models / "mine")
    assert model_location(str(tmp_path / "elsewhere"), models) == str(tmp_path / "elsewhere"), "the UI may use any path"
    assert model_location("TIPO-200M-ft2", models) == "KBlueLeaf/TIPO-200M-ft2"
    assert local_models(models) == ["mine", "x.gguf"] or local_models(models) == ["x.gguf"]
    assert local_models(tmp_path / "missing") == []


# -- gradio (skipped where gradio is not installed: CI has none; checked on 3.41 and 4.40) --


def test_ui_builds_every_control_in_schema_order_with_the_schema_defaults():
    gr = pytest.importorskip("gradio")
    from tipo import ui

    with gr.Blocks():
        controls = ui.build(lambda name: f"tipo_{name}")
    assert [c.value for c in controls.components] == extension.default_values()
    assert [c.elem_id for c in controls.components] == [f"tipo_{f.name}" for f in fields()]
    bounds = {f.name: (c.minimum, c.maximum) for f, c in zip(fields(), controls.components) if isinstance(c, gr.Slider)}
    assert bounds["temperature"] == (spec("temperature").minimum, spec("temperature").maximum)
    assert [k for _, k in controls.infotext_fields] and len(controls.infotext_fields) == len(fields())
    params = {"Prompt": "a", "TIPO": "True", "TIPO seed": "9"}
    read = {c.elem_id: fn(params) for c, fn in controls.infotext_fields}
    assert read["tipo_seed"] == 9 and read["tipo_enabled"] is True
    for f, c in zip(fields()[1:], controls.components[1:]):
        assert f"tipo-field-{f.name}" in c.elem_classes, "javascript/tipo.js and style.css find controls by class"
    assert "tipo-nl-prompt" in controls.components[[f.name for f in fields()].index("nl_prompt")].elem_classes
    assert controls.preview_text.interactive is False and "tipo-preview-html" in controls.preview_html.elem_classes
    assert controls.expand_now.elem_id == "tipo_expand_now" and "tipo-send-to-prompt" in controls.send_to_prompt.elem_classes
    with gr.Blocks():
        chosen = ui.build(lambda name: f"tipo_{name}", model="KBlueLeaf/TIPO-200M-ft2", local_models=["mine"])
    model = chosen.components[[f.name for f in fields()].index("model")]
    assert model.value == "KBlueLeaf/TIPO-200M-ft2" and "mine" in str(model.choices)


def test_script_wires_expand_now_to_the_tabs_prompt_and_size(webui):
    gr = pytest.importorskip("gradio")
    callbacks = dict(webui.script.on_after_component_elem_id)
    with gr.Blocks() as page:
        made = {part: gr.Textbox(elem_id=f"txt2img_{part}") for part in ("prompt", "width", "height")}
        for part, component in made.items():
            callbacks[f"txt2img_{part}"](types.SimpleNamespace(component=component))
        components = webui.script.ui(False)
        info = gr.Textbox(elem_id="generation_info_txt2img")
        callbacks["generation_info_txt2img"](types.SimpleNamespace(component=info))
    config = page.get_config_file()
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
    target = ids["script_txt2img_tipo_expand_now"]
    expand = [d for d in config["dependencies"] if target in [t[0] if isinstance(t, (list, tuple)) else t for t in d["targets"]]]
    assert len(expand) == 1
    assert expand[0]["inputs"][:3] == [made[p]._id for p in ("prompt", "width", "height")]
    assert expand[0]["inputs"][3:] == [c._id for c in components]
    assert expand[0]["outputs"] == [ids["script_txt2img_tipo_preview_text"], ids["script_txt2img_tipo_preview_html"]]


def test_settings_are_registered_with_their_components(webui):
    pytest.importorskip("gradio")
    opts = webui.shared.opts
    for callback in webui.callbacks["ui_settings"]:
        callback()
    assert {setting.key for setting in extension.SETTINGS} <= set(opts.data_labels)
    assert opts.data_labels["tipo_vram_policy"].component_args == {"choices": ["keep", "offload", "unload_idle"]}
    # No allow_custom_value: A1111 hands component_args to gradio 3.41's update(), which refuses it.
    assert opts.data_labels["tipo_model"].component_args == {"choices": [m.repo_id for m in MODELS if m.supported]}
    assert opts.tipo_nl_prompt_box == "accordion" and opts.tipo_unload_minutes == 10


def test_script_ui_is_the_schema_and_can_be_called_again(webui):
    """The API calls ``ui()`` again to read defaults: same controls, same values, no side effects."""
    gr = pytest.importorskip("gradio")
    values_seen = []
    for _ in range(2):
        with gr.Blocks():
            components = webui.script.ui(False)
        values_seen.append([c.value for c in components])
    assert values_seen[0] == values_seen[1] == extension.default_values()
    assert len(webui.script.infotext_fields) == len(fields()) and "TIPO seed" in webui.script.paste_field_names
    assert len(webui.callbacks["infotext_pasted"]) == 1
