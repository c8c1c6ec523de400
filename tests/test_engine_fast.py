"""FastEngine and our LLaMA forward, on the tiny random-weight model (CPU, float32, offline).

The forward must give transformers' logits; greedy decoding must give transformers' tokens;
sampling must give HFEngine's tokens (both draw from the same per-row generators); a row must
not depend on the rows beside it, on the cache left by an earlier call, or on how the engine
cuts the work into prefill groups and attention buckets.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import threading
from pathlib import Path

import pytest
import torch
from conftest import load_tool
from test_engine_hf import TIPO_IDS, prompt, transformers_greedy
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

from tipo.api import Expander
from tipo.engine import fast, kernels, steps
from tipo.engine.base import GenerationRequest, SamplingSettings
from tipo.engine.fast import FastEngine, load_fast_engine
from tipo.engine.forward import decode_step, prefill
from tipo.engine.hf import MIN_NEW_TOKENS, HFEngine
from tipo.engine.llama import KVCache, LlamaShape, LlamaWeights, pack_rows
from tipo.engine.sampling import (
    RowParams,
    make_generator,
    race,
    race_candidates,
    warp_candidates,
    warp_logits,
)
from tipo.errors import InvalidArgument, UnsupportedModelError
from tipo.tokenizer import TipoTokenizer

#: Every path of decode_step: transformers' arithmetic, the fused one (the CUDA default without
#: Triton) and the Triton kernels (in Triton's interpreter here; skipped without Triton).
STEP_OPTIONS = [{"fused": False}, {"fused": True, "sdpa": False}] + ([{"kernels": True}] if kernels.available() else [])
GREEDY = SamplingSettings(top_k=1, repetition_penalty=1.0, max_new_tokens=12)
HAS_GQA = "num_key_value_heads" in LlamaConfig().to_dict()  # transformers >= 4.31


@pytest.fixture(scope="module")
def engine(tiny_llama) -> FastEngine:
    return FastEngine.from_model(tiny_llama, TIPO_IDS)


def transformers_last_logits(model, rows: list[list[int]]) -> torch.Tensor:
    """transformers' logits of each row's last token, rows left-padded into one batch."""
    width = max(map(len, rows))
    ids = torch.tensor([[2] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()


def assert_forward_matches(model, weights: LlamaWeights, sdpa: bool = True, **step_options: bool) -> None:
    """Prefill then four decode steps, rows of lengths 3..17, against transformers' forward.
    ``sdpa=False`` writes the attention out (the CUDA default); ``kernels`` applies to the
    prefill too."""
    rows = [list(prompt(seed, n)) for seed, n in ((1, 9), (2, 3), (3, 17), (4, 12))]
    cache = KVCache.allocate(weights.shape, len(rows), 32, weights.device, weights.dtype)
    with torch.no_grad():
        packed = pack_rows(rows, 0, weights.device)
        ours = prefill(weights, cache, packed, kernels=step_options.get("kernels", False), sdpa=sdpa)
        torch.testing.assert_close(ours, transformers_last_logits(model, rows), atol=1e-4, rtol=0)
        for step in range(4):
            fed = [3 + 1000 * step + row for row in range(len(rows))]
            positions = torch.tensor([len(r) for r in rows])
            ours = decode_step(weights, cache, torch.tensor(fed), positions, length=32, sdpa=sdpa, **step_options)
            rows = [r + [t] for r, t in zip(rows, fed)]
            torch.testing.assert_close(ours, transformers_last_logits(model, rows), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "options",
    [{"fused": False}, {"fused": False, "sdpa": False}, {"fused": True}, {"fused": True, "sdpa": False},
     pytest.param({"kernels": True, "sdpa": False}, marks=pytest.mark.skipif(not kernels.available(), reason="no Triton"))],
    ids=["exact", "exact, written-out attention", "fused", "fused, written-out prefill attention", "kernels"],
)  # fmt: skip
def test_forward_equals_transformers_logits(tiny_llama, options: dict) -> None:
    """The fused decode step and the Triton kernels (CUDA paths) are checked here on the CPU too."""
    assert_forward_matches(tiny_llama, LlamaWeights.from_model(tiny_llama), **options)


@pytest.mark.skipif(not HAS_GQA, reason="transformers < 4.31 has no grouped-query attention")
def test_forward_equals_transformers_with_grouped_query_attention_and_tied_embeddings() -> None:
    config = LlamaConfig(
        vocab_size=32013, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
        pad_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    for options in STEP_OPTIONS:
        assert_forward_matches(model, LlamaWeights.from_model(model), **options)


def test_weights_from_safetensors_equal_weights_from_the_model(tiny_model_dir: Path, tiny_llama) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    loaded = LlamaWeights.from_safetensors(tiny_model_dir, config, torch.device("cpu"), torch.float32)
    built = LlamaWeights.from_model(tiny_llama)
    for name in ("embed", "norm", "lm_head", "cos", "sin"):
        assert torch.equal(getattr(loaded, name), getattr(built, name)), name
    for ours, theirs in zip(loaded.layers, built.layers, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(vars(ours).values(), vars(theirs).values()))


@pytest.mark.parametrize(
    "change",
    [{"rope_scaling": {"type": "linear", "factor": 2.0}}, {"rope_parameters": {"rope_type": "yarn"}},
     {"attention_bias": True}, {"pretraining_tp": 2}, {"hidden_act": "gelu"}, {"num_key_value_heads": 3}],
)  # fmt: skip
def test_configs_the_forward_does_not_reproduce_are_refused(tiny_model_dir: Path, change: dict) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert LlamaShape.from_config(config).head_dim == 16
    assert LlamaShape.from_config({**config, "rope_parameters": {"rope_type": "default", "rope_theta": 5.0}})
    with pytest.raises(UnsupportedModelError):
        LlamaShape.from_config({**config, **change})


@pytest.mark.parametrize("bucket", [64, 4], ids=["bucket=64", "bucket=4"])
def test_greedy_equals_transformers_and_hf_engine(tiny_llama, engine, monkeypatch, bucket: int) -> None:
    """With bucket 4 the attention length grows every few steps; tokens must not notice."""
    monkeypatch.setattr(fast, "LENGTH_BUCKET", bucket)
    prompts = [prompt(1, 9), prompt(2, 5), prompt(3, 14)]
    requests = [GenerationRequest(p, seed=i, sampling=GREEDY) for i, p in enumerate(prompts)]
    results = engine.generate(requests)
    assert results == transformers_greedy(tiny_llama, prompts, 12)
    assert results == HFEngine(tiny_llama, TIPO_IDS).generate(requests)


def sampled_rows() -> list[GenerationRequest]:
    rows = [
        (prompt(10, 7), 0, SamplingSettings(max_new_tokens=24)),
        (prompt(11, 19), -5, SamplingSettings(temperature=1.0, top_k=0, max_new_tokens=20)),
        (prompt(12, 3), 2**70, SamplingSettings(top_p=0.7, min_p=0.0, max_new_tokens=9)),
        (prompt(13, 12), 42, SamplingSettings(repetition_penalty=1.0, max_new_tokens=16)),
        (prompt(14, 30), 7, SamplingSettings(temperature=1.5, repetition_penalty=1.5, max_new_tokens=30)),
    ]
    return [GenerationRequest(ids, seed=seed, sampling=sampling) for ids, seed, sampling in rows]


def block_draws_equal_step_draws() -> bool:
    """Whether this torch's CPU ``exponential_`` gives a block of steps' noise as the same values
    as one draw per step (true of 2.13; an MKL-backed kernel would reseed per call)."""
    one, block = make_generator(3, torch.device("cpu")), make_generator(3, torch.device("cpu"))
    per_step = torch.stack([torch.empty(32013).exponential_(generator=one) for _ in range(steps.NOISE_BLOCK)])
    return torch.equal(per_step, torch.empty(steps.NOISE_BLOCK, 32013).exponential_(generator=block))


@pytest.mark.skipif(not block_draws_equal_step_draws(), reason="block and per-step draws differ in this torch")
def test_sampled_tokens_equal_hf_engine(tiny_llama, engine) -> None:
    """Both engines draw from the same per-row generators, so the same logits give the same text:
    exactly with whole-vocabulary sampling, and here with the default candidate sampling too."""
    requests = sampled_rows()
    expected = HFEngine(tiny_llama, TIPO_IDS).generate(requests)
    assert FastEngine(engine.weights, TIPO_IDS, candidates=False).generate(requests) == expected
    assert engine.generate(requests) == expected


def test_batched_rows_equal_rows_alone(engine) -> None:
    requests = sampled_rows()
    together = engine.generate(requests)
    assert together == [engine.generate([r])[0] for r in requests]
    assert together[::-1] == engine.generate(requests[::-1])


def test_identical_prompts_are_prefilled_once_and_sample_as_they_would_alone(engine, monkeypatch) -> None:
    """The images of one WebUI prompt share their first pass's prompt: it runs once and its
    cache rows are copied, with each row's tokens those of the row alone (its own seed)."""
    shared, other = list(prompt(20, 11)), list(prompt(21, 6))
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=12)
    requests = [GenerationRequest(ids, seed=seed, sampling=sampling)
                for ids, seed in ((shared, 1), (other, 2), (shared, 3), (shared, 4))]  # fmt: skip
    prefilled: list[int] = []
    rows = engine._prefill_rows
    monkeypatch.setattr(engine, "_prefill_rows", lambda cache, prompts: prefilled.append(len(prompts)) or rows(cache, prompts))
    together = engine.generate(requests)
    assert prefilled == [2]
    assert together == [engine.generate([r])[0] for r in requests]
    assert len({r.new_ids for r in together}) > 1  # seeds still tell the shared prompt's rows apart


