"""HFEngine and per-row sampling, on the tiny random-weight model (CPU, float32, offline).

Sampling must equal transformers' own processors on the same logits; greedy generation must
equal transformers' ``generate``; a row must not depend on the rows beside it.
"""

from __future__ import annotations

import inspect
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GenerationConfig, LogitsProcessorList, generation

from tipo.engine.base import GenerationRequest, GenerationResult, SamplingSettings
from tipo.engine.hf import MIN_NEW_TOKENS, HFEngine, TokenIds
from tipo.engine.sampling import RowParams, derive_seed, draw_tokens, make_generator, warp_logits
from tipo.errors import InvalidArgument

TIPO_IDS = TokenIds(bos_id=1, eos_id=2, pad_id=2)
HAS_MIN_P = hasattr(generation, "MinPLogitsWarper")


def transformers_chain(s: SamplingSettings) -> list:
    """transformers' processors for one row, built as ``generate`` builds them (it skips the
    no-op values), in the order ``_get_logits_processor`` uses."""
    chain: list = []
    if s.repetition_penalty != 1.0:
        chain.append(generation.RepetitionPenaltyLogitsProcessor(penalty=s.repetition_penalty))
    if s.temperature != 1.0:
        chain.append(generation.TemperatureLogitsWarper(s.temperature))
    if s.top_k != 0:
        chain.append(generation.TopKLogitsWarper(top_k=s.top_k))
    if s.top_p < 1.0:
        chain.append(generation.TopPLogitsWarper(top_p=s.top_p))
    if s.min_p > 0 and HAS_MIN_P:
        chain.append(generation.MinPLogitsWarper(min_p=s.min_p))
    return chain


def apply_chain(chain: list, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    scores = scores.clone()  # 4.30's repetition penalty writes in place
    for processor in chain:
        scores = processor(input_ids, scores)
    return scores


def assert_same_as_transformers(rows: list[SamplingSettings], seed: int, vocab: int = 512) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(rows), vocab, generator=generator) * 3
    context = torch.randint(0, vocab, (len(rows), 12), generator=generator)
    ours = warp_logits(scores, context, None, RowParams.build(rows, torch.device("cpu")))
    for row, row_settings in enumerate(rows):
        theirs = apply_chain(transformers_chain(row_settings), context[row : row + 1], scores[row : row + 1])
        assert torch.equal(ours[row], theirs[0]), f"row {row}: {row_settings}"


def without_min_p(s: SamplingSettings) -> SamplingSettings:
    if HAS_MIN_P:
        return s
    return SamplingSettings(s.temperature, s.top_p, s.top_k, 0.0, s.repetition_penalty, s.max_new_tokens)


sampling_settings = st.builds(
    SamplingSettings,
    temperature=st.sampled_from([0.1, 0.35, 0.5, 1.0, 1.7]) | st.floats(0.05, 3.0),
    top_p=st.sampled_from([0.5, 0.9, 0.95, 1.0]) | st.floats(0.01, 1.0),
    top_k=st.sampled_from([0, 1, 2, 60, 80, 600]) | st.integers(0, 700),
    min_p=st.sampled_from([0.0, 0.05, 0.1, 0.5]) | st.floats(0.0, 0.9),
    repetition_penalty=st.sampled_from([1.0, 1.17, 0.8]) | st.floats(0.5, 3.0),
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(sampling_settings.map(without_min_p), min_size=1, max_size=6), seed=st.integers(0, 2**31))
def test_warp_equals_transformers_processors_row_by_row(rows: list[SamplingSettings], seed: int) -> None:
    assert_same_as_transformers(rows, seed)


def test_warp_equals_transformers_on_full_vocabulary_with_reference_defaults() -> None:
    reference = SamplingSettings(temperature=0.35, top_p=0.95, top_k=60, min_p=0.1, repetition_penalty=1.17)
    rows = [without_min_p(r) for r in (reference, SamplingSettings(), SamplingSettings(top_k=0, top_p=1.0))]
    assert_same_as_transformers(rows, seed=7, vocab=32013)


