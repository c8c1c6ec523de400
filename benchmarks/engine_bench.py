"""Decode speed, memory and cold start of FastEngine against HFEngine, transformers' generate and
the reference (tipo-kgen 0.3.1's ``kgen.generate.generate``), in one run, on one device.

    python benchmarks/engine_bench.py --device cpu --models 200m --batches 1,8 --steps 8,24
    python benchmarks/engine_bench.py --device cuda --models 200m,500m --batches 1,8,32 --steps 16,80

Models are random-init weights of the real TIPO-200M and TIPO-500M architectures (seeded, written
once as float32 safetensors like the Hub repos, with the fixture tokenizer), fp16 on CUDA and fp32
on CPU. Inputs are the TIPO first-pass texts in PROMPTS, row i using PROMPTS[i % 3]. Sampling uses
the reference library's pass defaults (temperature 0.35, top_p 0.95, top_k 60, min_p 0.1,
repetition penalty 1.17) and EOS is suppressed everywhere, so every contender writes exactly the
number of tokens asked for (checked).

decode ms/step: each run times a call of S1 and a call of S2 new tokens and takes
(t2 - t1) / (S2 - S1), which cancels load, prefill and per-call costs; medians of --runs runs
after one warm-up of each (graph capture, allocator, library handles excluded), with min-max.
The reference runs one prompt per call, as its WebUI extension does per image, so its batch-B
figure is B times its batch-1 step (marked "B x 1"). HBM floor: decode weight bytes over the
bandwidth of a large device copy (bytes read + written). Cold start: a fresh interpreter, local
safetensors (in the OS page cache) to the first new token, tokenizer included; VRAM peak there
after a batch of 8 rows x 256 new tokens.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

PROCESS_START = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: config.json numbers of the Hub repos: KBlueLeaf/TIPO-200M-ft (format sheet, "Models") and
#: KBlueLeaf/TIPO-500M (huggingface.co/KBlueLeaf/TIPO-500M/blob/fc01db8/config.json).
ARCHS = {
    "200m": {"hidden_size": 768, "intermediate_size": 2304, "num_hidden_layers": 20, "num_attention_heads": 12},
    "500m": {"hidden_size": 1280, "intermediate_size": 3840, "num_hidden_layers": 20, "num_attention_heads": 20},
}
PROMPTS = (
    "meta: highres, absurdres\nrating: general\nartist: wlop\nquality: masterpiece, best quality\n"
    "aspect_ratio: 1.0\ntarget: <|long|> <|tag_to_long|>\ntag: 1girl, solo, long hair, looking at viewer, "
    "smile, outdoors\nlong:",
    "rating: sensitive\naspect_ratio: 0.8\ntarget: <|long|>\ntag: 1boy, male focus, suit, city, night",
    "rating: general\naspect_ratio: 1.5\ntarget: <|very_long|> <|short_to_tag_to_long|>\n"
    "short: a cat sleeping on a windowsill in the afternoon sun\ntag:",
)
SAMPLING = {"temperature": 0.35, "top_p": 0.95, "top_k": 60, "min_p": 0.1, "repetition_penalty": 1.17}
EOS = 2


def load_tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_model_dir(arch: str, folder: Path, seed: int = 0) -> Path:
    """A TIPO repo layout with random float32 weights of the architecture (transformers-style init)."""
    import shutil

    import torch
    from safetensors.torch import save_file

    tiny = load_tool("make_tiny_model")
    config = {**tiny.tiny_config(), **ARCHS[arch]}
    config["num_key_value_heads"] = config["num_attention_heads"]
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    tensors = {"model.embed_tokens.weight": normal(32013, h), "model.norm.weight": torch.ones(h),
               "lm_head.weight": normal(32013, h)}  # fmt: skip
    for layer in range(layers):
        p = f"model.layers.{layer}."
        for name in "qkvo":
            tensors[f"{p}self_attn.{name}_proj.weight"] = normal(h, h)
        tensors[p + "mlp.gate_proj.weight"], tensors[p + "mlp.up_proj.weight"] = normal(i, h), normal(i, h)
        tensors[p + "mlp.down_proj.weight"] = normal(h, i)
        tensors[p + "input_layernorm.weight"], tensors[p + "post_attention_layernorm.weight"] = torch.ones(h), torch.ones(h)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for name in tiny.TOKENIZER_FILES:
        shutil.copyfile(tiny.FIXTURE_TOKENIZER / name, folder / name)
    return folder


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: Any) -> float:
    """Bytes per second of a large device copy, counting bytes read plus bytes written."""
    import torch

    source = torch.ones(128 * 2**20, dtype=torch.float32, device=device)  # 512 MiB
    target = torch.empty_like(source)
    times = []
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        target.copy_(source)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * source.numel() * 4 / statistics.median(times[1:])


def versions() -> dict[str, str]:
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "triton", "tipo-kgen"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class Contenders:
    """The ways of generating ``n`` new tokens for ``rows`` rows; each returns the count written."""

    def __init__(self, folder: Path, device: Any, dtype: Any, with_reference: bool) -> None:
        import torch
        from transformers import LlamaForCausalLM

        from tipo.engine.fast import FastEngine, load_fast_engine
        from tipo.engine.hf import HFEngine

        self.device, self.dtype = device, dtype
        self.fast, self.tokenizer = load_fast_engine(folder, device, dtype, banned_ids=[EOS])
        self.fast_eager = FastEngine(self.fast.weights, self.tokenizer, banned_ids=[EOS], use_cuda_graph=False)
        # The fallback where Triton is missing (Windows, macOS): graphs over torch operations.
        self.fast_torch = FastEngine(self.fast.weights, self.tokenizer, banned_ids=[EOS], kernels=False)
        import transformers
        from packaging.version import Version

        # transformers 4.56 renamed torch_dtype to dtype; 4.30 knows only torch_dtype.
        key = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"
        model = LlamaForCausalLM.from_pretrained(str(folder), **{key: dtype}).to(device).eval().requires_grad_(False)
        self.model = model
        self.hf_engine = HFEngine(model, self.tokenizer, banned_ids=[EOS])
        self.ids = [self.tokenizer.encode(text) for text in PROMPTS]
        self.reference: Callable[..., Any] | None = None
        if with_reference:
            import kgen.generate
            import kgen.models

            kgen.models.text_model, kgen.models.tokenizer = model, _ReferenceTokenizer(self.tokenizer, device)
            self.reference = kgen.generate.generate
        self.torch = torch

    def table(self) -> dict[str, Callable[[int, int], int]]:
        ways: dict[str, Callable[[int, int], int]] = {}
        if self.reference is not None:
            ways["reference"] = self.run_reference
        ways.update({"HF generate": self.run_hf_generate, "HFEngine": self.run_hf_engine, "fast (eager)": self.run_fast_eager})
        if self.device.type == "cuda":
            ways["fast (graph, torch ops)"] = lambda rows, n: self.run_fast(rows, n, self.fast_torch)
            ways["fast (graph)"] = self.run_fast
        return ways

    def requests(self, rows: int, n: int) -> list[Any]:
        from tipo.engine.base import GenerationRequest, SamplingSettings

        sampling = SamplingSettings(**SAMPLING, max_new_tokens=n)
        return [GenerationRequest(tuple(self.ids[i % 3]), seed=i, sampling=sampling) for i in range(rows)]

    def run_fast(self, rows: int, n: int, engine: Any = None) -> int:
        results = (engine or self.fast).generate(self.requests(rows, n))
        return min(len(r.new_ids) for r in results)

    def run_fast_eager(self, rows: int, n: int) -> int:
        return self.run_fast(rows, n, self.fast_eager)

    def run_hf_engine(self, rows: int, n: int) -> int:
        return self.run_fast(rows, n, self.hf_engine)

    def run_hf_generate(self, rows: int, n: int) -> int:
        """transformers' own sampling (no min_p: 4.30 lacks it), rows left-padded."""
        torch = self.torch
        prompts = [self.ids[i % 3] for i in range(rows)]
        width = max(map(len, prompts))
        ids = torch.tensor([[EOS] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        settings = {k: v for k, v in SAMPLING.items() if k != "min_p"}
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=n, min_new_tokens=n,
                                      pad_token_id=EOS, eos_token_id=EOS, **settings)  # fmt: skip
        sync(self.device)
        return out.shape[1] - width

    def run_reference(self, rows: int, n: int) -> int:
        """The reference's path: one ``generate`` call per prompt (seeded), EOS suppressed."""
        assert self.reference is not None
        counts = []
        for row in range(rows):
            _, _, written = self.reference(prompt=PROMPTS[row % 3], max_new_tokens=n, seed=row, suppress_tokens=[EOS],
                                           **SAMPLING)  # fmt: skip
            counts.append(written)
        sync(self.device)
        return min(counts)


class _ReferenceTokenizer:
    """What ``kgen.generate`` calls on its global tokenizer, over our tokenizer (the differencing
    of the step measurement cancels the tokenizer's cost)."""

    def __init__(self, tokenizer: Any, device: Any) -> None:
        self._tokenizer, self._device = tokenizer, device

    def __call__(self, text: str, return_tensors: str = "pt") -> dict[str, Any]:
        import torch

        return {"input_ids": torch.tensor([self._tokenizer.encode(text)])}

    def decode(self, ids: Any) -> str:
        return self._tokenizer.decode([int(i) for i in ids])


def time_steps(run: Callable[[int, int], int], rows: int, steps: tuple[int, int], runs: int) -> dict[str, float]:
    """ms per decode step from paired calls of steps[0] and steps[1] new tokens (see module doc)."""
    short, long = steps
    for n in steps:  # warm-up: graph capture for every bucket the timed calls visit
        written = run(rows, n)
        if written != n:
            raise RuntimeError(f"asked for {n} tokens, got {written}: EOS was not suppressed")
    per_step, long_calls = [], []
    for _ in range(runs):
        start = time.perf_counter()
        run(rows, short)
        middle = time.perf_counter()
        run(rows, long)
        end = time.perf_counter()
        per_step.append(((end - middle) - (middle - start)) / (long - short) * 1e3)
        long_calls.append((end - middle) * 1e3)
    return {"ms_step": statistics.median(per_step), "min": min(per_step), "max": max(per_step),
            "call_ms": statistics.median(long_calls)}  # fmt: skip


def forward_only(engine: Any, rows: int, length: int, runs: int, kernels: bool = False) -> float:
    """ms of the bare decode step (no sampling) at a fixed attention length: graph replays on
    CUDA, eager calls elsewhere. Median of ``runs`` batches of 50 steps."""
    import torch

    from tipo.engine.forward import decode_step
    from tipo.engine.llama import KVCache

    weights, device = engine.weights, engine.device
    cache = KVCache.allocate(weights.shape, rows, length, device, weights.dtype)
    tokens = torch.full((rows,), 5, dtype=torch.long, device=device)
    positions = torch.full((rows,), length - 1, dtype=torch.long, device=device)
    with torch.no_grad():
        step = lambda: decode_step(weights, cache, tokens, positions, length, kernels=kernels)  # noqa: E731
        if device.type == "cuda":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            step = graph.replay
        step()
        times = []
        for _ in range(runs):
            sync(device)
            start = time.perf_counter()
            for _ in range(50):
                step()
            sync(device)
            times.append((time.perf_counter() - start) / 50 * 1e3)
    return statistics.median(times)


def batch_invariance(contenders: Contenders, rows: int, n: int) -> dict[str, int]:
    """How many of ``rows`` sampled rows come out different batched than alone, and than in
    pairs (fast engine; on CUDA a single row runs other product kernels than two or more)."""
    engine = contenders.fast
    requests = contenders.requests(rows, n)
    together = engine.generate(requests)
    alone = [engine.generate([r])[0] for r in requests]
    pairs = [out for i in range(0, rows, 2) for out in engine.generate(requests[i : i + 2])]
    return {"rows": rows, "tokens": n, "rows_differing": sum(a != b for a, b in zip(together, alone)),
            "rows_differing_from_pairs": sum(a != b for a, b in zip(together, pairs))}  # fmt: skip


def cold_start(folder: Path, which: str, device: str, dtype: str) -> dict[str, float]:
    """Run this script in a fresh interpreter for one engine; see ``--cold``."""
    command = [sys.executable, __file__, "--cold", which, "--folder", str(folder), "--device", device, "--dtype", dtype]
    done = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def cold_child(which: str, folder: str, device_name: str, dtype_name: str) -> None:
    """Child of :func:`cold_start`: imports, load, first token, then VRAM peak of a batch of 8.

    ``process_to_first_token_s`` counts from this module's first line (interpreter start-up,
    some 30 ms, is not included)."""
    import torch

    from tipo.engine.base import GenerationRequest, SamplingSettings

    imports_s = time.perf_counter() - PROCESS_START
    start = time.perf_counter()
    if which == "fast":
        from tipo.engine.fast import load_fast_engine

        engine, tokenizer = load_fast_engine(folder, device_name, dtype_name, banned_ids=[EOS])
    else:
        from tipo.engine.hf import HFEngine
        from tipo.models.load import load_model  # imports transformers inside: counted as loading

        loaded = load_model(folder, device_name, dtype_name)
        engine, tokenizer = HFEngine(loaded.model, loaded.tokenizer, banned_ids=[EOS]), loaded.tokenizer
    ids = tuple(tokenizer.encode(PROMPTS[0]))
    engine.generate([GenerationRequest(ids, seed=0, sampling=SamplingSettings(max_new_tokens=1))])
    first = time.perf_counter()
    figures = {"imports_s": imports_s, "load_to_first_token_s": first - start, "process_to_first_token_s": first - PROCESS_START}
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        sampling = SamplingSettings(**SAMPLING, max_new_tokens=256)
        engine.generate([GenerationRequest(tuple(tokenizer.encode(PROMPTS[i % 3])), i, sampling) for i in range(8)])
        figures["vram_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        figures["vram_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    print(json.dumps(figures))


def bench_model(arch: str, args: argparse.Namespace, bandwidth: float, workdir: Path) -> dict[str, Any]:
    import torch

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    folder = make_model_dir(arch, workdir / arch)
    result: dict[str, Any] = {"arch": arch, "dtype": str(dtype).removeprefix("torch.")}
    result["cold"] = {w: cold_start(folder, w, args.device, result["dtype"]) for w in ("fast", "hf")}
    contenders = Contenders(folder, device, dtype, with_reference=args.reference)
    weight_bytes = contenders.fast.weights.decode_bytes()
    result["decode_weight_mb"] = weight_bytes / 1e6
    result["floor_ms"] = weight_bytes / bandwidth * 1e3
    steps = tuple(int(s) for s in args.steps.split(","))
    result["steps"] = {}
    # Contender by contender, the CUDA-graph engine last: a failed graph capture can leave
    # torch's default CUDA generator unusable for transformers' sampling afterwards.
    for name, run in contenders.table().items():
        if name in args.skip:
            continue
        for rows in args.batch_list if name != "reference" else [1]:  # the reference runs rows one by one
            try:
                figures = time_steps(run, rows, steps, args.runs)
            except RuntimeError as error:
                figures = {"error": f"{type(error).__name__}: {error}"[:300]}
            result["steps"][f"{name}|{rows}"] = figures
            print(f"  {arch} b={rows:<3} {name:<14} {figures}", file=sys.stderr, flush=True)
    result["kernels"] = contenders.fast.uses_kernels  # after its first call's check
    for rows in args.batch_list:
        result["steps"][f"forward only|{rows}"] = {"ms_step": forward_only(contenders.fast, rows, 128, args.runs)}
        if result["kernels"]:
            result["steps"][f"forward only, kernels|{rows}"] = {
                "ms_step": forward_only(contenders.fast, rows, 128, args.runs, kernels=True)}
    if device.type == "cuda" and args.cadence:
        for every in (1, 4, 8, 16, 32):
            engine = type(contenders.fast)(contenders.fast.weights, contenders.tokenizer, banned_ids=[EOS],
                                           stop_check_every=every)  # fmt: skip
            result["steps"][f"stop check every {every}|8"] = time_steps(lambda r, n: contenders.run_fast(r, n, engine),
                                                                        8, steps, args.runs)  # fmt: skip
    result["invariance"] = batch_invariance(contenders, *args.invariance)
    return result


def print_table(report: dict[str, Any]) -> None:
    env = report["env"]
    print(f"\ndevice: {env['device']} | threads {env['threads']} | " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"copy bandwidth {env['bandwidth_gbs']:.1f} GB/s (read+write) | date {env['date']}")
    for model in report["models"]:
        print(f"\n## TIPO-{model['arch'].upper()} random init, {model['dtype']}: decode reads {model['decode_weight_mb']:.0f} MB,"
              f" floor {model['floor_ms']:.3f} ms/step; fast engine on Triton kernels: {model['kernels']}")  # fmt: skip
        print("| engine | batch | ms/step median (min-max) | x floor | x reference | tokens/s | call ms |")
        print("|---|---|---|---|---|---|---|")
        reference = model["steps"].get("reference|1", {}).get("ms_step")
        for key, figures in sorted(model["steps"].items(), key=lambda item: int(item[0].split("|")[1])):
            name, rows = key.split("|")
            if "error" in figures:
                print(f"| {name} | {rows} | failed: {figures['error'][:120]} | | | | |")
                continue
            ms = figures["ms_step"]
            spread = f" ({figures['min']:.3f}-{figures['max']:.3f})" if "min" in figures else ""
            versus = f"{reference * int(rows) / ms:.1f}x faster" if reference else "-"
            call = f"{figures['call_ms']:.0f}" if "call_ms" in figures else "-"
            print(f"| {name} | {rows} | {ms:.3f}{spread} | {ms / model['floor_ms']:.1f} | {versus} | {int(rows) / ms * 1e3:.0f} | {call} |")
            if name == "reference" and rows == "1":
                for more in report["batches"][1:]:
                    print(f"| reference (B x 1) | {more} | {ms * more:.3f} | {ms * more / model['floor_ms']:.1f} | 1.0x | {1e3 / ms:.0f} | - |")
        for which, cold in model["cold"].items():
            print(f"cold start {which}: " + ", ".join(f"{k} {v:.2f}" if k.endswith("_s") else f"{k} {v:.0f}" for k, v in cold.items()))
        inv = model["invariance"]
        print(f"batch invariance (fast): {inv['rows_differing']} of {inv['rows']} rows differ batched vs alone, "
              f"{inv.get('rows_differing_from_pairs', '-')} batched vs in pairs ({inv['tokens']} tokens)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="200m", help="comma list of: " + ", ".join(ARCHS))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--steps", default="8,24", help="the two new-token counts S1,S2 of each paired run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--invariance", default="8,32", help="ROWS,TOKENS of the batched-vs-alone count")
    parser.add_argument("--no-reference", dest="reference", action="store_false")
    parser.add_argument("--skip", default="", help="comma list of contenders not to time (e.g. 'HF generate,HFEngine')")
    parser.add_argument("--cadence", action="store_true", help="also time stop checks every 1..32 steps (CUDA)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--cold", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cold:
        cold_child(args.cold, args.folder, args.device, args.dtype)
        return 0
    import torch

    args.batch_list = [int(b) for b in args.batches.split(",")]
    args.skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    args.invariance = tuple(int(x) for x in args.invariance.split(","))
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    report: dict[str, Any] = {"batches": args.batch_list, "models": [], "env": {
        "device": f"{device.type}: {name}", "threads": torch.get_num_threads(), "versions": versions(),
        "date": time.strftime("%Y-%m-%d"), "bandwidth_gbs": copy_bandwidth(device) / 1e9, "command": " ".join(sys.argv)}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tipo-bench-") as workdir:
        for arch in args.models.split(","):
            report["models"].append(bench_model(arch, args, report["env"]["bandwidth_gbs"] * 1e9, Path(workdir)))
            if args.json:  # after each model, so a run cut short keeps what it measured
                args.json.write_text(json.dumps(report, indent=2))
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