def test_work_split_and_stop_cadence_do_not_change_tokens(tiny_llama, engine, monkeypatch) -> None:
    """Prefill in groups of few tokens, a stop check every 5 steps, a cache left by a bigger call."""
    requests = sampled_rows()
    expected = engine.generate(requests)
    monkeypatch.setattr(fast, "PREFILL_TOKENS", 16)
    other = FastEngine.from_model(tiny_llama, TIPO_IDS, stop_check_every=5)
    assert other.generate(requests) == expected
    big = other.cache_bytes()
    assert other.generate(requests[:2]) == expected[:2]
    assert other.cache_bytes() == big, "a smaller call must reuse the cache"
    longer = GenerationRequest(prompt(15, 200), seed=1, sampling=SamplingSettings(max_new_tokens=8))
    assert other.generate([longer]) == engine.generate([longer])
    assert other.cache_bytes() > big


def test_same_seed_same_tokens_and_global_rngs_untouched(engine) -> None:
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=16)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    tokens = {s: engine.generate([GenerationRequest(prompt(5, 8), s, sampling)])[0] for s in (0, 1, -1, 12345)}
    assert engine.generate([GenerationRequest(prompt(5, 8), 0, sampling)])[0] == tokens[0]
    assert len({r.new_ids for r in tokens.values()}) == 4
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state


