"""Hostile input (issue 6): ban patterns made to hang or exhaust memory, model names that
point outside the models folder or at other repos, numbers that are not numbers, malformed
API args, pasted infotext written to run code, and pickle files placed next to the weights.

Each case must be refused with a message naming the value, or run in bounded time and
memory, and never execute what it carries. Offline, CPU, the tiny model.
"""

from __future__ import annotations

import builtins
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_models import copy_model

from tipo.api import Expander
from tipo.args import TipoArgs, fields, spec
from tipo.bans import MATCH_BUDGET_S, MAX_REPEAT_PRODUCT, BanList
from tipo.engine.base import SamplingSettings
from tipo.errors import BanPatternError, InvalidArgument, ModelNotFoundError, UnsupportedModelError
from tipo.extension import check_api_payload, parse_script_args, paste_values
from tipo.models.load import load_model
from tipo.models.registry import DEFAULT_MODEL
from tipo.models.resolve import resolve_model, resolve_user_model
from tipo.request import ExpandRequest


def lookup(name: str) -> str | None:
    return None


# -- ban lists -------------------------------------------------------------------------------

CATASTROPHIC = ["/(a|aa)+$/", "/(.*a){20}/", "/(?R)*/", "/(?:foo){e<=30}/", "/(a+)+b/", "/((a*)*)*$/", "*a*a*a*a*a*a*a*a*a*b"]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_ban_pattern_runs_in_bounded_time(pattern: str) -> None:
    bans = BanList.compile([pattern])
    started = time.perf_counter()
    verdicts = [bans.bans_tag("a" * 40 + "!") for _ in range(20)] + [bans.bans_tag("a" * 5000 + "!")]
    elapsed = time.perf_counter() - started
    assert not any(verdicts)
    assert elapsed < 10 * MATCH_BUDGET_S, "generous: one 50 ms timeout per pattern, a 1 s budget per request"


def test_many_slow_patterns_share_one_time_budget(caplog) -> None:
    """2000 patterns that each time out would take 100 s; the request's budget stops them."""
    bans = BanList.compile([f"/(a|aa)+{i}$/" for i in range(2000)])
    started = time.perf_counter()
    assert not bans.bans_tag("a" * 40 + "!")
    assert not bans.bans_tag("a" * 40 + "!")
    assert time.perf_counter() - started < 10 * MATCH_BUDGET_S, "generous bound; without the budget: about 100 s"
    assert "every regex and glob is switched off" in caplog.text
    assert BanList.compile(["/x+/"]).bans_tag("xxx"), "the budget is per request, not shared"


@pytest.mark.parametrize(
    "pattern", ["/a{1000000000}/", "/(?:a{1000}){1000}/", "/((a{100}){100}){100}/", "/a{5,}{100000}/", "/x{,99999}/"]
)
def test_ban_pattern_that_would_unroll_into_gigabytes_is_refused_by_name(pattern: str) -> None:
    """``regex`` unrolls counted repeats when compiling: ``a{1000000000}`` is killed for memory."""
    with pytest.raises(BanPatternError, match=f"at most {MAX_REPEAT_PRODUCT}") as caught:
        BanList.compile(["fine", pattern])
    assert repr(pattern)[:40] in str(caught.value)


def test_counted_repeats_of_ordinary_size_still_work() -> None:
    bans = BanList.compile([r"/[a-z]{2,30}_\{1000000\}/", "/(?:ab){3}/", "/x{1000}/"])
    assert bans.bans_tag("ababab") and bans.bans_tag("hat_{1000000}") and not bans.bans_tag("abab")


def test_long_and_numerous_entries_are_bounded() -> None:
    with pytest.raises(BanPatternError, match="longer than 500 characters"):
        BanList.compile(["/" + "a" * 600 + "/"])
    bans = BanList.compile([f"name{i}" for i in range(100_000)])
    assert bans.bans_tag("name99999") and not bans.bans_tag("name100000")


# -- model names from the API, the UI and pasted infotext ------------------------------------


