"""Fuzz TIPO end to end: seeded WebUI prompts and arguments through the real pipeline.

    python benchmarks/fuzz.py --cases 100000 [--seed S] [--workers N] [--kinds model,scripted,args]
    python benchmarks/fuzz.py --replay model:1234 --seed S     # one case again, with its failures

Three kinds of case, ``--cases`` of each (issue 6, item 1):

* ``model``: a drawn request (valid args, a 0-20,000-character prompt) through
  :func:`tipo.pipeline.expand_batch` on the tiny random-weight TIPO model
  (``tools/make_tiny_model.py``, seed 0) with the default engine (:class:`FastEngine`, CPU,
  float32), ``--batch`` requests per call as the WebUI batches them. New tokens (1 to
  ``--max-new-tokens``) and retries (0 or 1) are bounded so that 100,000 cases fit in an hour on
  one core; everything else (parse, plan, render, tokenizer, context fitting, engine, parse,
  post-process, restore) is the product's path.
* ``scripted``: the same, one request per call, with an engine that writes hostile model text
  (WebUI syntax, keys, placeholders, control characters) so that restore meets what a random
  model rarely writes.
* ``args``: named args dicts (``TipoArgs.from_dict`` and the constructor, then ``request`` and
  ``prepare``) and ``ExpandRequest`` keyword arguments, valid and invalid.

The oracles are in ``tests/strategies.py``: no exception but a typed ``InvalidArgument`` naming
each bad field; a failed row keeps its prompt exactly; every user piece comes back verbatim;
model text adds no WebUI syntax; brackets are never less balanced than the input's.
Case ``i`` of kind ``k`` is drawn from ``random.Random(f"{seed}:{k}:{i}")`` alone, so any case
replays by its id, and a failing one is shrunk (pieces, then characters) to a minimal
reproducer. Times are wall-clock per case (for ``model``, the batch's time over its rows).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import logging
import multiprocessing
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
import strategies as s  # noqa: E402  (tests/ is no package)

KINDS = ("model", "scripted", "args")
CHUNK = 1000  # cases per work unit handed to a worker


@dataclass
class Tally:
    """What one work unit found: counts, times, failures ``kind -> [(case id, detail)]``."""

    cases: dict[str, int] = field(default_factory=collections.Counter)
    seconds: dict[str, float] = field(default_factory=collections.Counter)
    worst: dict[str, tuple[float, str]] = field(default_factory=dict)
    failures: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: collections.defaultdict(list))
    stats: dict[str, int] = field(default_factory=collections.Counter)
    longest: int = 0  # characters of the longest prompt

    def time(self, kind: str, case_id: str, seconds: float) -> None:
        self.seconds[kind] += seconds
        if seconds > self.worst.get(kind, (-1.0, ""))[0]:
            self.worst[kind] = (seconds, case_id)

    def failing(self, kind: str) -> int:
        """Distinct failing cases of ``kind`` (a case may fail several checks)."""
        return len({case for name, found in self.failures.items() if name.startswith(kind + "/") for case, _ in found})

    def merge(self, other: Tally) -> None:
        for name in ("cases", "seconds", "stats"):
            getattr(self, name).update(getattr(other, name))
        self.longest = max(self.longest, other.longest)
        for kind, (seconds, case_id) in other.worst.items():
            if seconds > self.worst.get(kind, (-1.0, ""))[0]:
                self.worst[kind] = (seconds, case_id)
        for kind, found in other.failures.items():
            self.failures[kind].extend(found)


class Runner:
    """Everything one process needs: the tiny model's engine, tokenizer, tag lookup."""

    def __init__(self, model_dir: str, seed: int, batch: int, max_new_tokens: int, device: str = "cpu") -> None:
        import torch

        from tipo.engine.fast import load_fast_engine
        from tipo.tagdb import default_database

        torch.set_num_threads(1)
        self.seed, self.batch, self.max_new_tokens = seed, batch, max_new_tokens
        self.engine, self.tokenizer = load_fast_engine(model_dir, device, None)
        self.device = f"{self.engine.device} {str(self.engine.dtype).removeprefix('torch.')}"
        self.hostile = s.HostileEngine(self.tokenizer)
        self.lookup = default_database().category

    def source(self, kind: str, index: int) -> s.RandomSource:
        return s.RandomSource(f"{self.seed}:{kind}:{index}")

    def request(self, kind: str, index: int) -> Any:
        # A hostile continuation costs nothing to write: let it be long (up to 96 tokens).
        limit = self.max_new_tokens if kind == "model" else 96
        return s.draw_pipeline_request(self.source(kind, index), max_new_tokens=limit)

    def expand(self, requests: Sequence[Any], kind: str) -> list[Any]:
        from tipo.pipeline import expand_batch

        engine = self.engine if kind == "model" else self.hostile
        return expand_batch(requests, engine, self.tokenizer, self.lookup)

    def failures_of(self, kind: str, index: int) -> list[s.Failure]:
        """One case alone (a row's text does not depend on its batch: engine contract)."""
        if kind == "args":
            return self.args_case(self.source(kind, index), index)
        return self.pipeline_case(self.request(kind, index), kind)

    def pipeline_case(self, request: Any, kind: str) -> list[s.Failure]:
        try:
            (result,) = self.expand([request], kind)
        except Exception as error:  # the finding itself
            return [(f"raised-{type(error).__name__}", str(error)[:160])]
        return s.check_expansion(request, result, self.lookup)

    def args_case(self, src: s.RandomSource, index: int) -> list[s.Failure]:
        if index % 2:
            return s.check_request_kwargs(*s.draw_request_kwargs(src), self.lookup)
        return s.check_args(*s.draw_args_dict(src), self.lookup)

    def run(self, kind: str, start: int, count: int) -> Tally:
        tally = Tally()
        if kind == "model":
            for first in range(start, start + count, self.batch):
                self._model_batch(tally, range(first, min(first + self.batch, start + count)))
            return tally
        for index in range(start, start + count):
            case_id = f"{kind}:{index}"
            started = time.perf_counter()
            found = self.failures_of(kind, index)
            tally.time(kind, case_id, time.perf_counter() - started)
            tally.cases[kind] += 1
            for failure_kind, detail in found:
                tally.failures[_group(kind, failure_kind, detail)].append((case_id, detail))
        return tally

    def _model_batch(self, tally: Tally, indices: range) -> None:
        requests = [self.request("model", i) for i in indices]
        tally.stats["long prompts (> 2,000 chars)"] += sum(len(r.prompt) > 2000 for r in requests)
        tally.longest = max([tally.longest, *(len(r.prompt) for r in requests)])
        started = time.perf_counter()
        try:
            results = self.expand(requests, "model")
        except Exception:  # find the rows that raise, one by one
            results = None
        per_case = (time.perf_counter() - started) / len(requests)
        for offset, (index, request) in enumerate(zip(indices, requests)):
            case_id = f"model:{index}"
            tally.time("model", case_id, per_case)
            tally.cases["model"] += 1
            if results is None:
                found = self.pipeline_case(request, "model")
            else:
                found = s.check_expansion(request, results[offset], self.lookup)
                tally.stats["generations"] += results[offset].generations
                tally.stats["new tokens"] += results[offset].new_tokens
                tally.stats["rows kept on error"] += not results[offset].ok
            for failure_kind, detail in found:
                tally.failures[_group("model", failure_kind, detail)].append((case_id, detail))