#: The engine contract below holds for both engines (EOS per row, max_new_tokens per row,
#: concurrency); test_engine_hf.py keeps only what is particular to HFEngine.
ENGINES = {"fast": FastEngine.from_model, "hf": HFEngine}


@pytest.mark.parametrize("kind", ENGINES)
def test_each_row_stops_at_its_own_eos(tiny_llama, kind: str) -> None:
    """Only EOS and five other tokens may be drawn, so some seeds stop early and others not."""
    allowed = {2, 100, 200, 300, 400, 500}
    engine = ENGINES[kind](tiny_llama, TIPO_IDS, banned_ids=[i for i in range(32013) if i not in allowed])
    sampling = SamplingSettings(
        temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, max_new_tokens=12
    )
    requests = [GenerationRequest(prompt(20 + s, 6 + s % 5), seed=s, sampling=sampling) for s in range(10)]
    alone = [engine.generate([r])[0] for r in requests]
    stopped = [r for r in alone if r.stopped_at_eos]
    running = [r for r in alone if not r.stopped_at_eos]
    assert stopped and running, "the seeds should give both outcomes"
    assert all(MIN_NEW_TOKENS <= len(r.new_ids) < 12 and 2 not in r.new_ids for r in stopped)
    assert all(len(r.new_ids) == 12 for r in running)
    assert all(set(r.new_ids) <= allowed - {2} for r in alone)
    assert engine.generate(requests) == alone


