"""Concurrency (issue 6): 16 expansions at once through the Python API and the expand route,
and a preview while a generation runs, each giving what it gives alone, with one model load.

Threads start together on a barrier so that the first load is contended. Requests differ in
everything a request carries (mode, lengths, bans, seeds, sampling, size), so any state one of
them leaked into shared objects would change another's text.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

import tipo.api
from tipo.api import Expander
from tipo.args import TipoArgs, fields
from tipo.engine.base import Control, Progress, SamplingSettings
from tipo.extension import Job, preview, run_job
from tipo.pipeline import Expansion
from tipo.plan import LENGTHS, Mode
from tipo.request import ExpandRequest

THREADS = 16
MODES = [Mode.TAG_ONLY, Mode.BOTH_TAG_FIRST, Mode.NL_ONLY, Mode.SHORT_TO_TAG, Mode.TAG_TO_LONG, Mode.BOTH_NL_FIRST]


def lookup(name: str) -> str | None:
    return {"hatsune miku": "characters", "wlop": "artist"}.get(name)


def varied(i: int) -> ExpandRequest:
    """Request ``i`` of 16, each unlike the others in every setting."""
    sentence = ", A cat sleeps on a warm mat." if i % 3 == 0 else ""
    return ExpandRequest(
        prompt=f"1girl, hatsune miku, tag{i}, <lora:l{i}:0.{i}>{sentence}",
        nl_prompt="In the rain." if i % 4 == 1 else "",
        mode=MODES[i % len(MODES)],
        tag_length=LENGTHS[i % len(LENGTHS)],
        nl_length=LENGTHS[(i + 1) % len(LENGTHS)],
        width=512 + 64 * i,
        height=1024 - 32 * i,
        ban_tags=(f"tag{i}x", f"/t{i}[0-9]+/", "*xyz*"),
        ban_nl=(f"word{i}",),
        seed=1000 + i,
        sampling=SamplingSettings(max_new_tokens=5 + i % 3, temperature=0.4 + i / 40, top_k=20 + i),
        max_retry=i % 2,
    )


REQUESTS = [varied(i) for i in range(THREADS)]


class OneTry:
    """The expander as the WebUI glue and the route see it, each pass tried once (their
    requests allow ten retries; the tiny model's noise would use them all, for nothing here)."""

    def __init__(self, expander: Expander) -> None:
        self.expander = expander

    def expand(self, requests: Sequence[ExpandRequest], **kwargs: Any) -> list[Expansion]:
        return self.expander.expand([replace(r, max_retry=0) for r in requests], **kwargs)


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` for every ``i`` in its own thread, all released at once; errors re-raised."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as error:  # handed to the test below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def alone(tiny_model_dir: Path) -> list[Expansion]:
    """Every request expanded by itself, one after the other."""
    expander = Expander(tiny_model_dir, device="cpu", lookup=lookup)
    results = [expander.expand([request], strict=True)[0] for request in REQUESTS]
    assert len({r.prompt for r in results}) == THREADS
    return results


@pytest.fixture
def count_loads(monkeypatch) -> list[Path]:
    loads: list[Path] = []
    original = tipo.api._load_engine

    def counting(folder: Path, device: str | None, dtype: str | None) -> Any:
        loads.append(folder)
        return original(folder, device, dtype)

    monkeypatch.setattr(tipo.api, "_load_engine", counting)
    return loads


def test_sixteen_threads_share_one_expander_and_one_load(tiny_model_dir: Path, alone, count_loads) -> None:
    shared = Expander(tiny_model_dir, device="cpu", lookup=lookup)
    results = run_together(THREADS, lambda i: shared.expand([REQUESTS[i]], strict=True)[0])
    assert results == alone
    assert len(count_loads) == 1


def test_sixteen_calls_of_the_expand_route_at_once(tiny_model_dir: Path, alone, count_loads) -> None:
    routes = pytest.importorskip("tipo.routes")
    shared = Expander(tiny_model_dir, device="cpu", lookup=lookup)
    models: list[str] = []

    def expand(model: str, requests: Sequence[ExpandRequest]) -> list[Expansion]:
        models.append(model)
        return OneTry(shared).expand(requests)

    def body(i: int) -> dict[str, Any]:
        request = REQUESTS[i]
        return {"requests": [{
            "prompt": request.prompt, "nl_prompt": request.nl_prompt, "mode": request.mode.value,
            "tag_length": request.tag_length, "nl_length": request.nl_length, "width": request.width,
            "height": request.height, "ban_tags": ", ".join(request.ban_tags), "ban_nl": ", ".join(request.ban_nl),
            "seed": request.seed, **{k: getattr(request.sampling, k) for k in ("max_new_tokens", "temperature", "top_k")},
        }]}  # fmt: skip

    def call(i: int) -> tuple[int, dict[str, Any]]:
        return routes.handle_expand(body(i), expand, default_model=str(tiny_model_dir))

    sequential = [call(i) for i in range(THREADS)]
    assert run_together(THREADS, call) == sequential
    for status, answer in sequential:
        assert status == 200 and answer["failed"] == 0
    assert len(count_loads) == 1 and set(models) == {str(tiny_model_dir)}


def test_a_preview_during_a_generation(tiny_model_dir: Path, count_loads) -> None:
    """The WebUI's "Expand now" while a generation of the same model is decoding: the engine
    takes one batch at a time, so the preview waits for a decode call, never for the job."""
    shared = Expander(tiny_model_dir, device="cpu", lookup=lookup)
    args = TipoArgs(enabled=True, model=str(tiny_model_dir), seed=77, tag_length="very_short", nl_length="short",
                    max_new_tokens=16)  # fmt: skip
    job = Job(prompts=("1girl, solo", "scenery, sky", "1boy, hat"), seeds=(1, 2, 3), tipo_seed=77)
    values = [getattr(args, f.name) for f in fields()]
    expected_job = run_job(job, args, OneTry(Expander(tiny_model_dir, device="cpu", lookup=lookup)))
    expected_preview = preview("1girl, cat ears", values, lambda a: OneTry(shared))
    assert expected_preview.error is None and expected_job.failed == 0
    count_loads.clear()
    shared.unload()

    previews: list[Any] = []
    decoding, overlapping = threading.Event(), threading.Event()

    def on_progress(progress: Progress) -> None:
        if not decoding.is_set():  # the job's first decode step: hold it until the preview is on
            decoding.set()
            overlapping.wait(timeout=60)

    def run_preview() -> None:
        decoding.wait(timeout=60)
        job_running = shared._users == 1
        overlapping.set()
        previews.append((job_running, preview("1girl, cat ears", values, lambda a: OneTry(shared))))

    thread = threading.Thread(target=run_preview)
    thread.start()
    result = run_job(job, args, OneTry(shared), control=Control(on_progress=on_progress))
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert result.prompts == expected_job.prompts and result.errors == expected_job.errors
    assert previews == [(True, expected_preview)], "the preview ran while the job was decoding"
    assert len(count_loads) == 1
