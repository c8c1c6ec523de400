"""Model registry, resolution (local folders, the Hub cache, offline), loading and the cache.

No test reaches the network: the Hub is either switched off (HF_HUB_OFFLINE, local_files_only),
pointed at a closed loopback port, or replaced where only the call's arguments matter.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tipo.errors import HubUnreachableError, InvalidArgument, ModelNotFoundError, TipoError, TokenizerMismatchError
from tipo.models.cache import ModelCache
from tipo.models.device import choose_dtype
from tipo.models.download import download_command
from tipo.models.load import load_model
from tipo.models.registry import DEFAULT_MODEL, MODELS, REPO_FILES, find_model
from tipo.models.resolve import resolve_model

ROOT = Path(__file__).resolve().parent.parent


def copy_model(source: Path, target: Path, *, skip: tuple[str, ...] = ()) -> Path:
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.name not in skip:
            shutil.copyfile(item, target / item.name)
    return target


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def forbid_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("snapshot_download must not be called")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)


def fake_hub_cache(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """Lay ``model_dir`` out as huggingface_hub's cache does (refs/main -> snapshots/<sha>)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    return copy_model(model_dir, repo / "snapshots" / sha)


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_the_six_llama_models_and_the_two_unsupported_v2() -> None:
    supported = [m.repo_id for m in MODELS if m.supported]
    assert supported == [
        "KBlueLeaf/TIPO-500M-ft", "KBlueLeaf/TIPO-200M-ft2", "KBlueLeaf/TIPO-200M-ft",
        "KBlueLeaf/TIPO-500M", "KBlueLeaf/TIPO-200M", "KBlueLeaf/TIPO-100M",
    ]
    assert DEFAULT_MODEL == supported[0]
    unsupported = [m for m in MODELS if not m.supported]
    assert {m.repo_id for m in unsupported} == {"KBlueLeaf/TIPO-v2.1-1B-A200M", "KBlueLeaf/TIPOv2-1B-A200M"}
    assert all("trust_remote_code" in m.unsupported_reason for m in unsupported)
    assert "default" in find_model(DEFAULT_MODEL).label
    assert "speed" in find_model("KBlueLeaf/TIPO-200M-ft2").label


def test_find_model_by_id_or_bare_name_case_insensitively() -> None:
    assert find_model("kblueleaf/tipo-200m-FT2").repo_id == "KBlueLeaf/TIPO-200M-ft2"
    assert find_model("TIPO-100M").repo_id == "KBlueLeaf/TIPO-100M"
    assert find_model("TIPO-100") is None


def test_download_command_fits_the_installed_hub() -> None:
    import huggingface_hub

    major = int(huggingface_hub.__version__.split(".")[0])
    assert download_command("a/b") == ("hf download a/b" if major >= 1 else "huggingface-cli download a/b")
    assert download_command("a/b", "/x y").endswith("download a/b --cache-dir '/x y'")


def test_repo_files_are_only_what_loading_needs() -> None:
    assert "model.safetensors" in REPO_FILES and "tokenizer.model" in REPO_FILES
    assert not any(name.endswith((".gguf", ".bin", "tokenizer.json")) for name in REPO_FILES)


# ---------------------------------------------------------------------------------------------
# Resolving local folders


def test_local_folder_resolves_to_itself(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_downloads(monkeypatch)
    assert resolve_model(tiny_model_dir) == tiny_model_dir
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_downloads(monkeypatch)
    with pytest.raises(ModelNotFoundError, match="no model folder") as caught:
        resolve_model(tmp_path / "nothing" / "here")
    assert isinstance(caught.value, FileNotFoundError)
    with pytest.raises(ModelNotFoundError):
        resolve_model("./relative/missing")
    with pytest.raises(InvalidArgument):
        resolve_model("  ")


def test_folder_without_safetensors_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "bin-only", skip=("model.safetensors",))
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelNotFoundError, match="only safetensors") as caught:
        resolve_model(folder)
    assert "pytorch_model.bin" in str(caught.value)