@pytest.mark.parametrize("kind", ENGINES)
def test_rows_with_their_own_max_new_tokens(tiny_llama, kind: str) -> None:
    no_eos = ENGINES[kind](tiny_llama, TIPO_IDS, banned_ids=[2])
    lengths = [1, 2, 7, 3]
    requests = [
        GenerationRequest(prompt(30 + i, 5), seed=i, sampling=SamplingSettings(max_new_tokens=n))
        for i, n in enumerate(lengths)
    ]
    results = no_eos.generate(requests)
    assert [len(r.new_ids) for r in results] == lengths
    assert not any(r.stopped_at_eos for r in results)
    assert results == [no_eos.generate([r])[0] for r in requests]


def test_input_too_long_is_refused_like_hf_engine(tiny_llama) -> None:
    ok = GenerationRequest(prompt(1, 30), seed=0, sampling=SamplingSettings(max_new_tokens=50))
    too_long = GenerationRequest(prompt(2, 31), seed=0)
    messages = []
    for engine in (FastEngine.from_model(tiny_llama, TIPO_IDS, context_length=32),
                   HFEngine(tiny_llama, TIPO_IDS, context_length=32)):  # fmt: skip
        with pytest.raises(InvalidArgument, match="row 1") as raised:
            engine.generate([ok, too_long])
        messages.append(str(raised.value))
        (result,) = engine.generate([ok])
        assert len(result.new_ids) <= 2
    assert messages[0] == messages[1]


def test_bad_rows_and_settings_are_rejected(tiny_llama, engine) -> None:
    assert engine.generate([]) == []
    with pytest.raises(InvalidArgument, match="row 0"):
        engine.generate([GenerationRequest((), seed=0)])
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        engine.generate([GenerationRequest((1, 40000), seed=0)])
    weights = engine.weights
    for options in ({"banned_ids": [32013]}, {"use_cuda_graph": True}, {"stop_check_every": 0},
                    {"context_length": 4096}):  # fmt: skip
        with pytest.raises(InvalidArgument):
            FastEngine(weights, TIPO_IDS, **options)


class _OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.ops.add(str(func))
        return func(*args, **(kwargs or {}))


def test_decode_step_never_waits_for_the_device(engine, monkeypatch) -> None:
    """A CUDA graph cannot capture a host read (``.item()``, a 0-d tensor index, ``nonzero``):
    the whole sample-and-feed step must be free of them (regression: a 0-d step index)."""
    log = _OpLog()
    original = steps.StepBuffers.step

    def logged_step(self, *args, **kwargs):  # noqa: ANN001, ANN202
        with log:
            return original(self, *args, **kwargs)

    monkeypatch.setattr(steps.StepBuffers, "step", logged_step)
    engine.generate([GenerationRequest(prompt(50, 6), seed=1, sampling=SamplingSettings(max_new_tokens=4))])
    assert "aten.mm.default" in log.ops, "the step ran under the log"
    assert not {op for op in log.ops if "_local_scalar_dense" in op or "nonzero" in op or ".item" in op}


