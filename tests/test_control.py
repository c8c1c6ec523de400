"""Progress, Interrupt/Skip between decode steps, where the model waits between calls, and the
CPU fallback for a row that does not fit in GPU memory: both engines, the pipeline, Expander."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Sequence

import pytest
import torch
from test_engine_hf import TIPO_IDS, prompt

from tipo.api import Expander, Residency, _CpuFallback
from tipo.engine.base import Control, GenerationRequest, GenerationResult, Progress, SamplingSettings
from tipo.engine.fast import FastEngine
from tipo.engine.hf import HFEngine
from tipo.errors import Interrupted, InvalidArgument
from tipo.request import ExpandRequest

ENGINES = {"fast": FastEngine.from_model, "hf": HFEngine}
NO_EOS = SamplingSettings(max_new_tokens=20)


def lookup(name: str) -> str | None:
    return {"hatsune miku": "characters"}.get(name)


class StopAfter:
    """A Control that records progress and asks to stop once ``step`` steps are reported."""

    def __init__(self, step: int | None) -> None:
        self.step = step
        self.seen: list[Progress] = []

    def control(self) -> Control:
        return Control(should_stop=lambda: self.step is not None and bool(self.seen) and self.seen[-1].step >= self.step,
                       on_progress=self.seen.append)  # fmt: skip


@pytest.mark.parametrize("kind", ENGINES)
def test_engines_report_progress_and_stop_between_steps(tiny_llama, kind: str) -> None:
    engine = ENGINES[kind](tiny_llama, TIPO_IDS, banned_ids=[2])
    rows = [GenerationRequest(prompt(10 + i, 6), seed=i, sampling=NO_EOS) for i in range(3)]
    watcher = StopAfter(None)
    full = engine.generate(rows, control=watcher.control())
    assert [len(r.new_ids) for r in full] == [20] * 3
    assert [p.step for p in watcher.seen] == list(range(20))  # before each step (CPU: every step)
    assert {(p.steps, p.rows, p.round) for p in watcher.seen} == {(20, 3, 0)}
    assert full == engine.generate(rows), "watching must not change the tokens"

    stopper = StopAfter(5)
    with pytest.raises(Interrupted, match="after 5 of at most 20"):
        engine.generate(rows, control=stopper.control())
    assert engine.generate(rows) == full, "an interrupted call leaves the engine usable"


def test_pipeline_keeps_original_prompts_of_interrupted_rows(tiny_model_dir: Path) -> None:
    expander = Expander(tiny_model_dir, device="cpu", lookup=lookup)
    requests = [ExpandRequest(f"1girl, solo, scenery {i}", seed=i, sampling=NO_EOS, max_retry=0) for i in range(3)]
    watcher = StopAfter(3)
    results = expander.expand(requests, strict=True, control=watcher.control())  # interrupting is no failure
    assert [r.prompt for r in results] == [r.prompt for r in requests]
    assert all(r.error and r.error.startswith("interrupted") for r in results)
    assert {p.round for p in watcher.seen} == {1} and {p.rows for p in watcher.seen} == {3}

    done = expander.expand(requests)  # the next call runs normally
    assert all(r.ok for r in done)
    assert expander.expand(requests, control=StopAfter(None).control()) == done


def test_fast_engine_moved_to_a_device_gives_the_same_tokens(tiny_llama) -> None:
    engine = FastEngine.from_model(tiny_llama, TIPO_IDS, banned_ids=[2], stop_check_every=3)
    rows = [GenerationRequest(prompt(40 + i, 5), seed=i, sampling=NO_EOS) for i in range(2)]
    moved = engine.to("cpu")
    assert moved is not engine and moved.weights.embed is engine.weights.embed  # same device: shared, read-only
    assert moved.generate(rows) == engine.generate(rows)
    assert moved._check_every == 3 and moved._banned_ids == (2,)


def test_residency_choices_are_checked(tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="residency='sometimes'.*keep, offload, unload_idle"):
        Expander(tiny_model_dir, residency="sometimes")
    with pytest.raises(InvalidArgument, match="idle_minutes=nan"):
        Expander(tiny_model_dir, residency="unload_idle", idle_minutes=float("nan"))
    assert Expander(tiny_model_dir, residency="offload").residency is Residency.OFFLOAD


def test_unload_policies_drop_the_model_and_load_it_again(tiny_model_dir: Path) -> None:
    request = [ExpandRequest("1girl, solo", seed=3, sampling=SamplingSettings(max_new_tokens=8), max_retry=0)]
    keep = Expander(tiny_model_dir, device="cpu", lookup=lookup)
    expected = keep.expand(request)
    assert keep.is_loaded

    at_once = Expander(tiny_model_dir, device="cpu", lookup=lookup, residency="unload_idle", idle_minutes=0)
    assert at_once.expand(request) == expected and not at_once.is_loaded
    assert at_once.expand(request) == expected and not at_once.is_loaded

    idle = Expander(tiny_model_dir, device="cpu", lookup=lookup, residency="unload_idle", idle_minutes=0.002)
    assert idle.expand(request) == expected
    deadline = time.monotonic() + 30  # the timer fires after 0.12 s; generous for a loaded machine
    while idle.is_loaded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not idle.is_loaded
    assert idle.expand(request) == expected

    keep.unload()
    assert not keep.is_loaded and keep.expand(request) == expected


def test_offload_on_the_cpu_keeps_the_model_in_place(tiny_model_dir: Path) -> None:
    expander = Expander(tiny_model_dir, device="cpu", lookup=lookup, residency="offload")
    request = [ExpandRequest("1girl", seed=1, sampling=SamplingSettings(max_new_tokens=8), max_retry=0)]
    first = expander.expand(request)
    engine = expander._engine
    assert expander.expand(request) == first and expander._engine is engine


class OutOfMemoryOnDevice:
    """Stands for an engine on a GPU that runs out of memory; ``to("cpu")`` gives the real one."""

    copies_on_move = True
    device = torch.device("cuda")

    def __init__(self, engine: FastEngine) -> None:
        self._engine = engine
        self.context_length = engine.context_length
        self.calls: list[int] = []

    def generate(self, requests: Sequence[GenerationRequest], control: Control | None = None) -> list[GenerationResult]:
        self.calls.append(len(requests))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def to(self, device: str) -> FastEngine:
        assert device == "cpu"
        return self._engine


def test_a_single_row_out_of_gpu_memory_runs_on_the_cpu(tiny_llama) -> None:
    engine = FastEngine.from_model(tiny_llama, TIPO_IDS)
    gpu = OutOfMemoryOnDevice(engine)
    rows = [GenerationRequest(prompt(60 + i, 5), seed=i, sampling=NO_EOS) for i in range(2)]
    with pytest.raises(torch.cuda.OutOfMemoryError):  # several rows: the pipeline splits them first
        _CpuFallback(gpu).generate(rows)
    assert _CpuFallback(gpu).generate(rows[:1]) == engine.generate(rows[:1])
    assert gpu.calls == [2, 1]


def test_sixteen_threads_with_unload_after_each_call(tiny_model_dir: Path) -> None:
    """Residency changes only when the last running call ends, so concurrent calls never see
    their model dropped under them."""
    expander = Expander(tiny_model_dir, device="cpu", lookup=lookup, residency="unload_idle", idle_minutes=0)
    requests = [ExpandRequest(f"1girl, tag{i}", seed=i, sampling=SamplingSettings(max_new_tokens=6), max_retry=0) for i in range(16)]
    alone = Expander(tiny_model_dir, device="cpu", lookup=lookup).expand(requests)
    results: dict[int, object] = {}

    def run(i: int) -> None:
        results[i] = expander.expand([requests[i]])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(16)] == alone
    assert not expander.is_loaded