def test_folder_without_config_or_tokenizer_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(copy_model(tiny_model_dir, tmp_path / "a", skip=("config.json",)))
    with pytest.raises(ModelNotFoundError, match="tokenizer.model"):
        resolve_model(copy_model(tiny_model_dir, tmp_path / "b", skip=("tokenizer.model",)))
    with pytest.raises(ModelNotFoundError, match="not a folder"):
        resolve_model(tiny_model_dir / "config.json")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model_type": "mistral"}, "'mistral'"),
        ({"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
    ],
)
def test_non_llama_config_is_refused(tiny_model_dir: Path, tmp_path: Path, changes: dict, message: str) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "other")
    edit_config(folder, **changes)
    with pytest.raises(ModelNotFoundError, match=message):
        resolve_model(folder)
    with pytest.raises(ModelNotFoundError, match=message):
        load_model(folder)


# ---------------------------------------------------------------------------------------------
# Resolving Hub ids


def test_unknown_repo_id_is_refused_before_any_network(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_downloads(monkeypatch)
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("someone/some-model")
    message = str(caught.value)
    assert "not a known TIPO model" in message
    assert all(m.repo_id in message for m in MODELS if m.supported)


def test_unsupported_v2_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_downloads(monkeypatch)
    with pytest.raises(ModelNotFoundError, match="not supported yet"):
        resolve_model("KBlueLeaf/TIPO-v2.1-1B-A200M")


def test_download_asks_only_for_the_needed_files(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[dict] = []

    def snapshot_download(**kwargs: object) -> str:
        calls.append(kwargs)
        return str(tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert resolve_model("TIPO-200M-ft2", cache_dir=tmp_path) == tiny_model_dir
    assert resolve_model("someone/some-model", allow_unknown_repo=True) == tiny_model_dir
    assert calls[0] == {
        "repo_id": "KBlueLeaf/TIPO-200M-ft2", "allow_patterns": list(REPO_FILES), "cache_dir": str(tmp_path)
    }
    assert calls[1]["repo_id"] == "someone/some-model" and "local_files_only" not in calls[1]


def test_snapshot_without_safetensors_is_refused(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    folder = copy_model(tiny_model_dir, tmp_path / "snap", skip=("model.safetensors",))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: str(folder))
    with pytest.raises(ModelNotFoundError, match="only safetensors"):
        resolve_model("KBlueLeaf/TIPO-100M")


def test_cached_model_resolves_offline(tiny_model_dir: Path, tmp_path: Path) -> None:
    snapshot = fake_hub_cache(tmp_path / "hub", "KBlueLeaf/TIPO-200M-ft2", tiny_model_dir)
    folder = resolve_model("KBlueLeaf/TIPO-200M-ft2", cache_dir=tmp_path / "hub", local_files_only=True)
    assert folder.resolve() == snapshot.resolve()
    assert load_model(folder).name == "KBlueLeaf/TIPO-200M-ft2"


def test_empty_cache_with_local_files_only(tmp_path: Path) -> None:
    with pytest.raises(HubUnreachableError) as caught:
        resolve_model("KBlueLeaf/TIPO-200M-ft2", cache_dir=tmp_path, local_files_only=True)
    assert isinstance(caught.value, ConnectionError)
    assert download_command("KBlueLeaf/TIPO-200M-ft2", tmp_path) in str(caught.value)


def test_hf_hub_offline_with_empty_cache_says_what_to_do(tmp_path: Path) -> None:
    """A fresh interpreter, as a user would start it: the hub reads HF_HUB_OFFLINE at import."""
    script = textwrap.dedent(
        """
        import socket
        def refuse(self, address):
            raise AssertionError(f"network used: {address!r}")
        socket.socket.connect = refuse
        from tipo.errors import HubUnreachableError
        from tipo.models.resolve import resolve_model
        try:
            resolve_model("KBlueLeaf/TIPO-200M-ft2")
        except HubUnreachableError as error:
            print("MESSAGE:", error)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    message = done.stdout.split("MESSAGE:", 1)[1]
    for needed in ("HF_HUB_OFFLINE=0", download_command("KBlueLeaf/TIPO-200M-ft2"), "--model PATH", "hf-home"):
        assert needed in message


def closed_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_refused_connection_with_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_loopback_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(HubUnreachableError) as caught:
        resolve_model("KBlueLeaf/TIPO-200M", cache_dir=tmp_path)
    assert time.monotonic() - started < 60
    message = str(caught.value)
    assert "check the internet connection" in message
    assert download_command("KBlueLeaf/TIPO-200M", tmp_path) in message
    assert "Connect" in message  # the transport error, not only the hub's wrapper
    assert isinstance(caught.value, TipoError)


# ---------------------------------------------------------------------------------------------
# Loading


def test_load_model_on_cpu(tiny_model_dir: Path) -> None:
    import torch

    loaded = load_model(tiny_model_dir)
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert loaded.name == tiny_model_dir.name and loaded.path == tiny_model_dir
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert loaded.tokenizer.vocab_size == loaded.model.config.vocab_size == 32013
    assert loaded.tokenizer.encode("tag: 1girl")[0] == 1


def test_load_model_in_bfloat16_and_never_float16_on_cpu(tiny_model_dir: Path) -> None:
    import torch

    assert {p.dtype for p in load_model(tiny_model_dir, dtype="bf16").model.parameters()} == {torch.bfloat16}
    with pytest.raises(InvalidArgument, match="float16 on CPU"):
        load_model(tiny_model_dir, "cpu", torch.float16)


def test_tokenizer_that_does_not_fit_the_model_fails_before_the_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "small-vocab")
    edit_config(folder, vocab_size=32000)
    (folder / "model.safetensors").write_bytes(b"never read")
    with pytest.raises(TokenizerMismatchError):
        load_model(folder)


def test_damaged_weights_are_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "damaged")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(TipoError, match="damaged"):
        load_model(folder)


def test_dtype_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert choose_dtype(torch.device("cpu")) == torch.float32
    assert choose_dtype(torch.device("mps")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_dtype(torch.device("cuda"), weights_dtype="bfloat16") == torch.bfloat16
    assert choose_dtype(torch.device("cuda"), weights_dtype="float32") == torch.bfloat16
    assert choose_dtype(torch.device("cuda"), weights_dtype="float16") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_dtype(torch.device("cuda"), weights_dtype="bfloat16") == torch.float16
    assert choose_dtype(torch.device("cpu"), "float32") == torch.float32
    with pytest.raises(InvalidArgument):
        choose_dtype(torch.device("cpu"), "int8")


# ---------------------------------------------------------------------------------------------
# ModelCache


def test_model_cache_loads_once_under_16_threads(tiny_model_dir: Path) -> None:
    calls: list[tuple] = []
    calls_lock = threading.Lock()

    def counting_loader(path, device=None, dtype=None):
        with calls_lock:
            calls.append((path, device, dtype))
        time.sleep(0.2)  # keep the door open for the other threads
        return load_model(path, device, dtype)

    cache = ModelCache(counting_loader)
    barrier = threading.Barrier(16)
    results: list[object] = [None] * 16
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results[index] = cache.get(tiny_model_dir)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(calls) == 1
    assert all(result is results[0] for result in results)
    assert cache.get(str(tiny_model_dir), "cpu", "float32") is results[0]
    assert len(calls) == 1


def test_model_cache_keys_by_dtype_and_keeps_the_newest(tiny_model_dir: Path) -> None:
    cache = ModelCache(max_models=1)
    first = cache.get(tiny_model_dir)
    second = cache.get(tiny_model_dir, dtype="bfloat16")
    assert first is not second and len(cache) == 1
    assert cache.get(tiny_model_dir, dtype="bfloat16") is second
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(InvalidArgument):
        ModelCache(max_models=0)


def test_model_cache_does_not_keep_failures(tiny_model_dir: Path) -> None:
    attempts: list[int] = []

    def flaky_loader(path, device=None, dtype=None):
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("disk hiccup")
        return load_model(path, device, dtype)

    cache = ModelCache(flaky_loader)
    with pytest.raises(OSError):
        cache.get(tiny_model_dir)
    assert cache.get(tiny_model_dir).name == tiny_model_dir.name
    assert len(attempts) == 2


# ---------------------------------------------------------------------------------------------
# tools/make_tiny_model.py


def test_tiny_model_is_deterministic_and_shaped_like_a_tipo_repo(tiny_model_dir: Path, tmp_path: Path) -> None:
    from conftest import load_tool

    make_tiny_model = load_tool("make_tiny_model").make_tiny_model
    again = make_tiny_model(tmp_path / "again", seed=0)
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert sorted(p.name for p in again.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.model",
         "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]
    )
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights
    config = json.loads((again / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        32013, 1, 2, 2,
    )
    assert config["tie_word_embeddings"] is False and config["model_type"] == "llama"
