"""Where one decode step's GPU time goes: kernels per step and the costliest kernels, per path.

    python benchmarks/profile_step.py --device cuda --models 200m --batches 1,32

For each path of the fast engine's step (Triton kernels where available, torch operations),
runs ``--steps`` eager steps of the whole engine step (sampling included) under
``torch.profiler`` and prints the kernel launches per step, the summed kernel time per step and
the ten kernels with the most time. Eager, so each launch is visible; the engine replays the
same kernels from a CUDA graph, where the gaps between them shrink but their count stays.
Random-init weights of the real architectures (as ``engine_bench.py``), fp16.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def profile_path(engine: Any, ids: list[list[int]], rows: int, steps: int) -> tuple[int, float, list[tuple[str, int, float]]]:
    """(kernels per step, kernel µs per step, top kernels as (name, calls, µs per step))."""
    import torch
    from engine_bench import SAMPLING
    from torch.profiler import ProfilerActivity, profile

    from tipo.engine.base import GenerationRequest, SamplingSettings

    sampling = SamplingSettings(**SAMPLING, max_new_tokens=steps)
    requests = [GenerationRequest(tuple(ids[i % 3]), seed=i, sampling=sampling) for i in range(rows)]
    engine.generate(requests)  # warm-up (compiles kernels; eager engines capture nothing)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate(requests)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    counts: Counter[str] = Counter()
    times: Counter[str] = Counter()
    for event in kernels:
        counts[event.name] += 1
        times[event.name] += event.device_time if hasattr(event, "device_time") else event.cuda_time
    total = sum(times.values())
    top = [(name[:90], counts[name], times[name] / steps) for name, _ in times.most_common(10)]
    return round(len(kernels) / steps), total / steps, top



def time_cuda(call: Any, repeat: int = 200) -> float:
    """µs per call of ``call`` replayed from a CUDA graph of ``repeat`` calls (launch gaps as
    the engine sees them)."""
    import torch

    call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeat):
            call()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (5 * repeat)


def tune(arch: str) -> None:
    """µs per attention call for block/warp choices, and per matrix product for cuBLAS entry points."""
    import torch
    import torch.nn.functional as F

    from engine_bench import ARCHS
    from tipo.engine import kernels

    config = ARCHS[arch]
    hidden, inter, heads = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]
    dim = hidden // heads
    half = torch.float16
    table = torch.randn(4096, dim, device="cuda", dtype=half)
    for rows in (1, 8, 32):
        for length in (128, 512):
            qkv = torch.randn(rows, 3 * hidden, device="cuda", dtype=half)
            cache_k = torch.randn(rows, heads, 1024, dim, device="cuda", dtype=half)
            cache_v = torch.randn_like(cache_k)
            positions = torch.full((rows,), length, device="cuda", dtype=torch.long)
            figures = []
            for block in (32, 64, 128):
                for warps in (1, 2, 4, 8):
                    micros = time_cuda(lambda: kernels.rotary_attention(
                        qkv, cache_k, cache_v, positions, table, table, heads, heads, block=block, warps=warps))
                    figures.append(f"{block}/{warps}: {micros:.2f}")
            print(f"attention {arch} b={rows} pos={length} µs (block/warps): " + ", ".join(figures), flush=True)
    shapes = ((3 * hidden, hidden), (hidden, hidden), (2 * inter, hidden), (hidden, inter), (32013, hidden))
    for rows in (1, 8, 32):
        for n, k in shapes:
            x = torch.randn(rows, k, device="cuda", dtype=half)
            # Copies enough to overflow the L2 cache, taken in turn: a decode step streams its
            # weights from HBM, and one weight timed alone stays in L2 and flatters small blocks.
            weights = [torch.randn(n, k, device="cuda", dtype=half) / k**0.5 for _ in range(max(1, (256 << 20) // (n * k * 2)))]
            turn = itertools.cycle(weights)
            ways = {"F.linear": lambda: F.linear(x, next(turn)), "kernels.linear": lambda: kernels.linear(x, next(turn))}
            line = ", ".join(f"{name} {time_cuda(call):.2f}" for name, call in ways.items())
            choices = itertools.product((4, 8, 16, 32), (128, 256, 512, 1024), (4, 8)) if rows == 1 else itertools.product((16, 32, 64, 128), (64, 128, 256, 512), (2, 4, 8))
            figures = []
            for blocks in choices:
                try:
                    figures.append((time_cuda(lambda: kernels.linear(x, next(turn), blocks=blocks), repeat=50), blocks))
                except Exception as error:  # a block too large for the registers or shared memory
                    print(f"  {blocks}: {type(error).__name__}")
            best = sorted(figures)[:4]
            print(f"matmul {arch} b={rows} [{n}x{k}] µs, weights from HBM: {line}  (floor {n * k * 2 / 3.0e12 * 1e6:.2f} at 3 TB/s); "
                  "best (outputs, reduction, warps): " + ", ".join(f"{b} {m:.2f}" for m, b in best), flush=True)
    for dtype in (torch.float16, torch.bfloat16):  # each fused form against its torch composition
        x, gate_up = torch.randn(8, hidden, device="cuda", dtype=dtype), torch.randn(8, 2 * inter, device="cuda", dtype=dtype)
        weight, down = torch.randn(3 * hidden, hidden, device="cuda", dtype=dtype) / 30, torch.randn(hidden, inter, device="cuda", dtype=dtype) / 60
        norm = torch.rand(hidden, device="cuda", dtype=dtype) + 0.5
        pairs = {
            "plain": (kernels.linear(x, weight), F.linear(x, weight)),
            "norm": (kernels.linear(x, weight, norm=norm, eps=1e-6), F.linear(kernels.rms_norm(x, norm, 1e-6), weight)),
            "silu": (kernels.linear(gate_up, down, silu=True), F.linear(kernels.silu_mul(gate_up), down)),
            "alone": (kernels.linear(x[3:4], weight)[0], kernels.linear(x, weight)[3]),
        }
        errors = ", ".join(f"{name} {float((a.float() - b.float()).abs().max()):.3g}" for name, (a, b) in pairs.items())
        print(f"kernels.linear {dtype} max abs difference from torch: {errors}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="200m")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--tune", action="store_true", help="time attention block/warp choices and matmul entry points")
    args = parser.parse_args(argv)
    import torch
    from engine_bench import EOS, PROMPTS, make_model_dir

    from tipo.engine.fast import FastEngine, load_fast_engine

    with tempfile.TemporaryDirectory(prefix="tipo-profile-") as workdir:
        for arch in args.models.split(","):
            if args.tune:
                tune(arch)
            folder = make_model_dir(arch, Path(workdir) / arch)
            base, tokenizer = load_fast_engine(folder, args.device, torch.float16, banned_ids=[EOS])
            ids = [tokenizer.encode(text) for text in PROMPTS]
            paths = {"torch ops": FastEngine(base.weights, tokenizer, banned_ids=[EOS], use_cuda_graph=False, kernels=False)}
            paths["triton kernels"] = FastEngine(base.weights, tokenizer, banned_ids=[EOS], use_cuda_graph=False)
            for rows in (int(b) for b in args.batches.split(",")):
                for name, engine in paths.items():
                    count, micros, top = profile_path(engine, ids, rows, args.steps)
                    used = getattr(engine, "uses_kernels", False)
                    print(f"\n## TIPO-{arch.upper()} b={rows} {name} (kernels used: {used}): "
                          f"{count} kernels/step, {micros:.0f} µs kernel time/step")  # fmt: skip
                    for kernel, calls, per_step in top:
                        print(f"  {per_step:8.1f} µs/step  {calls // args.steps:4d}/step  {kernel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