@pytest.mark.parametrize("kind", ENGINES)
def test_sixteen_threads_share_one_engine(tiny_llama, kind: str) -> None:
    engine = ENGINES[kind](tiny_llama, TIPO_IDS)
    sampling = SamplingSettings(max_new_tokens=6)
    requests = [[GenerationRequest(prompt(40 + i, 4 + i), seed=i, sampling=sampling)] for i in range(16)]
    expected = [engine.generate(r) for r in requests]
    got: dict[int, object] = {}

    def run(i: int) -> None:
        got[i] = engine.generate(requests[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [got[i] for i in range(16)] == expected


def test_gguf_file_gives_the_safetensors_weights(tiny_model_dir: Path, tiny_llama, tmp_path) -> None:
    """An F32 GGUF of the tiny model loads into the fast engine with the same weights and tokens."""
    file = load_tool("make_tiny_gguf").make_gguf(tiny_model_dir, tmp_path / "tiny.gguf", "f32")
    engine, tokenizer = load_fast_engine(file, "cpu")
    ours, theirs = engine.weights, LlamaWeights.from_model(tiny_llama)
    assert torch.equal(ours.embed, theirs.embed) and torch.equal(ours.lm_head, theirs.lm_head)
    assert all(torch.equal(a.qkv, b.qkv) for a, b in zip(ours.layers, theirs.layers, strict=True))
    assert tokenizer.encode("1girl, solo") == TipoTokenizer.from_dir(tiny_model_dir).encode("1girl, solo")
    requests = sampled_rows()[:2]
    assert engine.generate(requests) == FastEngine.from_model(tiny_llama, TIPO_IDS).generate(requests)


def test_expander_uses_the_fast_engine_and_falls_back_to_transformers(tiny_model_dir: Path, tmp_path, caplog) -> None:
    engine, tokenizer = load_fast_engine(tiny_model_dir, "cpu")
    assert isinstance(engine, FastEngine) and tokenizer.eos_id == 2
    assert isinstance(Expander(tiny_model_dir, device="cpu")._ready()[0], FastEngine)
    odd = tmp_path / "gelu-llama"
    shutil.copytree(tiny_model_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with caplog.at_level(logging.WARNING, logger="tipo.api"):
        chosen = Expander(odd, device="cpu")._ready()[0]
    assert isinstance(chosen, HFEngine)
    assert "hidden_act='gelu'" in caplog.text


def test_kernels_are_refused_where_they_cannot_run(engine: FastEngine) -> None:
    """On the CPU the engine never picks the Triton kernels, and asking for them is an error."""
    assert not engine.uses_kernels
    with pytest.raises(InvalidArgument, match="kernels=True needs CUDA"):
        FastEngine(engine.weights, TIPO_IDS, kernels=True)


@pytest.mark.skipif(not kernels.available(), reason="no Triton")
@pytest.mark.parametrize("fault", ["none", "compile error", "wrong numbers", "wrong numbers for one row"])
def test_the_kernel_check_keeps_the_torch_path_when_kernels_fail(
    engine: FastEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """The first-use check: kernels that fail to build or compute otherwise are dropped, with a
    warning that says why; working kernels pass."""
    if fault == "compile error":
        def broken(*args, **kwargs):
            raise RuntimeError("Failed to find C compiler")

        monkeypatch.setattr(kernels, "rotary_attention", broken)
    elif fault == "wrong numbers":
        right = kernels.linear
        monkeypatch.setattr(kernels, "linear", lambda x, weight, **kw: right(x, weight.flip(0), **kw))
    elif fault == "wrong numbers for one row":  # the one-row kernel alone broken
        right = kernels.linear
        monkeypatch.setattr(kernels, "linear",
                            lambda x, weight, **kw: right(x, weight.flip(0) if x.shape[0] == 1 else weight, **kw))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="tipo.engine.fast"):
        passed = engine._check_kernels()
    assert passed == (fault == "none")
    if fault == "none":
        assert not caplog.records
    else:
        assert "Triton kernels unusable here" in caplog.text
        assert ("C compiler" if fault == "compile error" else "relative error") in caplog.text


@pytest.mark.skipif(not kernels.available(), reason="no Triton")
def test_kernels_in_half_precision_write_the_cache_as_the_fused_path_does(tiny_llama) -> None:
    """float16, rows of 3..70 tokens (attention over two blocks of positions): the keys and
    values the kernels write equal the fused path's, and so do the logits, to fp16 rounding."""
    weights = LlamaWeights.from_model(copy.deepcopy(tiny_llama).half())
    rows = [list(prompt(seed, n)) for seed, n in ((1, 3), (2, 70), (3, 17))]
    caches = [KVCache.allocate(weights.shape, len(rows), 96, weights.device, torch.float16) for _ in range(2)]
    positions = torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        for cache in caches:
            prefill(weights, cache, pack_rows(rows, 0, weights.device))
        for step in range(3):
            fed = torch.tensor([5 + step, 60 + step, 900])
            fused = decode_step(weights, caches[0], fed, positions + step, length=96, fused=True)
            ours = decode_step(weights, caches[1], fed, positions + step, length=96, kernels=True)
            torch.testing.assert_close(ours, fused, atol=3e-2, rtol=1e-2)  # a few fp16 ulps of logits up to ~10
    # Layer 0 sees the same inputs on both paths: its rotated keys and values are equal bit for
    # bit (the kernel rounds each rotary product as torch does); deeper layers to fp16 rounding.
    assert torch.equal(caches[1].k[0], caches[0].k[0]) and torch.equal(caches[1].v[0], caches[0].v[0])
    torch.testing.assert_close(caches[1].k, caches[0].k, atol=4e-3, rtol=0)
    torch.testing.assert_close(caches[1].v, caches[0].v, atol=4e-3, rtol=0)


def test_prefill_groups_bounded_by_attention_scores_give_the_same_tokens(tiny_llama, engine, monkeypatch) -> None:
    """PREFILL_SCORES small enough that every row is prefilled alone (rows x heads x width^2)."""
    requests = sampled_rows()
    expected = engine.generate(requests)
    monkeypatch.setattr(fast, "PREFILL_SCORES", 1)
    assert FastEngine.from_model(tiny_llama, TIPO_IDS).generate(requests) == expected


@pytest.mark.parametrize("mixed", [False, True], ids=["one setting", "a setting per row"])
def test_candidate_sampling_keeps_and_draws_what_whole_vocabulary_sampling_does(mixed: bool) -> None:
    """warp_candidates (the engine's default) against warp_logits (transformers' processors): the
    same tokens survive with the same values, and the same noise draws the same token."""
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 32013, generator=generator) * 3
    settings = [SamplingSettings(temperature=0.35, top_p=0.95, top_k=60, min_p=0.1, repetition_penalty=1.17)] * 6
    if mixed:
        settings = [
            SamplingSettings(top_k=1), SamplingSettings(top_k=10, top_p=0.5), SamplingSettings(top_k=80, min_p=0.0),
            SamplingSettings(top_k=60, top_p=1.0, min_p=0.3), SamplingSettings(temperature=2.0, top_k=25, top_p=0.9),
            SamplingSettings(temperature=0.1, top_k=40, repetition_penalty=2.0),
        ]  # fmt: skip
    params = RowParams.build(settings, torch.device("cpu"))
    banned = torch.zeros_like(logits, dtype=torch.bool)
    banned[:, [2, int(logits[0].argmax())]] = True
    seen = torch.rand(logits.shape, generator=generator) < 0.01
    whole = warp_logits(logits, None, None, params, banned, seen=seen)
    values, ids = warp_candidates(logits, params, banned, seen)
    rebuilt = torch.full_like(whole, float("-inf")).scatter(1, ids, values)
    assert torch.equal(rebuilt.isfinite(), whole.isfinite())
    assert whole.isfinite().sum(1).min() >= 1 and (whole.isfinite().sum(1) > 1).any()
    torch.testing.assert_close(rebuilt[whole.isfinite()], whole[whole.isfinite()], atol=0, rtol=0)
    for draw in range(20):
        noise = torch.empty(logits.shape).exponential_(generator=generator)
        assert torch.equal(race_candidates(values, ids, noise), race(whole, noise)), draw


def test_candidate_sampling_engine_writes_the_same_tokens(engine: FastEngine) -> None:
    """The engine with candidate sampling (the default) writes what it writes without, rows
    without top-k included (a mixed batch samples those over the whole vocabulary), and a row
    of a mixed batch writes what it writes alone."""
    requests = sampled_rows()
    assert any(r.sampling.top_k == 0 for r in requests) and any(r.sampling.top_k > 0 for r in requests)
    together = engine.generate(requests)
    assert FastEngine(engine.weights, TIPO_IDS, candidates=False).generate(requests) == together
    assert [engine.generate([r])[0] for r in requests] == together


@pytest.mark.skipif(not kernels.available(), reason="no Triton")
@pytest.mark.parametrize("rows", [1, 20], ids=["one row (CUDA cores)", "20 rows (tensor cores)"])
def test_kernel_linear_fuses_norm_silu_and_residual(rows: int) -> None:
    """kernels.linear against its torch composition for each fused form, weights of 37 x 200 so
    that blocks are partial on both sides. float16 only: Triton 3.9's CPU interpreter misreads
    bfloat16 in ``tl.dot`` (the engine's first-use check and profile_step.py --tune cover
    bfloat16 on a GPU)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 200, generator=generator).half()
    gate_up = torch.randn(rows, 400, generator=generator).half()
    weight = (torch.randn(37, 200, generator=generator) / 10).half()
    norm = (torch.rand(200, generator=generator) + 0.5).half()
    residual = torch.randn(rows, 37, generator=generator).half()
    F = torch.nn.functional
    blocks = (16, 64, 4)
    forms = {
        "plain": (kernels.linear(x, weight, blocks=blocks), F.linear(x, weight)),
        "norm": (kernels.linear(x, weight, norm=norm, eps=1e-5, blocks=blocks),
                 F.linear(kernels.rms_norm(x, norm, 1e-5), weight)),
        "silu": (kernels.linear(gate_up, weight, silu=True, blocks=blocks), F.linear(kernels.silu_mul(gate_up), weight)),
        "residual": (kernels.linear(x, weight, residual=residual.clone(), blocks=blocks), residual + F.linear(x, weight)),
        "float32 out": (kernels.linear(x, weight, out_dtype=torch.float32, blocks=blocks), F.linear(x, weight).float()),
    }  # fmt: skip
    forms["column-major weight"] = (kernels.linear(x, weight.t().contiguous().t(), blocks=blocks), F.linear(x, weight))
    for name, (ours, theirs) in forms.items():
        assert ours.dtype == theirs.dtype, name
        torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=1e-2, msg=name)
    updated = residual.clone()
    assert kernels.linear(x, weight, residual=updated) is updated  # in place
    with pytest.raises(ValueError, match="silu needs"):
        kernels.linear(x, weight, silu=True)


@pytest.mark.skipif(not kernels.available(), reason="no Triton")
def test_kernel_linear_rows_do_not_depend_on_the_batch_beyond_one_row() -> None:
    """From two rows on, a row's product is bit-equal whatever the batch (2, 20: one or two
    blocks of rows): batch invariance of the CUDA decode step rests on it. A single row runs
    another kernel (faster), equal to rounding only: see benchmarks/README.md for how often
    that changes a sample."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(20, 200, generator=generator).half()
    weight = (torch.randn(37, 200, generator=generator) / 10).half()
    norm = (torch.rand(200, generator=generator) + 0.5).half()
    batched = kernels.linear(x, weight, norm=norm, eps=1e-5, blocks=(16, 64, 4))
    for first in (0, 7, 18):
        pair = kernels.linear(x[first : first + 2], weight, norm=norm, eps=1e-5, blocks=(16, 64, 4))
        assert torch.equal(pair, batched[first : first + 2]), first


def test_cpu_product_weights_are_column_major_and_moves_keep_them_so(tiny_llama) -> None:
    """On the CPU each product's weight is an [out, in] view of [in, out] memory (MKL's fast
    ``x @ W``), the embedding stays row-major (rows are gathered), and ``to`` lays weights out
    for the device they land on, values unchanged."""
    weights = LlamaWeights.from_model(tiny_llama)
    layer = weights.layers[0]
    for weight in (layer.qkv, layer.o, layer.gate_up, layer.down, weights.lm_head):
        assert weight.t().is_contiguous() and not weight.is_contiguous()
    assert weights.embed.is_contiguous()
    moved = weights.to("cpu")
    assert moved.layers[0].down.t().is_contiguous() and torch.equal(moved.layers[0].down, layer.down)
    state = tiny_llama.state_dict()
    assert torch.equal(layer.down, state["model.layers.0.mlp.down_proj.weight"])
