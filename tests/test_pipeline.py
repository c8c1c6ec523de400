"""The batched pipeline: pass by pass, retries, seeds, fallbacks; with the tiny real model and
with a scripted engine where the test needs to choose what the model writes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pytest

from tipo.api import Expander
from tipo.engine.base import GenerationRequest, GenerationResult, SamplingSettings
from tipo.errors import ModelNotFoundError
from tipo.pipeline import expand_batch
from tipo.plan import Mode
from tipo.request import ExpandRequest
from tipo.syntax import parse_prompt
from tipo.tokenizer import TipoTokenizer

FAST = SamplingSettings(max_new_tokens=12)
FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "tipo-tokenizer"


def lookup(name: str) -> str | None:
    return {"hatsune miku": "characters", "wlop": "artist", "highres": "meta"}.get(name)


@pytest.fixture(scope="module")
def tokenizer() -> TipoTokenizer:
    return TipoTokenizer.from_dir(FIXTURE_TOKENIZER)


@pytest.fixture(scope="module")
def expander(tiny_model_dir: Path) -> Expander:
    return Expander(tiny_model_dir, device="cpu", lookup=lookup)


def request(prompt: str, seed: int = 7, **kwargs) -> ExpandRequest:
    kwargs.setdefault("sampling", FAST)
    kwargs.setdefault("tag_length", "very_short")
    kwargs.setdefault("nl_length", "very_short")
    kwargs.setdefault("max_retry", 1)
    return ExpandRequest(prompt, seed=seed, **kwargs)


# -- with the tiny real model ---------------------------------------------------------------

PROMPT = "masterpiece, (1girl:1.2), hatsune_miku, <lora:style:0.8>, solo BREAK scenery, A girl walks in the rain."


def test_expansion_keeps_every_user_piece(expander):
    (result,) = expander.expand([request(PROMPT)])
    assert result.ok, result.error
    for piece in parse_prompt(PROMPT).pieces:
        assert piece.text in result.prompt
    assert result.generations >= 2 and result.new_tokens > 0


def test_same_seed_same_expansion_alone_or_in_a_batch(expander):
    alone = expander.expand([request(PROMPT, seed=3)])[0].prompt
    batch = expander.expand([request("1girl", seed=1), request(PROMPT, seed=3), request("", seed=0)])
    assert batch[1].prompt == alone
    assert expander.expand([request(PROMPT, seed=4)])[0].prompt != alone


def test_random_seed_is_reported_and_reproduces(expander):
    (first,) = expander.expand([request("1girl, solo", seed=-1)])
    assert first.seed >= 0
    (again,) = expander.expand([request("1girl, solo", seed=first.seed)])
    assert again.prompt == first.prompt


@pytest.mark.parametrize("prompt", ["", "🎨 ünïcödé, \u202eRTL\u202c, e\u0301, \x07bell", "((((", "a" * 3])
def test_odd_prompts_expand_or_fall_back_cleanly(expander, prompt):
    (result,) = expander.expand([request(prompt)])
    assert result.ok, result.error
    for piece in parse_prompt(prompt).pieces:
        assert piece.text in result.prompt


def test_overlong_prompt_is_cut_for_the_model_and_kept_whole(expander, caplog):
    tags = ", ".join(f"tag{i} word{i}" for i in range(2000))
    assert len(tags) > 20_000
    with caplog.at_level(logging.WARNING, logger="tipo.pipeline"):
        (result,) = expander.expand([request(tags)])
    assert result.ok, result.error
    assert "cut to fit the context" in caplog.text
    assert tags.split(", ")[-1] in result.prompt and tags.split(", ")[0] in result.prompt


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="KBlueLeaf/TIPO-500M-ft"):
        Expander("someone/not-a-tipo-model").expand([request("1girl")])
    with pytest.raises(FileNotFoundError):
        Expander("/nonexistent/folder").expand([request("1girl")])


# -- with a scripted engine ------------------------------------------------------------------


@dataclass
class ScriptedEngine:
    """Writes a chosen continuation per row (by the row's input text) and records each call."""

    tokenizer: TipoTokenizer
    script: dict[str, str]
    context_length: int = 1024
    calls: list[int] = field(default_factory=list)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls.append(len(requests))
        out = []
        for row in requests:
            text = self.tokenizer.decode(list(row.input_ids))
            continuation = next((c for key, c in self.script.items() if key in text), "")
            ids = self.tokenizer.encode(text + continuation)[len(row.input_ids) :]
            out.append(GenerationResult(tuple(ids), True))
        return out


def test_retries_rerun_only_the_rows_that_need_them(tokenizer):
    many = ", " + ", ".join(f"t{i}" for i in range(10))
    engine = ScriptedEngine(tokenizer, {"tag: full": many, "tag: thin": ", one"})
    requests = [request("full", mode=Mode.TAG_ONLY, max_retry=3), request("thin", mode=Mode.TAG_ONLY, max_retry=3)]
    results = expand_batch(requests, engine, tokenizer, lookup)
    assert engine.calls == [2, 1, 1, 1]
    assert all(r.ok for r in results)
    assert results[0].generations == 1 and results[1].generations == 4


def test_same_output_five_times_stops_the_retries(tokenizer):
    engine = ScriptedEngine(tokenizer, {"tag: thin": ""})
    (result,) = expand_batch([request("thin", mode=Mode.TAG_ONLY, max_retry=10)], engine, tokenizer, lookup)
    assert result.generations == 6, "first try, then the same output 5 more times"


def test_engine_failure_keeps_the_original_prompts(tokenizer, caplog):
    class Broken:
        context_length = 1024

        def generate(self, requests):
            raise RuntimeError("CUDA out of memory (simulated)")

    results = expand_batch([request("1girl, <lora:a:1>"), request("solo")], Broken(), tokenizer, lookup)
    assert [r.prompt for r in results] == ["1girl, <lora:a:1>", "solo"]
    assert all("out of memory" in r.error for r in results)
    assert "original prompts kept" in caplog.text
    with pytest.raises(RuntimeError):
        expand_batch([request("1girl")], Broken(), tokenizer, lookup, strict=True)


def test_bad_request_fails_alone(tokenizer):
    engine = ScriptedEngine(tokenizer, {"tag:": ", a, b, c, d, e, f"})
    good, bad = expand_batch([request("1girl"), request("solo", ban_tags=("/(/",))], engine, tokenizer, lookup)
    assert good.ok and not bad.ok
    assert bad.prompt == "solo" and "'/(/'" in bad.error