def installed_generate_chain(model, config: GenerationConfig, input_ids: torch.Tensor) -> list:
    """The processors the installed transformers' ``generate`` builds for ``config``."""
    build = model._get_logits_processor
    if not hasattr(config, "_eos_token_tensor"):  # 4.46 reads it; generate() sets it first
        config._eos_token_tensor = torch.tensor([config.eos_token_id])
    wanted = {
        "generation_config": config,
        "input_ids_seq_length": input_ids.shape[1],
        "encoder_input_ids": input_ids,
        "prefix_allowed_tokens_fn": None,
        "logits_processor": LogitsProcessorList(),
        "device": input_ids.device,
        "model_kwargs": {"attention_mask": torch.ones_like(input_ids)},
    }
    accepted = inspect.signature(build).parameters
    chain = list(build(**{k: v for k, v in wanted.items() if k in accepted}))
    if hasattr(model, "_get_logits_warper"):  # 4.30-4.44 build the sampling warpers apart
        warper_params = inspect.signature(model._get_logits_warper).parameters
        extra = {"device": input_ids.device} if "device" in warper_params else {}
        chain += list(model._get_logits_warper(config, **extra))
    return chain


def test_order_is_the_installed_generate_order(tiny_llama) -> None:
    """Guards the order claim against the installed version's ``_get_logits_processor``."""
    row = without_min_p(SamplingSettings(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.3))
    fields = dict(do_sample=True, temperature=row.temperature, top_p=row.top_p, top_k=row.top_k,
                  repetition_penalty=row.repetition_penalty, eos_token_id=2, pad_token_id=2)
    if HAS_MIN_P:
        fields["min_p"] = row.min_p
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 32000, (1, 10), generator=generator)
    chain = installed_generate_chain(tiny_llama, GenerationConfig(**fields), input_ids)
    names = [type(p).__name__ for p in chain]
    expected = ["RepetitionPenaltyLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"]
    expected += ["MinPLogitsWarper"] if HAS_MIN_P else []
    assert [n for n in names if n in expected] == expected
    scores = torch.randn(1, 32013, generator=generator) * 3
    theirs = apply_chain(chain, input_ids, scores)
    ours = warp_logits(scores, input_ids, None, RowParams.build([row], torch.device("cpu")))
    assert torch.equal(ours, theirs)


def test_padding_and_banned_ids_are_not_penalised_context() -> None:
    """Left pads are EOS for TIPO; a row's pads must not count as repeated tokens."""
    scores = torch.tensor([[1.0, 2.0, 3.0, -1.0], [1.0, 2.0, 3.0, -1.0]])
    context = torch.tensor([[2, 2, 0], [3, 3, 0]])
    valid = torch.tensor([[False, False, True], [True, True, True]])
    row = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=2.0)
    banned = torch.tensor([[False, True, False, False], [False, False, False, False]])
    out = warp_logits(scores, context, valid, RowParams.build([row, row], torch.device("cpu")), banned)
    assert out[0].tolist() == [0.5, float("-inf"), 3.0, -1.0]
    assert out[1].tolist() == [0.5, 2.0, 3.0, -2.0]


def test_draw_follows_each_rows_generator_only() -> None:
    scores = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    together = draw_tokens(scores, [make_generator(s, cpu) for s in (5, 6, 7)])
    alone = [draw_tokens(scores[i : i + 1], [make_generator(s, cpu)])[0] for i, s in enumerate((5, 6, 7))]
    assert together.tolist() == [int(t) for t in alone]


def test_draw_respects_filtered_tokens_and_distribution() -> None:
    scores = torch.full((1, 50), float("-inf"))
    scores[0, 7] = 0.0
    scores[0, 9] = 0.0
    scores[0, 11] = 1.0986123  # log 3: token 11 should win ~60% (3 / 5)
    generator = make_generator(1, torch.device("cpu"))
    counts = {7: 0, 9: 0, 11: 0}
    for _ in range(2000):
        counts[int(draw_tokens(scores, [generator])[0])] += 1
    assert sum(counts.values()) == 2000
    assert 0.55 < counts[11] / 2000 < 0.65
    assert 0.15 < counts[7] / 2000 < 0.25


@pytest.mark.parametrize("seed", [0, 1, -1, 2**63, 2**64 + 5, -(2**80)])
def test_derive_seed_any_integer(seed: int) -> None:
    value = derive_seed(seed)
    assert 0 <= value < 2**63
    assert value == derive_seed(seed)


