"""Run TIPO over a batch of requests, pass by pass, one batched engine call per round.

Every request's first pass runs in one batched call, then every request's next pass or retry,
and so on: only the rows that still need a generation run again, together. A row's random
stream comes from its own seed (:func:`tipo.request.pass_seed`), never from its place in the
batch. A failure never loses the user's prompt: the row keeps its original prompt and says
why, unless ``strict`` asks for the error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

from tipo.categorise import Lookup
from tipo.engine.base import Control, Engine, GenerationRequest, Progress
from tipo.errors import Interrupted, TipoError
from tipo.parse import Parsed, parse_output
from tipo.postprocess import PassInput, meets_target, post_process
from tipo.render import general_text, render_input
from tipo.request import ExpandRequest, Prepared, pass_seed, prepare, resolve_seed
from tipo.restore import compose_prompt

__all__ = ["Expansion", "Tokenizer", "expand_batch", "MAX_SAME_OUTPUT"]

logger = logging.getLogger(__name__)

#: A pass stops retrying once the same output came back this many times (the reference's rule).
MAX_SAME_OUTPUT = 5


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class Expansion:
    """The result of one request. ``prompt`` is the original prompt when ``error`` is set."""

    prompt: str
    original: str
    seed: int
    error: str | None = None
    fields: Parsed = field(default_factory=dict)
    generations: int = 0
    new_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Row:
    """Mutable progress of one request inside one :func:`expand_batch` call."""

    prepared: Prepared
    seed: int
    tags: str
    nl: str
    pass_index: int = 0
    attempt: int = 0
    same_output: int = 0
    seen: set[str] = field(default_factory=set)
    parsed: Parsed = field(default_factory=dict)
    generations: int = 0
    new_tokens: int = 0
    done: bool = False
    warned_cut: bool = False

    def model_input(self) -> str:
        step = self.prepared.passes[self.pass_index]
        return render_input(self.prepared.meta, self.tags, self.nl, step)


def _fit_input(row: _Row, tokenizer: Tokenizer, budget: int) -> tuple[str, list[int]]:
    """The row's model input as ids, its tags and NL cut (from the end) until it fits
    ``budget`` tokens. The user's prompt is untouched: only what the model reads shrinks."""
    text = row.model_input()
    ids = tokenizer.encode(text)
    for _ in range(40):
        if len(ids) <= budget:
            return text, ids
        tags = [t for t in row.tags.split(", ") if t]
        sentences = row.nl.split(". ")
        keep = max(0.5, budget / len(ids) * 0.95)
        if len(tags) > 1:
            row.tags = ", ".join(tags[: int(len(tags) * keep)])
        elif len(sentences) > 1:
            row.nl = ". ".join(sentences[: int(len(sentences) * keep)])
        elif row.nl:
            row.nl = row.nl[: int(len(row.nl) * keep)]
        elif row.tags:
            row.tags = row.tags[: int(len(row.tags) * keep)]
        if not row.warned_cut:
            logger.warning("Model input longer than %d tokens; cut to fit the context", budget)
            row.warned_cut = True
        text = row.model_input()
        ids = tokenizer.encode(text)
    raise TipoError(f"could not fit the model input into {budget} tokens")


def _continuation(tokenizer: Tokenizer, input_ids: list[int], new_ids: Sequence[int]) -> str:
    """Text of the new tokens as they read after the input (SentencePiece drops the leading
    space of a lone first piece, so decode them in context)."""
    head = tokenizer.decode(input_ids)
    full = tokenizer.decode([*input_ids, *new_ids])
    return full[len(head) :] if full.startswith(head) else tokenizer.decode(new_ids)


def _advance(row: _Row, model_text: str, lookup: Lookup) -> None:
    """Take one generation's text; decide retry, next pass or done (the reference's loop)."""
    step = row.prepared.passes[row.pass_index]
    fed = PassInput(row.tags, row.nl)
    row.parsed = post_process(parse_output(model_text, lookup), fed, step.task, step.length, row.prepared.bans)
    out = row.parsed
    retry = not meets_target(out, step.task, step.length)
    if retry:
        row.attempt += 1
        if model_text in row.seen:
            row.same_output += 1
        else:
            row.same_output = 0
            row.seen.add(model_text)
        retry = row.attempt <= row.prepared.request.max_retry and row.same_output < MAX_SAME_OUTPUT
    if retry:
        row.nl = str(out.get("extended") or out.get("generated") or row.nl).strip()
        row.tags = general_text({"special": list(out.get("special", [])), "general": list(out.get("general", []))})
        return
    row.pass_index += 1
    row.attempt = row.same_output = 0
    row.seen = set()
    if row.pass_index >= len(row.prepared.passes):
        row.done = True
        return
    if "generated" in out and row.nl:
        out["extended"] = out.pop("generated")
    row.nl = str(out.get("generated") or out.get("extended") or row.nl).strip()
    row.tags = general_text({"special": list(out.get("special", [])), "general": list(out.get("general", []))})


