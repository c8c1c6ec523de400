"""Whole expansions, prompt in and prompt out, against the reference in the same run.

    python benchmarks/pipeline_bench.py --device cpu --models 200m --new-tokens 24 --retries 0
    python benchmarks/pipeline_bench.py --device cuda --models 200m,500m --new-tokens 128 --retries 1

Scenarios (issue 4, item 6):
  a) one request, mode "both, tags first", lengths long/long (tags and a sentence typed);
  b) a WebUI batch of 8 images, one expansion per image (8 seeds, one prompt);
  c) 256 JSONL requests (varied prompts), in engine calls of --jsonl-batch rows as the CLI's
     ``--batch`` does; throughput in requests/s.
Ours: :func:`tipo.pipeline.expand_batch` over :class:`tipo.engine.fast.FastEngine`. The
reference: tipo-kgen 0.3.1 called the way its WebUI extension calls it, per image:
``seperate_tags`` -> ``parse_tipo_request`` -> ``tipo_runner`` -> ``apply_format``, over the
same transformers model object (its CPU<->GPU moves around each prompt are left out, which
favours it). Both sides: random-init weights of the real architectures (engine_bench.py), the
same sampling settings, EOS suppressed, ``max_new_tokens`` = --new-tokens and ``max_retry`` =
--retries; random weights never meet a length target, so both run every retry of every pass and
write the same number of tokens (printed, and the ratio is also given per generated token).
Medians of --runs timed runs after one warm-up run each (graph capture, allocator). The
reference runs images one after another, so for (b) each of its 8 images is one sample and
the batch figure is their sum; for (c) it runs the first --reference-jsonl requests and its
rate is extrapolated (it is sequential: requests/s does not change with the count).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_bench  # noqa: E402  (benchmarks/ is no package)

EOS = engine_bench.EOS
SAMPLING = engine_bench.SAMPLING
TAGS = "1girl, solo, long hair, looking at viewer, smile, outdoors, wlop, masterpiece, best quality"
SENTENCE = "A girl stands in a field of flowers under a wide blue sky."
WORDS = ("1girl", "1boy", "solo", "long hair", "short hair", "smile", "outdoors", "indoors", "night", "city", "cat",
         "school uniform", "flower", "sky", "cloud", "scenery", "sword", "hat", "dress", "glasses", "rain", "snow")  # fmt: skip
SENTENCES = ("A cat sleeps on a windowsill.", "Two friends walk home in the rain.", "A knight guards a castle gate.",
             "The city glows at night.", "")  # fmt: skip


def jsonl_prompts(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(", ".join(rng.sample(WORDS, rng.randint(3, 8))), rng.choice(SENTENCES)) for _ in range(count)]


class Ours:
    def __init__(self, folder: Path, device: Any, dtype: Any, new_tokens: int, retries: int) -> None:
        from tipo.engine.base import SamplingSettings
        from tipo.engine.fast import load_fast_engine
        from tipo.tagdb import default_database

        self.engine, self.tokenizer = load_fast_engine(folder, device, dtype, banned_ids=[EOS])
        self.lookup = default_database().category
        self.sampling = SamplingSettings(**SAMPLING, max_new_tokens=new_tokens)
        self.retries = retries

    def request(self, tags: str, nl: str, seed: int) -> Any:
        from tipo.plan import Mode
        from tipo.request import ExpandRequest

        return ExpandRequest(tags, nl_prompt=nl, mode=Mode.BOTH_TAG_FIRST, tag_length="long", nl_length="long",
                             seed=seed, sampling=self.sampling, max_retry=self.retries)  # fmt: skip

    def run(self, items: Sequence[tuple[str, str, int]], chunk: int | None = None) -> tuple[int, int]:
        """Expand every (tags, nl, seed); (generations, new tokens) in all."""
        from tipo.pipeline import expand_batch

        requests = [self.request(*item) for item in items]
        size = chunk or len(requests)
        generations = tokens = 0
        for first in range(0, len(requests), size):
            for result in expand_batch(requests[first : first + size], self.engine, self.tokenizer, self.lookup, strict=True):
                generations, tokens = generations + result.generations, tokens + result.new_tokens
        return generations, tokens


class Reference:
    """tipo-kgen 0.3.1's library path over a transformers model of the same weights."""

    def __init__(self, model: Any, tokenizer: Any, device: Any, new_tokens: int, retries: int) -> None:
        import kgen.executor.tipo as kgen_tipo
        import kgen.formatter as kgen_formatter
        import kgen.models

        from tipo.formats import TEMPLATES
        from tipo.plan import Mode

        kgen.models.text_model, kgen.models.tokenizer = model, engine_bench._ReferenceTokenizer(tokenizer, device)
        self.tipo, self.formatter = kgen_tipo, kgen_formatter
        self.template = TEMPLATES[Mode.BOTH_TAG_FIRST]
        self.options = {**SAMPLING, "max_new_tokens": new_tokens, "max_retry": retries, "suppress_tokens": [EOS]}
        self.device = device

    def run_one(self, tags: str, nl: str, seed: int) -> tuple[int, int]:
        tag_map = self.formatter.seperate_tags(tags.split(","))
        meta, operations, general, nl_prompt = self.tipo.parse_tipo_request(
            tag_map, nl, tag_length_target="long", nl_length_target="long", generate_extra_nl_prompt=False
        )
        parsed, timing = self.tipo.tipo_runner(meta, operations, general, nl_prompt, seed=seed, **self.options)
        self.formatter.apply_format(parsed, self.template)
        engine_bench.sync(self.device)
        return int(timing.get("generate_pass", 0)), int(timing.get("generated_tokens", 0))

    def run(self, items: Sequence[tuple[str, str, int]]) -> tuple[int, int]:
        generations = tokens = 0
        for item in items:
            g, t = self.run_one(*item)
            generations, tokens = generations + g, tokens + t
        return generations, tokens