def test_derive_seed_separates_wrapped_values_and_rejects_non_integers() -> None:
    assert len({derive_seed(s) for s in (0, 1, -1, 2**64 - 1, 2**64, 2**64 + 1)}) == 6
    for bad in (True, 1.0, "1", None):
        with pytest.raises(InvalidArgument):
            derive_seed(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The engine on the tiny model


def prompt(seed: int, length: int) -> tuple[int, ...]:
    rng = random.Random(seed)
    return (1,) + tuple(rng.randrange(3, 32013) for _ in range(length - 1))


@pytest.fixture(scope="module")
def engine(tiny_llama) -> HFEngine:
    return HFEngine(tiny_llama, TIPO_IDS)


def transformers_greedy(model, prompts: list[tuple[int, ...]], max_new_tokens: int) -> list[GenerationResult]:
    """transformers' own greedy decoding of the left-padded prompts, cut at EOS like the engine."""
    width = max(map(len, prompts))
    batch = torch.tensor([[2] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        batch, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
        min_new_tokens=MIN_NEW_TOKENS, eos_token_id=2, pad_token_id=2,
    )
    results = []
    for tokens in out[:, width:].tolist():
        stopped = 2 in tokens
        results.append(GenerationResult(tuple(tokens[: tokens.index(2)] if stopped else tokens), stopped))
    return results


@pytest.mark.parametrize(
    "greedy",
    [
        SamplingSettings(top_k=1, repetition_penalty=1.0, max_new_tokens=12),
        SamplingSettings(temperature=1e-4, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, max_new_tokens=12),
    ],
    ids=["top_k=1", "temperature=1e-4"],
)
def test_greedy_equals_transformers_generate(tiny_llama, engine: HFEngine, greedy: SamplingSettings) -> None:
    prompts = [prompt(1, 9), prompt(2, 5), prompt(3, 14)]
    results = engine.generate([GenerationRequest(p, seed=i, sampling=greedy) for i, p in enumerate(prompts)])
    assert results == transformers_greedy(tiny_llama, prompts, 12)
    assert results == [transformers_greedy(tiny_llama, [p], 12)[0] for p in prompts]


def test_batched_rows_equal_rows_alone(engine: HFEngine) -> None:
    """Rows of different lengths, settings and seeds: batched, each equals itself alone."""
    rows = [
        (prompt(10, 7), 0, SamplingSettings(max_new_tokens=24)),
        (prompt(11, 19), -5, SamplingSettings(temperature=1.0, top_k=0, max_new_tokens=20)),
        (prompt(12, 3), 2**70, SamplingSettings(top_p=0.7, min_p=0.0, max_new_tokens=9)),
        (prompt(13, 12), 42, SamplingSettings(repetition_penalty=1.0, max_new_tokens=16)),
    ]
    requests = [GenerationRequest(ids, seed=seed, sampling=sampling) for ids, seed, sampling in rows]
    together = engine.generate(requests)
    alone = [engine.generate([r])[0] for r in requests]
    assert together == alone
    assert [len(r.new_ids) for r in together if not r.stopped_at_eos] == [
        r.sampling.max_new_tokens for r, res in zip(requests, together, strict=True) if not res.stopped_at_eos
    ]


def test_same_seed_same_tokens_and_different_seeds_differ(engine: HFEngine) -> None:
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=16)
    tokens = {
        seed: engine.generate([GenerationRequest(prompt(5, 8), seed=seed, sampling=sampling)])[0]
        for seed in (0, 1, -1, 12345)
    }
    again = engine.generate([GenerationRequest(prompt(5, 8), seed=0, sampling=sampling)])[0]
    assert again == tokens[0]
    assert len({r.new_ids for r in tokens.values()}) == 4
    assert all(len(r.new_ids) >= MIN_NEW_TOKENS for r in tokens.values())


def test_global_rngs_untouched(engine: HFEngine) -> None:
    torch_state = torch.get_rng_state()
    python_state = random.getstate()
    engine.generate([GenerationRequest(prompt(6, 6), seed=3, sampling=SamplingSettings(max_new_tokens=5))])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state


def test_input_too_long_names_the_row(tiny_llama) -> None:
    engine = HFEngine(tiny_llama, TIPO_IDS, context_length=32)
    ok = GenerationRequest(prompt(1, 30), seed=0, sampling=SamplingSettings(max_new_tokens=50))
    too_long = GenerationRequest(prompt(2, 31), seed=0)
    with pytest.raises(InvalidArgument, match="row 1"):
        engine.generate([ok, too_long])
    (result,) = engine.generate([ok])
    assert len(result.new_ids) <= 2


def test_bad_rows_are_rejected(engine: HFEngine) -> None:
    assert engine.generate([]) == []
    with pytest.raises(InvalidArgument, match="row 0"):
        engine.generate([GenerationRequest((), seed=0)])
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        engine.generate([GenerationRequest((1, 40000), seed=0)])
    with pytest.raises(InvalidArgument):
        HFEngine(engine._model, TIPO_IDS, banned_ids=[32013])
    with pytest.raises(InvalidArgument):
        HFEngine(engine._model, TIPO_IDS, dtype=torch.bfloat16)


# EOS per row, max_new_tokens per row and concurrency are checked on both engines in
# tests/test_engine_fast.py.