def _group(kind: str, failure_kind: str, detail: str) -> str:
    """The report's group of a failure: its kind, and for an unexpected error its message's
    shape (numbers elided), so that distinct causes are counted apart."""
    if failure_kind != "unexpected-error":
        return f"{kind}/{failure_kind}"
    return f"{kind}/{failure_kind} [{re.sub(r'[0-9]+', 'N', detail)[:60]}]"


_RUNNER: Runner | None = None


def _worker_init(*options: Any) -> None:
    global _RUNNER  # one Runner per worker process, built once
    _quiet()
    _RUNNER = Runner(*options)


def _quiet() -> None:
    """The pipeline's per-row warnings (fallbacks, cut inputs) are findings here, not news."""
    logging.basicConfig(level=logging.ERROR)


def _worker_run(kind: str, start: int, count: int) -> Tally:
    assert _RUNNER is not None
    return _RUNNER.run(kind, start, count)


def shrink(runner: Runner, kind: str, index: int, failure_kind: str, budget: int = 400) -> Any:
    """A smaller request that still fails with ``failure_kind``: delta debugging (drop ever
    smaller runs of pieces, then of characters) on the prompt, the NL prompt and the template."""
    request = runner.request(kind, index)

    def fails(candidate: Any) -> bool:
        nonlocal budget
        budget -= 1
        return any(k == failure_kind for k, _ in runner.pipeline_case(candidate, kind))

    for name in ("prompt", "nl_prompt", "template"):
        for unit in (", ", ""):
            text = getattr(request, name)
            parts = text.split(unit) if unit else list(text)
            runs = 2
            while len(parts) > 1 and budget > 0:
                size = -(-len(parts) // runs)
                for start in range(0, len(parts), size):
                    trial = parts[:start] + parts[start + size :]
                    candidate = _replace_text(request, name, unit.join(trial))
                    if candidate is not None and budget > 0 and fails(candidate):
                        parts, request, runs = trial, candidate, max(runs - 1, 2)
                        break
                else:
                    if size == 1:
                        break
                    runs = min(runs * 2, len(parts))
    return request


def _replace_text(request: Any, name: str, text: str) -> Any:
    try:
        return replace(request, **{name: text})
    except Exception:  # e.g. a custom mode's template cut to nothing: not a candidate
        return None


def _describe(request: Any) -> str:
    keep = ("prompt", "nl_prompt", "mode", "template", "tag_length", "nl_length", "width", "height",
            "ban_tags", "ban_nl", "seed", "sampling", "protected_words", "max_retry")  # fmt: skip
    text = ", ".join(f"{name}={getattr(request, name)!r}" for name in keep)
    return text if len(text) < 2000 else text[:2000] + "…"


def _versions() -> str:
    import torch
    import transformers

    return f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases of each kind (default 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index (to split a run: same ids, same cases)")
    parser.add_argument("--workers", type=int, default=1, help="processes (each loads the tiny model)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--batch", type=int, default=64, help="requests per engine call (model kind)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="upper bound of each request's new tokens")
    parser.add_argument("--model", help="tiny model folder (default: built in a temporary folder)")
    parser.add_argument(
        "--device", default="cpu", help="the engine's device (default cpu; cuda runs the CUDA-graph path)"
    )
    parser.add_argument("--replay", help="KIND:INDEX: run one case, print it and its failures")
    args = parser.parse_args(argv)
    _quiet()
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := sorted(set(kinds) - set(KINDS)):
        parser.error(f"unknown kinds {unknown}; allowed: {', '.join(KINDS)}")
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model or str(_make_tiny_model(Path(scratch)))
        options = (model_dir, args.seed, args.batch, args.max_new_tokens, args.device)
        runner = Runner(*options)
        if args.replay:
            return _replay(runner, args.replay)
        last = args.start + args.cases - 1
        print(f"TIPO fuzz: seed {args.seed}, cases {args.start:,} to {last:,} of each of {', '.join(kinds)}, "
              f"{args.workers} worker(s), batch {args.batch}, new tokens <= {args.max_new_tokens}, "
              f"engine FastEngine on {runner.device}; {_versions()}", flush=True)  # fmt: skip
        total, wall = _run_all(runner, options, kinds, range(args.start, args.start + args.cases), args.workers)
        _report(runner, total, wall, kinds, args.seed)
    return 1 if total.failures else 0


def _make_tiny_model(folder: Path) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny_model", ROOT / "tools" / "make_tiny_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_model(folder / "tiny", seed=0)


def _run_all(
    runner: Runner, options: tuple[Any, ...], kinds: list[str], cases: range, workers: int
) -> tuple[Tally, dict[str, float]]:
    total, wall = Tally(), {}
    for kind in kinds:
        started = time.perf_counter()
        units = [(kind, start, min(CHUNK, cases.stop - start)) for start in range(cases.start, cases.stop, CHUNK)]
        if workers <= 1:
            results: Any = (runner.run(*unit) for unit in units)
        else:
            spawn = multiprocessing.get_context("spawn")  # a forked child cannot use CUDA
            pool = concurrent.futures.ProcessPoolExecutor(workers, spawn, initializer=_worker_init, initargs=options)
            results = pool.map(_worker_run, *zip(*units))
        for done, tally in enumerate(results, 1):
            total.merge(tally)
            if done % 10 == 0 or done == len(units):
                print(f"  {kind}: {total.cases[kind]:,} cases, {total.failing(kind):,} failing, "
                      f"{time.perf_counter() - started:,.0f} s", file=sys.stderr, flush=True)  # fmt: skip
        if workers > 1:
            pool.shutdown()
        wall[kind] = time.perf_counter() - started
    return total, wall


def _report(runner: Runner, total: Tally, wall: dict[str, float], kinds: list[str], seed: int) -> None:
    head = ("kind", "cases", "failing", "wall s", "cases/s", "mean ms", "worst ms")
    print(f"{head[0]:<9} {head[1]:>9} {head[2]:>8} {head[3]:>8} {head[4]:>8} {head[5]:>8} {head[6]:>9}  worst case")
    for kind in kinds:
        cases = total.cases[kind]
        failing = total.failing(kind)
        worst_s, worst_id = total.worst.get(kind, (0.0, "-"))
        print(f"{kind:<9} {cases:>9,} {failing:>8,} {wall[kind]:>8,.0f} {cases / wall[kind]:>8,.1f} "
              f"{1000 * total.seconds[kind] / max(cases, 1):>8.1f} {1000 * worst_s:>9.1f}  {worst_id}")  # fmt: skip
    for name, value in sorted(total.stats.items()):
        print(f"  {name}: {value:,}")
    if total.longest:
        print(f"  longest prompt: {total.longest:,} characters")
    if not total.failures:
        print("failures: none")
        return
    print("failures by kind:")
    for failure_kind, found in sorted(total.failures.items(), key=lambda item: -len(item[1])):
        case_id, detail = found[0]
        print(f"  {failure_kind}: {len(found):,} case(s), first {case_id}: {detail}")
        kind, index = case_id.split(":")
        if kind != "args":
            small = shrink(runner, kind, int(index), failure_kind.split("/", 1)[1].split(" [")[0])
            print(f"    minimal: {_describe(small)}")
        print(f"    replay: python benchmarks/fuzz.py --seed {seed} --replay {case_id}")


def _replay(runner: Runner, case_id: str) -> int:
    kind, index = case_id.split(":")
    if kind == "args":
        src = runner.source(kind, int(index))
        drawn = s.draw_request_kwargs(src) if int(index) % 2 else s.draw_args_dict(src)
        print(f"values: {drawn[0]!r}\nverdicts: {drawn[1]!r}")
    else:
        request = runner.request(kind, int(index))
        print(f"request: {_describe(request)}")
        (result,) = runner.expand([request], kind)
        print(f"result: ok={result.ok} error={result.error!r}\nprompt: {result.prompt!r}")
    found = runner.failures_of(kind, int(index))
    print(f"failures: {found or 'none'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
