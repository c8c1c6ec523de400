"""Run TIPO over a batch of requests, pass by pass, one batched engine call per round.

Every request's first pass runs in one batched call, then every request's next pass or retry,
and so on: only the rows that still need a generation run again, together. A row's random
stream comes from its own seed (:func:`tipo.request.pass_seed`), never from its place in the
batch. A failure never loses the user's prompt: the row keeps its original prompt and says
why, unless ``strict`` asks for the error.

A round that runs out of GPU memory is split in halves and retried, down to one row; the rows
of this call then go in batches no larger than what fitted, and a row that does not fit alone
keeps its original prompt (:class:`tipo.api.Expander` first tries such a row on the CPU).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

from tipo.categorise import Lookup
from tipo.engine.base import MIN_NEW_TOKENS, Control, Engine, GenerationRequest, GenerationResult, Progress
from tipo.errors import GenerationError, Interrupted, TipoError
from tipo.parse import Parsed, parse_output
from tipo.postprocess import PassInput, meets_target, post_process
from tipo.render import MetaLines, general_text, render_input
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
    error: str | None = None  # set when this row alone failed (it is then done)
    meta: MetaLines | None = None  # what the model reads of the meta lines (cut to fit the context)

    def model_input(self) -> str:
        step = self.prepared.passes[self.pass_index]
        return render_input(self.meta or self.prepared.meta, self.tags, self.nl, step)


#: Meta lines that hold the user's tags, longest first cut when the input overflows the context.
_CUTTABLE_META = ("artist", "characters", "copyrights", "meta", "quality")


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
        meta = row.meta or row.prepared.meta
        key = max(_CUTTABLE_META, key=lambda k: len(getattr(meta, k)))
        if len(getattr(meta, key)) > len(row.tags) + len(row.nl):  # e.g. 4,000 artist names
            items = getattr(meta, key).split(", ")
            value = ", ".join(items[: int(len(items) * keep)]) if len(items) > 1 else items[0][: int(len(items[0]) * keep)]
            row.meta = replace(meta, **{key: value})
        elif len(tags) > 1:
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
        _run(rows, engine, tokenizer, lookup, control, strict)
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
    rows: Sequence[_Row | Expansion],
    engine: Engine,
    tokenizer: Tokenizer,
    lookup: Lookup,
    control: Control | None = None,
    strict: bool = False,
) -> None:
    round_index = 0
    max_rows = len(rows)  # lowered when a batch runs out of memory, for the rest of this call
    while True:
        active = [r for r in rows if isinstance(r, _Row) and not r.done]
        if not active:
            return
        round_index += 1
        batch = []
        for row in active:
            sampling = row.prepared.request.sampling
            budget = max(engine.context_length - max(sampling.max_new_tokens, MIN_NEW_TOKENS), engine.context_length // 2)
            try:
                text, ids = _fit_input(row, tokenizer, budget)
            except TipoError as error:
                if strict:
                    raise
                _fail(row, str(error))
                continue
            room = engine.context_length - len(ids)
            if sampling.max_new_tokens > room:
                sampling = replace(sampling, max_new_tokens=room)
            seed = pass_seed(row.seed, row.pass_index, row.attempt)
            batch.append((row, text, ids, GenerationRequest(tuple(ids), seed, sampling)))
        requests = [item[3] for item in batch]
        generate = _caller(engine, _round_control(control, round_index))
        results, failures, max_rows = _generate_fitting(generate, requests, max_rows)
        for index, oom in failures.items():
            if strict:
                raise GenerationError(_out_of_memory_message(oom)) from oom
            _fail(batch[index][0], _out_of_memory_message(oom))
        if failures:
            logger.warning("TIPO: out of memory for %d prompt(s) alone, original prompts kept", len(failures))
        for (row, text, ids, _), result in zip(batch, results):
            if result is None:
                continue
            row.generations += 1
            row.new_tokens += len(result.new_ids)
            _advance(row, text + _continuation(tokenizer, ids, result.new_ids), lookup)


def _caller(engine: Engine, control: Control | None) -> Callable[[Sequence[GenerationRequest]], list[GenerationResult]]:
    """``engine.generate`` with ``control``; engines written before Control take the requests alone."""
    if control is None:
        return lambda part: engine.generate(part)
    return lambda part: engine.generate(part, control=control)


def _fail(row: _Row, message: str) -> None:
    row.error, row.done = message, True


def _is_out_of_memory(error: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError`` (torch >= 1.13), or the ``RuntimeError`` that MPS and older
    torch raise (their message says "out of memory"). torch is looked up, never imported here."""
    torch = sys.modules.get("torch")
    cuda_oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(cuda_oom, type) and isinstance(error, cuda_oom):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _out_of_memory_message(error: BaseException) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    return (
        f"out of memory even for this prompt alone ({type(error).__name__}: {first_line}); original prompt "
        f"kept. Try a smaller batch, a smaller TIPO model, or running TIPO on the CPU (device cpu)"
    )


def _generate_fitting(
    generate: Callable[[Sequence[GenerationRequest]], list[GenerationResult]],
    requests: Sequence[GenerationRequest],
    max_rows: int,
) -> tuple[list[GenerationResult | None], dict[int, BaseException], int]:
    """Run ``requests`` in calls of at most ``max_rows`` rows, halving a call that runs out of
    memory until it fits or is one row. Returns the results (``None`` for a row that did not
    fit alone), those rows' errors by index, and the row limit for the next rounds.

    A row's tokens depend only on its own seed (engine contract), so splitting changes no text.
    """
    results: list[GenerationResult | None] = [None] * len(requests)
    failures: dict[int, BaseException] = {}
    size = max(1, max_rows)
    work = deque((start, min(start + size, len(requests))) for start in range(0, len(requests), size))
    split = False
    while work:
        start, end = work.popleft()
        try:
            results[start:end] = generate(requests[start:end])
        except Exception as error:
            if not _is_out_of_memory(error):
                raise
            if end - start == 1:
                failures[start] = error
                continue
            middle = (start + end) // 2
            max_rows, split = min(max_rows, end - middle), True
            work.extendleft([(middle, end), (start, middle)])
    if split:
        logger.warning("TIPO: out of memory for the whole batch; ran it in parts of at most %d row(s)", max_rows)
    return results, failures, max_rows


def _finish(row: _Row, lookup: Lookup, strict: bool) -> Expansion:
    request = row.prepared.request
    if row.error is not None:
        return Expansion(request.prompt, request.prompt, row.seed, row.error, {}, row.generations, row.new_tokens)
    try:
        prompt = compose_prompt(row.prepared.parsed.pieces, request.nl_prompt, row.parsed, row.prepared.template, lookup)
    except TipoError as error:
        if strict:
            raise
        return Expansion(request.prompt, request.prompt, row.seed, error=str(error))
    return Expansion(prompt, request.prompt, row.seed, None, row.parsed, row.generations, row.new_tokens)