@pytest.fixture
def models_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A WebUI models/TIPO folder: one model folder, one .gguf file, links in and out."""
    root = tmp_path / "models" / "TIPO"
    copy_model(tiny_model_dir, root / "my-tipo")
    (root / "tipo.gguf").write_bytes(b"GGUF")
    (root / "notes.txt").write_text("not a model")
    outside = copy_model(tiny_model_dir, tmp_path / "elsewhere")
    try:
        (root / "link-out").symlink_to(outside, target_is_directory=True)
        (root / "link-in").symlink_to(root / "my-tipo", target_is_directory=True)
    except OSError:  # no symlinks on this system (Windows without the privilege)
        pass
    return root


@pytest.fixture
def no_downloads(monkeypatch) -> list[tuple[str, Any]]:
    """Record every download the hub is asked for (there must be none)."""
    import huggingface_hub

    calls: list[tuple[str, Any]] = []
    for name in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, name, lambda *a, _name=name, **k: calls.append((_name, k)))
        for module in ("huggingface_hub.file_download", "huggingface_hub._snapshot_download"):
            if module in sys.modules and hasattr(sys.modules[module], name):
                monkeypatch.setattr(sys.modules[module], name, lambda *a, _name=name, **k: calls.append((_name, k)))
    return calls


HOSTILE_NAMES = {
    "absolute path": "/etc",
    "absolute path to the models folder's model": None,  # filled in by the test
    "parent": "..",
    "current": ".",
    "traversal": "../elsewhere",
    "traversal inside a name": "my-tipo/../../elsewhere",
    "home": "~/models",
    "windows drive": "C:\\models\\tipo",
    "windows drive-relative": "C:tipo",
    "windows UNC": "\\\\server\\share\\tipo",
    "backslash traversal": "..\\elsewhere",
    "url": "https://huggingface.co/KBlueLeaf/TIPO-500M-ft",
    "hub url": "hf://KBlueLeaf/TIPO-500M-ft",
    "file url": "file:///etc/passwd",
    "windows device": "nul",
    "windows device with suffix": "con.gguf",
    "trailing dot": "my-tipo.",
    "symlink leaving the folder": "link-out",
}


@pytest.mark.parametrize("label", HOSTILE_NAMES)
def test_path_like_model_names_are_refused_before_anything_is_read(label: str, models_dir: Path, no_downloads) -> None:
    name = HOSTILE_NAMES[label] or str(models_dir / "my-tipo")
    if label == "symlink leaving the folder" and not (models_dir / "link-out").is_symlink():
        pytest.skip("no symlinks here")
    with pytest.raises(InvalidArgument) as caught:
        resolve_user_model(name, models_dir)
    assert repr(name.strip())[:60] in str(caught.value)
    assert no_downloads == []


@pytest.mark.parametrize("name", ["someone/some-model", "KBlueLeaf/not-a-tipo", "gpt2", "my-tipo-typo", "models--x--y"])
def test_names_that_are_neither_registry_ids_nor_models_of_the_folder_are_refused(
    name: str, models_dir: Path, no_downloads
) -> None:
    with pytest.raises(ModelNotFoundError, match="neither a known TIPO model nor a model in the TIPO models folder"):
        resolve_user_model(name, models_dir)
    assert no_downloads == []


@pytest.mark.parametrize("name", [None, 42, ["my-tipo"], b"my-tipo", "", "   ", "my\x00tipo", "my\ntipo", "x" * 300])
def test_model_names_of_the_wrong_type_or_shape_are_refused(name: object, models_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="model="):
        resolve_user_model(name, models_dir)


def test_registry_ids_and_models_of_the_folder_are_accepted(models_dir: Path, no_downloads) -> None:
    assert resolve_user_model(" KBlueLeaf/TIPO-200M-ft2 ", models_dir) == "KBlueLeaf/TIPO-200M-ft2"
    assert resolve_user_model("tipo-200m-ft2", models_dir) == "KBlueLeaf/TIPO-200M-ft2"
    assert resolve_user_model(DEFAULT_MODEL, None) == DEFAULT_MODEL
    assert resolve_user_model("my-tipo", models_dir) == str((models_dir / "my-tipo").resolve())
    assert resolve_user_model("tipo.gguf", models_dir) == str((models_dir / "tipo.gguf").resolve())
    if (models_dir / "link-in").is_symlink():
        assert resolve_user_model("link-in", models_dir) == str((models_dir / "my-tipo").resolve())
    with pytest.raises(ModelNotFoundError, match="neither a model folder nor a .gguf file"):
        resolve_user_model("notes.txt", models_dir)
    with pytest.raises(UnsupportedModelError, match="not supported yet"):
        resolve_user_model("KBlueLeaf/TIPOv2-1B-A200M", models_dir)
    with pytest.raises(ModelNotFoundError):
        resolve_user_model("my-tipo", None)
    assert no_downloads == []
    # What it returns loads: the checked path is a model the Expander takes as it is.
    folder = resolve_user_model("my-tipo", models_dir)
    (result,) = Expander(folder, device="cpu", lookup=lookup).expand(
        [ExpandRequest("1girl", seed=1, max_retry=0, sampling=SamplingSettings(max_new_tokens=4))]
    )
    assert result.ok


def test_repo_outside_the_registry_is_refused_before_any_download(no_downloads) -> None:
    for name in ("someone/some-model", "openai-community/gpt2", "KBlueLeaf/Kohaku-XL-Zeta"):
        with pytest.raises(ModelNotFoundError, match="not a known TIPO model"):
            resolve_model(name)
    assert no_downloads == []


def test_allowed_unknown_repo_must_show_a_llama_config_before_its_weights(tmp_path: Path, monkeypatch) -> None:
    """The opt-in for other repos (``allow_unknown_repo``) fetches config.json alone first."""
    import huggingface_hub

    calls: list[list[str]] = []

    def snapshot_download(repo_id: str, allow_patterns: list[str], **kwargs: Any) -> str:
        calls.append(allow_patterns)
        folder = tmp_path / repo_id.replace("/", "--")
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(UnsupportedModelError, match="model_type is 'bert'"):
        resolve_model("someone/bert", allow_unknown_repo=True)
    assert calls == [["config.json"]]


def test_sharded_index_naming_files_outside_the_folder_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "sharded", skip=("model.safetensors",))
    for shard in ("../../etc/passwd", "/etc/passwd", "sub/x.safetensors", "model.bin"):
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": shard}}))
        with pytest.raises(ModelNotFoundError, match="shards must be"):
            resolve_model(folder)
        with pytest.raises(ModelNotFoundError, match="shards must be"):
            load_model(folder)


# -- numbers and API args --------------------------------------------------------------------

BAD_VALUES = [
    ("temperature", float("nan")), ("temperature", "nan"), ("temperature", "inf"), ("temperature", "1e999"),
    ("temperature", -1), ("temperature", 0), ("top_p", float("-inf")), ("top_p", 2), ("top_k", -1), ("top_k", 1.5),
    ("top_k", True), ("top_k", "12abc"), ("min_p", 1.0), ("min_p", -0.1), ("repetition_penalty", float("inf")),
    ("max_new_tokens", 0), ("max_new_tokens", -5), ("max_new_tokens", 10**12), ("max_new_tokens", float("nan")),
    ("seed", float("nan")), ("seed", float("inf")), ("seed", -2), ("seed", 1.5), ("seed", "0x10"), ("seed", None),
    ("mode", "../../etc"), ("mode", None), ("tag_length", 3), ("ban_tags", ["a"]), ("ban_tags", {"$ne": 1}),
    ("strict", "yes"), ("strict", 1), ("enabled", "1"), ("model", None), ("model", 5), ("template", b"bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[f"{n}={v!r}"[:40] for n, v in BAD_VALUES])
def test_bad_numbers_and_types_are_refused_naming_the_field(name: str, value: Any) -> None:
    with pytest.raises(InvalidArgument, match=f"{name}="):
        TipoArgs.from_dict({name: value})
    with pytest.raises(InvalidArgument, match=f"{name}="):
        parse_script_args([{name: value}])
    with pytest.raises(InvalidArgument, match=f"{name}="):
        check_api_payload({"alwayson_scripts": {"TIPO": {"args": [{"enabled": True, name: value}]}}})


@pytest.mark.parametrize(
    "settings",
    [{"temperature": float("nan")}, {"top_p": float("inf")}, {"top_k": -3}, {"min_p": float("nan")},
     {"repetition_penalty": -1.0}, {"max_new_tokens": 0}, {"max_new_tokens": 2.0}],
)  # fmt: skip
def test_python_api_sampling_refuses_non_finite_and_negative_numbers(settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match=next(iter(settings)) + "="):
        SamplingSettings(**settings)


@pytest.mark.parametrize(
    "changes",
    [{"width": 0}, {"height": -64}, {"width": float("nan")}, {"height": 1 << 20}, {"seed": 1.5}, {"seed": True},
     {"max_retry": -1}, {"max_retry": 10**9}, {"tag_length": "huge"}, {"mode": "tag_only"}],
)  # fmt: skip
def test_python_api_request_refuses_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match=next(iter(changes)) + "="):
        ExpandRequest("1girl", **changes)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([True] * (len(fields()) + 1), f"at most {len(fields())} args"),
        (["true"], "args\\[0\\] must be true/false"),
        ([None], "args\\[0\\] must be true/false"),
        ([1], "args\\[0\\] must be true/false"),
        ([[True]], "args\\[0\\] must be true/false"),
        ([{1: "x"}], "need string keys"),
        ([{"seeed": 1}], "unknown TIPO argument\\(s\\) \\['seeed'\\]"),
        ([{"seed": {"$gt": 1}}], "seed="),
        ([True, "no-such-mode"], "mode='no-such-mode'"),
        ([True, "tag_only", "", "long", "long", "", "", "", "not a number"], "seed='not a number'"),
    ],
)
def test_wrong_arg_counts_and_types_over_the_api(values: list[Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_script_args(values)


@pytest.mark.parametrize("args", [{"seed": 1}, "enabled", 7, None])
def test_api_args_slot_that_is_not_a_list_is_named(args: Any) -> None:
    with pytest.raises(InvalidArgument, match=r'\["args"\] must be a list'):
        check_api_payload({"alwayson_scripts": {"TIPO": {"args": args}}})


# -- pasted infotext -------------------------------------------------------------------------


def test_hostile_pasted_infotext_is_never_evaluated(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pasted text reached eval/exec/pickle")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    params = {spec(f.name).infotext: code for f in fields()}
    params.update({"TIPO seed": "1e999999", "TIPO temperature": "nan", "TIPO top k": "__import__('os')",
                   "TIPO max new tokens": "9" * 5000, "TIPO mode": 'json:{"a": 1}', "TIPO ban tags": 'json:"' + code})  # fmt: skip
    values = paste_values(params)
    assert not marker.exists()
    defaults = {f.name: f.default for f in fields()}
    for name in ("seed", "temperature", "top_k", "max_new_tokens", "mode", "tag_length", "strict"):
        assert values[name] == defaults[name], name
    assert values["ban_tags"] == 'json:"' + code, "a text is kept as text"
    assert values["model"] == code  # a text: resolve_user_model refuses it before anything loads


# -- pickle files ----------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: what a malicious ``pytorch_model.bin`` could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _plant_pickles(folder: Path, marker: Path) -> None:
    import torch

    for name in ("pytorch_model.bin", "model.pt", "model.ckpt", "training_args.bin"):
        torch.save({"model.embed_tokens.weight": _Payload(marker)}, str(folder / name))


def test_planted_pickle_is_armed(tmp_path: Path) -> None:
    """The payload does run when torch unpickles it, so the tests below prove something."""
    import torch

    armed = tmp_path / "armed"
    _plant_pickles(tmp_path, armed)
    torch.load(str(tmp_path / "pytorch_model.bin"), weights_only=False)
    assert armed.exists()


@pytest.fixture
def record_torch_load(monkeypatch) -> list[Any]:
    import torch

    calls: list[Any] = []
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[:1])
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    return calls


def test_folder_with_only_pickle_weights_is_refused(tiny_model_dir: Path, tmp_path: Path, record_torch_load) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "pickled", skip=("model.safetensors",))
    marker = tmp_path / "pwned"
    _plant_pickles(folder, marker)
    for attempt in (lambda: resolve_model(folder), lambda: load_model(folder),
                    lambda: Expander(folder, device="cpu", lookup=lookup).expand([ExpandRequest("1girl")])):  # fmt: skip
        with pytest.raises(ModelNotFoundError, match="only safetensors or GGUF weights are loaded") as caught:
            attempt()
        assert "pytorch_model.bin" in str(caught.value)
    assert not marker.exists() and record_torch_load == []


def test_pickles_next_to_safetensors_are_never_opened(tiny_model_dir: Path, tmp_path: Path, record_torch_load) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "both")
    marker = tmp_path / "pwned"
    _plant_pickles(folder, marker)
    loaded = load_model(folder)  # transformers, as HFEngine loads it
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    (result,) = Expander(folder, device="cpu", lookup=lookup).expand(  # the fast engine
        [ExpandRequest("1girl", seed=1, max_retry=0, sampling=SamplingSettings(max_new_tokens=4))]
    )
    assert result.ok
    assert not marker.exists() and record_torch_load == []