def timed(run: Callable[[], tuple[int, int]], runs: int) -> dict[str, Any]:
    """Median seconds of ``runs`` runs after one warm-up, with min-max and the work done."""
    run()
    times, work = [], (0, 0)
    for _ in range(runs):
        start = time.perf_counter()
        work = run()
        times.append(time.perf_counter() - start)
    return {"s": statistics.median(times), "min": min(times), "max": max(times), "runs": runs,
            "generations": work[0], "tokens": work[1]}  # fmt: skip


def per_item(run_one: Callable[..., tuple[int, int]], items: Sequence[tuple[str, str, int]]) -> dict[str, Any]:
    """The reference's sequential images: one sample each, after one warm-up image."""
    run_one(*items[0])
    times, generations, tokens = [], 0, 0
    for item in items:
        start = time.perf_counter()
        g, t = run_one(*item)
        times.append(time.perf_counter() - start)
        generations, tokens = generations + g, tokens + t
    return {"s": sum(times), "item_s": statistics.median(times), "min": min(times), "max": max(times),
            "runs": len(times), "generations": generations, "tokens": tokens}  # fmt: skip


def bench_model(arch: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch
    from packaging.version import Version
    from transformers import LlamaForCausalLM
    from transformers import __version__ as transformers_version

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    folder = engine_bench.make_model_dir(arch, workdir / arch)
    ours = Ours(folder, device, dtype, args.new_tokens, args.retries)
    single = [(TAGS, SENTENCE, 42)]
    batch8 = [(TAGS, SENTENCE, 1000 + i) for i in range(8)]
    jsonl = [(tags, nl, i) for i, (tags, nl) in enumerate(jsonl_prompts(args.jsonl))]
    result: dict[str, Any] = {"arch": arch, "dtype": str(dtype).removeprefix("torch."), "ours": {}, "reference": {}}
    if "a" in args.scenarios:
        result["ours"]["a"] = timed(lambda: ours.run(single), args.runs)
    if "b" in args.scenarios:
        result["ours"]["b"] = timed(lambda: ours.run(batch8), args.runs)
    if "c" in args.scenarios:
        result["ours"]["c"] = timed(lambda: ours.run(jsonl, args.jsonl_batch), max(1, args.runs // 2))
    print(f"  {arch} ours: {result['ours']}", file=sys.stderr, flush=True)
    if args.reference:
        key = "dtype" if Version(transformers_version).release >= (4, 56) else "torch_dtype"
        model = LlamaForCausalLM.from_pretrained(str(folder), **{key: dtype}).to(device).eval().requires_grad_(False)
        reference = Reference(model, ours.tokenizer, device, args.new_tokens, args.retries)
        if "a" in args.scenarios:
            result["reference"]["a"] = timed(lambda: reference.run(single), args.reference_runs)
        if "b" in args.scenarios:
            result["reference"]["b"] = per_item(reference.run_one, batch8)
        if "c" in args.scenarios:
            sample = per_item(reference.run_one, jsonl[: args.reference_jsonl])
            result["reference"]["c"] = {**sample, "s_extrapolated": sample["s"] * len(jsonl) / sample["runs"]}
        print(f"  {arch} reference: {result['reference']}", file=sys.stderr, flush=True)
    return result


SCENARIOS = {"a": "one request, both tags first, long/long", "b": "WebUI batch of 8 images",
             "c": "JSONL requests"}  # fmt: skip


def print_table(report: dict[str, Any]) -> None:
    env = report["env"]
    print(f"\ndevice: {env['device']} | threads {env['threads']} | " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"date {env['date']} | new tokens {env['new_tokens']} | retries {env['retries']} | command: {env['command']}")
    for model in report["models"]:
        print(f"\n## TIPO-{model['arch'].upper()} random init, {model['dtype']}")
        print("| scenario | ours s median (min-max) | reference s | x faster | ours gens/tokens | ref gens/tokens | x faster per token | ours req/s | ref req/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for key, ours in model["ours"].items():
            ref = model["reference"].get(key)
            name = SCENARIOS[key] + (f" ({report['env']['jsonl']})" if key == "c" else "")
            count = {"a": 1, "b": 8, "c": report["env"]["jsonl"]}[key]
            row = f"| {key}) {name} | {ours['s']:.3f} ({ours['min']:.3f}-{ours['max']:.3f}) | "
            if ref:
                total = ref.get("s_extrapolated", ref["s"])
                note = f" (from {ref['runs']})" if "s_extrapolated" in ref else ""
                per_token = (ref["s"] / max(ref["tokens"], 1)) / (ours["s"] / max(ours["tokens"], 1))
                row += (f"{total:.3f}{note} | {total / ours['s']:.1f} | {ours['generations']}/{ours['tokens']} | "
                        f"{ref['generations']}/{ref['tokens']} | {per_token:.1f} | {count / ours['s']:.2f} | {count / total:.3f} |")  # fmt: skip
            else:
                row += f"- | - | {ours['generations']}/{ours['tokens']} | - | - | {count / ours['s']:.2f} | - |"
            print(row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="200m", help="comma list of: " + ", ".join(engine_bench.ARCHS))
    parser.add_argument("--scenarios", default="abc")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--retries", type=int, default=0, help="max_retry of both sides")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reference-runs", type=int, default=3)
    parser.add_argument("--jsonl", type=int, default=256)
    parser.add_argument("--jsonl-batch", type=int, default=32, help="rows per engine call (the CLI's --batch-size)")
    parser.add_argument("--reference-jsonl", type=int, default=8, help="requests the reference runs for (c)")
    parser.add_argument("--no-reference", dest="reference", action="store_false")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import torch

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else engine_bench.platform.processor() or "cpu"
    report: dict[str, Any] = {"models": [], "env": {
        "device": f"{device.type}: {name}", "threads": torch.get_num_threads(), "versions": engine_bench.versions(),
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "new_tokens": args.new_tokens,
        "retries": args.retries, "jsonl": args.jsonl}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tipo-pipeline-bench-") as workdir:
        for arch in args.models.split(","):
            report["models"].append(bench_model(arch, args, Path(workdir)))
            if args.json:
                args.json.write_text(json.dumps(report, indent=2))
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