def expand_batch(
    requests: Sequence[ExpandRequest],
    engine: Engine,
    tokenizer: Tokenizer,
    lookup: Lookup,
    *,
    strict: bool = False,
    control: Control | None = None,
) -> list[Expansion]:
    """Expand every request; results in request order. See the module docstring.

    ``control`` reports progress per decode step and can stop the job between steps: the rows
    that were not finished then keep their original prompts (error "interrupted"), strict or not.
    """
    started = time.perf_counter()
    rows: list[_Row | Expansion] = []
    for request in requests:
        seed = resolve_seed(request.seed)
        try:
            prepared = prepare(request, lookup)
        except TipoError as error:
            if strict:
                raise
            rows.append(Expansion(request.prompt, request.prompt, seed, error=str(error)))
            continue
        rows.append(_Row(prepared, seed, prepared.tags, prepared.nl))

    try:
        _run(rows, engine, tokenizer, lookup, control)
    except Interrupted as stop:
        logger.info("TIPO interrupted: %s", stop)
        return [_interrupted(r, lookup, strict, stop) for r in rows]
    except Exception as error:  # the engine is foreign code: keep every prompt, say why
        if strict:
            raise
        logger.warning("TIPO generation failed, original prompts kept: %s", error, exc_info=True)
        message = f"{type(error).__name__}: {error}"
        return [
            r if isinstance(r, Expansion) else Expansion(r.prepared.request.prompt, r.prepared.request.prompt, r.seed, error=message)
            for r in rows
        ]  # fmt: skip

    results = [r if isinstance(r, Expansion) else _finish(r, lookup, strict) for r in rows]
    logger.info(
        "TIPO expanded %d prompt(s) in %.2f s (%d generations)",
        len(results), time.perf_counter() - started, sum(r.generations for r in results),
    )  # fmt: skip
    return results


def _interrupted(row: _Row | Expansion, lookup: Lookup, strict: bool, stop: Interrupted) -> Expansion:
    if isinstance(row, Expansion):
        return row
    if row.done:
        return _finish(row, lookup, strict)
    request = row.prepared.request
    return Expansion(request.prompt, request.prompt, row.seed, f"interrupted: {stop}", {}, row.generations, row.new_tokens)


def _round_control(control: Control | None, round_index: int) -> Control | None:
    """``control`` with the engine's progress tagged by the pipeline's round number."""
    if control is None:
        return None

    def on_progress(progress: Progress) -> None:
        control.on_progress(replace(progress, round=round_index))

    return Control(control.should_stop, on_progress)


def _run(
    rows: Sequence[_Row | Expansion], engine: Engine, tokenizer: Tokenizer, lookup: Lookup, control: Control | None = None
) -> None:
    round_index = 0
    while True:
        active = [r for r in rows if isinstance(r, _Row) and not r.done]
        if not active:
            return
        round_index += 1
        batch = []
        for row in active:
            sampling = row.prepared.request.sampling
            budget = max(engine.context_length - sampling.max_new_tokens, engine.context_length // 2)
            text, ids = _fit_input(row, tokenizer, budget)
            room = engine.context_length - len(ids)
            if sampling.max_new_tokens > room:
                sampling = replace(sampling, max_new_tokens=room)
            seed = pass_seed(row.seed, row.pass_index, row.attempt)
            batch.append((row, text, ids, GenerationRequest(tuple(ids), seed, sampling)))
        requests = [item[3] for item in batch]
        round_control = _round_control(control, round_index)
        # Engines written before Control take the requests alone.
        results = engine.generate(requests) if round_control is None else engine.generate(requests, control=round_control)
        for (row, text, ids, _), result in zip(batch, results):
            row.generations += 1
            row.new_tokens += len(result.new_ids)
            _advance(row, text + _continuation(tokenizer, ids, result.new_ids), lookup)


def _finish(row: _Row, lookup: Lookup, strict: bool) -> Expansion:
    request = row.prepared.request
    try:
        prompt = compose_prompt(row.prepared.parsed.pieces, request.nl_prompt, row.parsed, row.prepared.template, lookup)
    except TipoError as error:
        if strict:
            raise
        return Expansion(request.prompt, request.prompt, row.seed, error=str(error))
    return Expansion(prompt, request.prompt, row.seed, None, row.parsed, row.generations, row.new_tokens)
