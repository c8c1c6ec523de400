"""The fault matrix (issue 6, "Faults"): every fault ends with a clear message, the generation
going on with the original prompts (strict mode: an error that says why), and nothing
half-loaded: once the fault is gone, the same expander loads and expands normally.

Offline, CPU, the tiny model. Out of GPU memory is simulated by an engine wrapper that raises
``torch.cuda.OutOfMemoryError`` as CUDA would. Download faults are in the second half.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
import torch
from test_control import OutOfMemoryOnDevice
from test_engine_hf import TIPO_IDS
from test_models import closed_loopback_port, copy_model, edit_config, fake_hub_cache

from tipo.api import Expander, _CpuFallback
from tipo.args import TipoArgs
from tipo.engine.base import Control, GenerationRequest, GenerationResult, Progress, SamplingSettings
from tipo.engine.fast import FastEngine
from tipo.engine.hf import HFEngine
from tipo.errors import (
    GenerationError,
    HubUnreachableError,
    Interrupted,
    ModelNotFoundError,
    TipoError,
    TokenizerMismatchError,
    UnsupportedModelError,
)
from tipo.extension import Job, run_job
from tipo.models.registry import REPO_FILES
from tipo.models.resolve import resolve_model
from tipo.pipeline import expand_batch
from tipo.plan import Mode
from tipo.request import ExpandRequest
from tipo.syntax import parse_prompt
from tipo.tokenizer import TipoTokenizer

FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "tipo-tokenizer"
ORIGINALS = ("1girl, solo, <lora:style:0.8>", "scenery, (sky:1.2), __weather__")
JOB = Job(prompts=ORIGINALS, seeds=(11, 12), tipo_seed=5)


def lookup(name: str) -> str | None:
    return {"hatsune miku": "characters"}.get(name)


def tipo_args(model: str | Path, **changes: Any) -> TipoArgs:
    """Cheap settings: one short tag pass of at most 8 new tokens."""
    values = {"enabled": True, "model": str(model), "seed": 5, "mode": "tag_only", "tag_length": "very_short",
              "max_new_tokens": 8, **changes}  # fmt: skip
    return TipoArgs(**values)


@pytest.fixture(scope="module")
def tokenizer() -> TipoTokenizer:
    return TipoTokenizer.from_dir(FIXTURE_TOKENIZER)


#: The cheapest expansion that shows a model works: one try of 4 new tokens per prompt.
CHEAP = [ExpandRequest(prompt, seed=seed, mode=Mode.TAG_ONLY, max_retry=0, sampling=SamplingSettings(max_new_tokens=4))
         for prompt, seed in zip(ORIGINALS, JOB.seeds)]  # fmt: skip


@pytest.fixture(scope="module")
def healthy(tiny_model_dir: Path) -> list[str]:
    """What an intact model makes of :data:`CHEAP`."""
    results = Expander(tiny_model_dir, device="cpu", lookup=lookup).expand(CHEAP, strict=True)
    assert [r.prompt for r in results] != list(ORIGINALS)
    return [r.prompt for r in results]


# -- model files -----------------------------------------------------------------------------


def _rewrite_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _cut(name: str, keep: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: keep(len(data))])

    return damage


def _overwrite(name: str, offset: int, junk: bytes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        data[offset : offset + len(junk)] = junk
        (folder / name).write_bytes(bytes(data))

    return damage


def _strip_tipo_tokens(folder: Path) -> None:
    (folder / "added_tokens.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items() if int(k) < 32000}
    config.pop("additional_special_tokens")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special = json.loads((folder / "special_tokens_map.json").read_text())
    special.pop("additional_special_tokens", None)
    (folder / "special_tokens_map.json").write_text(json.dumps(special))


@dataclass(frozen=True)
class Fault:
    name: str
    damage: Callable[[Path], None]
    message: str  # a regex the reason must match
    kind: type[TipoError]


LOAD_FAULTS = [
    Fault("folder missing", lambda f: shutil.rmtree(f), r"no model folder at", ModelNotFoundError),
    Fault("config.json missing", lambda f: (f / "config.json").unlink(), r"holds no config\.json", ModelNotFoundError),
    Fault("weights missing", lambda f: (f / "model.safetensors").unlink(), r"has no model\.safetensors", ModelNotFoundError),
    Fault("tokenizer.model missing", lambda f: (f / "tokenizer.model").unlink(), r"has no tokenizer\.model",
          ModelNotFoundError),
    Fault("weights truncated to half", _cut("model.safetensors", lambda n: n // 2),
          r"model\.safetensors is damaged or incomplete \(its header describes \d+ bytes of tensors, the file holds",
          ModelNotFoundError),
    Fault("weights cut inside the header", _cut("model.safetensors", lambda n: 100),
          r"damaged or incomplete \(100 bytes, header length", ModelNotFoundError),
    Fault("weights empty", _cut("model.safetensors", lambda n: 0), r"damaged or incomplete", ModelNotFoundError),
    Fault("weights header corrupt", _overwrite("model.safetensors", 9, b"\xff" * 32),
          r"damaged or incomplete \(unreadable header", ModelNotFoundError),
    Fault("weights header offsets corrupt", _overwrite("model.safetensors", 8, b'{"x":{"dtype":"F32","shape":[1],'
          b'"data_offsets":[0,999]}}' + b" " * 20), r"damaged or incomplete", ModelNotFoundError),
    Fault("tensor missing", lambda f: _rewrite_weights(f, lambda s: s.pop("lm_head.weight")), r"'lm_head\.weight'",
          ModelNotFoundError),
    Fault("tensor of the wrong shape", lambda f: _rewrite_weights(f, lambda s: s.update({"model.norm.weight": torch.ones(32)})),
          r"has shape \(32,\) but config\.json implies \(64,\).*damaged", ModelNotFoundError),
    Fault("not a LLaMA config", lambda f: edit_config(f, model_type="mistral"), r"only LLaMA TIPO models",
          UnsupportedModelError),
    Fault("config.json not JSON", lambda f: (f / "config.json").write_text("{oops"), r"cannot be read as JSON",
          ModelNotFoundError),
    Fault("tokenizer without TIPO's tokens", _strip_tipo_tokens, r"is not TIPO's: missing <\|empty\|>",
          TokenizerMismatchError),
    Fault("tokenizer and model vocabulary differ", lambda f: edit_config(f, vocab_size=32000),
          r"do not belong together", TokenizerMismatchError),
    Fault("tokenizer.model not SentencePiece", lambda f: (f / "tokenizer.model").write_bytes(b"\x00garbage" * 10),
          r"is not a SentencePiece model", TokenizerMismatchError),
]  # fmt: skip


@pytest.mark.parametrize("fault", LOAD_FAULTS, ids=[f.name for f in LOAD_FAULTS])
def test_load_fault_keeps_the_prompts_says_why_and_recovers(
    fault: Fault, tiny_model_dir: Path, tmp_path: Path, healthy: list[str]
) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    fault.damage(folder)
    expander = Expander(folder, device="cpu", lookup=lookup)

    result = run_job(JOB, tipo_args(folder), expander)
    assert result.prompts == ORIGINALS
    assert all(error and re.search(fault.message, error) for error in result.errors), result.errors
    assert result.infotext["TIPO error"] == result.errors[0]
    assert not expander.is_loaded and expander._tokenizer is None, "nothing half-loaded"

    with pytest.raises(GenerationError, match=fault.message) as caught:
        run_job(JOB, tipo_args(folder, strict=True), expander)
    assert isinstance(caught.value.__cause__, fault.kind)
    assert not expander.is_loaded

    shutil.rmtree(folder, ignore_errors=True)
    copy_model(tiny_model_dir, folder)
    assert [r.prompt for r in expander.expand(CHEAP, strict=True)] == healthy
    assert expander.is_loaded


# -- out of GPU memory ------------------------------------------------------------------------


class OutOfMemoryAbove:
    """The engine, except that a call of more than ``fits`` rows raises CUDA's out-of-memory
    error (before any work, as an allocation of the KV cache would)."""

    def __init__(self, engine: Any, fits: int) -> None:
        self._engine = engine
        self.fits = fits
        self.context_length = engine.context_length
        self.calls: list[int] = []

    def generate(self, requests: Sequence[GenerationRequest], control: Control | None = None) -> list[GenerationResult]:
        self.calls.append(len(requests))
        if len(requests) > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(requests)} GiB")
        return self._engine.generate(requests, control=control)


@pytest.fixture(scope="module")
def fast_engine(tiny_llama: Any) -> FastEngine:
    return FastEngine.from_model(tiny_llama, TIPO_IDS)


#: Six prompts of two passes each (tags, then NL), one try per pass.
SIX = [ExpandRequest(f"1girl, tag{i}, <lora:l{i}:1>", seed=i, tag_length="very_short", nl_length="very_short",
                     max_retry=0, sampling=SamplingSettings(max_new_tokens=6)) for i in range(6)]  # fmt: skip


@pytest.fixture(scope="module")
def six_expected(fast_engine: FastEngine, tokenizer: TipoTokenizer) -> list[Any]:
    results = expand_batch(SIX, fast_engine, tokenizer, lookup, strict=True)
    assert [r.generations for r in results] == [2] * 6
    return results


def test_out_of_memory_splits_the_batch_and_changes_no_text(fast_engine, tokenizer, six_expected, caplog) -> None:
    small = OutOfMemoryAbove(fast_engine, fits=2)
    assert expand_batch(SIX, small, tokenizer, lookup, strict=True) == six_expected
    assert small.calls == [6, 3, 1, 2, 3, 1, 2, 2, 2, 2], "halves until a part fits; the second pass goes by 2"
    assert "ran it in parts of at most 2 row(s)" in caplog.text


def test_row_that_never_fits_keeps_its_prompt_and_says_what_to_do(fast_engine, tokenizer) -> None:
    requests = SIX
    results = expand_batch(requests, OutOfMemoryAbove(fast_engine, fits=0), tokenizer, lookup)
    assert [r.prompt for r in results] == [r.prompt for r in requests]
    for result in results:
        assert result.error is not None
        assert "out of memory even for this prompt alone (OutOfMemoryError: CUDA out of memory" in result.error
        assert "smaller batch" in result.error and "CPU" in result.error
    with pytest.raises(GenerationError, match="out of memory") as caught:
        expand_batch(requests, OutOfMemoryAbove(fast_engine, fits=0), tokenizer, lookup, strict=True)
    assert isinstance(caught.value.__cause__, torch.cuda.OutOfMemoryError)


def test_out_of_memory_splits_down_to_one_row_which_runs_on_the_cpu(fast_engine, tokenizer, six_expected) -> None:
    """The pipeline's split and the Expander's CPU fallback together: a GPU on which nothing
    fits still expands every prompt, each as it would be anywhere else."""
    gpu = OutOfMemoryOnDevice(fast_engine)
    assert expand_batch(SIX[:3], _CpuFallback(gpu), tokenizer, lookup, strict=True) == six_expected[:3]
    assert gpu.calls == [3, 1, 2, 1, 1] + [1] * 3, "each row alone on the CPU; the second pass by 1"


def test_interrupt_while_splitting_is_not_taken_for_out_of_memory(fast_engine, tokenizer) -> None:
    class StopsOnThirdCall(OutOfMemoryAbove):
        def generate(self, requests, control=None):  # type: ignore[no-untyped-def]
            if len(self.calls) == 2:
                self.calls.append(len(requests))
                raise Interrupted("stopped by the caller")
            return super().generate(requests, control)

    requests = SIX
    results = expand_batch(requests, StopsOnThirdCall(fast_engine, fits=1), tokenizer, lookup, strict=True)
    assert [r.prompt for r in results] == [r.prompt for r in requests]
    assert all(r.error == "interrupted: stopped by the caller" for r in results)


# -- interrupt, overlong input, a model that never stops ------------------------------------


def test_interrupt_in_the_webui_keeps_the_prompts_even_in_strict_mode(tiny_model_dir: Path) -> None:
    seen: list[Progress] = []
    control = Control(should_stop=lambda: len(seen) >= 3, on_progress=seen.append)
    expander = Expander(tiny_model_dir, device="cpu", lookup=lookup)
    result = run_job(JOB, tipo_args(tiny_model_dir, strict=True, max_new_tokens=64), expander, control=control)
    assert result.prompts == ORIGINALS
    assert all(e and e.startswith("interrupted") for e in result.errors)
    assert len(seen) == 3 and expander.is_loaded


OVERLONG = {
    "one tag of 30000 characters": "x" * 30_000,
    "3000 tags": ", ".join(f"tag{i}" for i in range(3000)),
    "one sentence of 4000 words": "A girl " + " ".join(f"walks{i}" for i in range(4000)) + ".",
    "every piece kind, repeated": ", ".join(["(1girl:1.2), <lora:x:0.5>, __w__, {a|b}, A cat sleeps on a mat."] * 300),
}


@pytest.mark.parametrize("prompt", OVERLONG.values(), ids=OVERLONG.keys())
def test_input_longer_than_the_context_is_cut_for_the_model_and_kept_whole(fast_engine, tokenizer, prompt: str) -> None:
    request = ExpandRequest(prompt, seed=1, tag_length="very_short", nl_length="very_short", max_retry=0,
                            sampling=SamplingSettings(max_new_tokens=8))  # fmt: skip
    (result,) = expand_batch([request], fast_engine, tokenizer, lookup, strict=True)
    assert result.ok
    for piece in parse_prompt(prompt).pieces:
        assert piece.text in result.prompt
    assert len(tokenizer.encode(prompt)) > fast_engine.context_length


@pytest.mark.parametrize("kind", ["fast", "hf"])
def test_a_model_that_never_emits_eos_is_bounded(tiny_llama: Any, tokenizer, kind: str) -> None:
    """EOS banned: every generation runs to max_new_tokens and the retries stop at max_retry."""
    engine = FastEngine.from_model(tiny_llama, TIPO_IDS, banned_ids=[2]) if kind == "fast" else HFEngine(
        tiny_llama, TIPO_IDS, banned_ids=[2])  # fmt: skip
    request = ExpandRequest("1girl, scenery", seed=3, max_retry=2, sampling=SamplingSettings(max_new_tokens=12))
    (result,) = expand_batch([request], engine, tokenizer, lookup)
    assert result.ok, result.error
    assert result.new_tokens == 12 * result.generations
    assert 1 <= result.generations <= 3 * 3, "at most 3 passes of 3 tries"
    assert "1girl" in result.prompt and "scenery" in result.prompt


# -- the Hub and the download ----------------------------------------------------------------


def test_hub_unreachable_with_an_empty_cache_keeps_the_prompts(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_loopback_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    expander = Expander("KBlueLeaf/TIPO-200M", device="cpu", lookup=lookup, cache_dir=tmp_path)
    result = run_job(JOB, tipo_args("KBlueLeaf/TIPO-200M"), expander)
    assert result.prompts == ORIGINALS
    assert all("the Hub could not be reached; check the internet connection" in e for e in result.errors)
    assert not expander.is_loaded and not any(tmp_path.rglob("*.safetensors"))


def test_offline_with_an_empty_cache_then_a_filled_one(tiny_model_dir: Path, tmp_path: Path, healthy) -> None:
    expander = Expander("KBlueLeaf/TIPO-200M-ft2", device="cpu", lookup=lookup, cache_dir=tmp_path, local_files_only=True)
    result = run_job(JOB, tipo_args("KBlueLeaf/TIPO-200M-ft2"), expander)
    assert result.prompts == ORIGINALS
    assert all("not in the local Hugging Face cache" in e and "local_files_only=True" in e for e in result.errors)
    assert not expander.is_loaded

    fake_hub_cache(tmp_path, "KBlueLeaf/TIPO-200M-ft2", tiny_model_dir)
    assert [r.prompt for r in expander.expand(CHEAP, strict=True)] == healthy


def test_partial_download_in_the_cache_is_no_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """What an interrupted download leaves: the hub's ``blobs/<etag>.incomplete`` and no snapshot."""
    blobs = tmp_path / "models--KBlueLeaf--TIPO-100M" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "0123abcd.incomplete").write_bytes((tiny_model_dir / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(HubUnreachableError, match="not in the local Hugging Face cache"):
        resolve_model("KBlueLeaf/TIPO-100M", cache_dir=tmp_path, local_files_only=True)


class FakeHub:
    """A loopback stand-in for the Hub's file routes (model info, file tree, HEAD and ranged GET
    of ``resolve``), serving ``folder`` as repo ``repo_id``. While ``interrupt`` is set, a
    download of model.safetensors from its first byte sends half of it and closes the connection."""

    SHA = "fedcba9876543210fedcba9876543210fedcba98"

    def __init__(self, repo_id: str, folder: Path) -> None:
        self.repo_id = repo_id
        self.files = {name: (folder / name).read_bytes() for name in REPO_FILES if (folder / name).is_file()}
        self.interrupt = False
        self.weight_gets: list[str | None] = []  # the Range header of each GET of model.safetensors
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = handler.path.split("?")[0]
        if path.startswith(f"/api/models/{self.repo_id}/tree/"):  # huggingface_hub >= 1.0 lists the tree
            tree = [{"type": "file", "path": n, "size": len(d), "oid": f"{abs(hash(d)):x}"} for n, d in self.files.items()]
            return self._send(handler, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        if path.startswith(f"/api/models/{self.repo_id}"):
            info = {"id": self.repo_id, "sha": self.SHA, "siblings": [{"rfilename": n} for n in self.files]}
            return self._send(handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        name = path.rsplit("/", 1)[-1] if path.startswith(f"/{self.repo_id}/resolve/") else ""
        if name not in self.files:
            return self._send(handler, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
        data = self.files[name]
        headers = {"ETag": f'"{abs(hash(data)):x}"', "X-Repo-Commit": self.SHA, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}  # fmt: skip
        wanted = handler.headers.get("Range")
        start = int(wanted.split("=")[1].split("-")[0]) if wanted and body else 0
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if body and name == "model.safetensors":
            self.weight_gets.append(wanted)
            if self.interrupt and not start:
                handler.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    handler.send_header(key, value)
                handler.end_headers()
                handler.wfile.write(data[: len(data) // 2])
                handler.wfile.flush()
                handler.close_connection = True
                return None
        return self._send(handler, 206 if start else 200, data[start:], headers, body)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)


@pytest.fixture
def fake_hub(tiny_model_dir: Path, monkeypatch) -> Iterator[FakeHub]:
    from huggingface_hub import constants, file_download

    hub = FakeHub("KBlueLeaf/TIPO-100M", tiny_model_dir)
    thread = threading.Thread(target=hub.server.serve_forever, daemon=True)
    thread.start()
    template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)  # (10 MiB: more than the tiny model's half)
    try:
        yield hub
    finally:
        hub.server.shutdown()
        hub.server.server_close()


def test_interrupted_download_resumes_where_it_stopped(fake_hub: FakeHub, tmp_path: Path, healthy) -> None:
    """huggingface_hub >= 1.0 resumes within the call; older ones keep ``<blob>.incomplete``
    and resume on the next call, after a clear error that keeps the prompts."""
    import huggingface_hub
    from packaging.version import Version

    fake_hub.interrupt = True
    expander = Expander("KBlueLeaf/TIPO-100M", device="cpu", lookup=lookup, cache_dir=tmp_path)
    first = run_job(JOB, tipo_args("KBlueLeaf/TIPO-100M"), expander)
    if Version(huggingface_hub.__version__).release >= (1, 0):
        assert first.errors == (None, None) and expander.is_loaded
        assert fake_hub.weight_gets[0] is None and len(fake_hub.weight_gets) == 2
        kept = int(fake_hub.weight_gets[1].removeprefix("bytes=").removesuffix("-"))
    else:
        assert first.prompts == ORIGINALS and not expander.is_loaded
        assert all("could not be reached" in e for e in first.errors), first.errors
        [partial] = tmp_path.rglob("*.incomplete")
        kept = partial.stat().st_size
        assert [r.prompt for r in expander.expand(CHEAP, strict=True)] == healthy
        assert fake_hub.weight_gets == [None, f"bytes={kept}-"]
    assert 0 < kept <= len(fake_hub.files["model.safetensors"]) // 2, "only the missing bytes were asked for"
    assert not list(tmp_path.rglob("*.incomplete"))
