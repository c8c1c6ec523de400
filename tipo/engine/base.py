"""The interface between the prompt pipeline and whatever runs the model.

The pipeline renders text and tokenises it with :mod:`tipo.tokenizer`; an engine only sees
token ids. One :meth:`Engine.generate` call runs every row it is given together, each row
with its own seed and sampling settings, so a WebUI batch costs one batched decode per pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from tipo.errors import Interrupted, InvalidArgument

#: EOS is banned until a row has this many new tokens (format sheet, "Sampling defaults"), so
#: every engine writes at least this many: the pipeline keeps room for them in the context.
MIN_NEW_TOKENS = 2


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling of one row. Defaults are the reference extension's UI values (format sheet,
    "Sampling defaults"); ``repetition_penalty`` and ``min_p`` are the reference library's."""

    temperature: float = 0.5
    top_p: float = 0.95
    top_k: int = 80
    min_p: float = 0.1
    repetition_penalty: float = 1.17
    max_new_tokens: int = 512

    def __post_init__(self) -> None:
        wrong = [f"{name}={getattr(self, name)!r} (expected a number)" for name in
                 ("temperature", "top_p", "min_p", "repetition_penalty")
                 if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, float))]  # fmt: skip
        if wrong:  # before the range checks, which would raise TypeError on them
            raise InvalidArgument("invalid sampling settings: " + "; ".join(wrong))
        problems = []
        if not (0.0 < self.temperature <= 10.0):
            problems.append(f"temperature={self.temperature!r} (must be in (0, 10])")
        if not (0.0 < self.top_p <= 1.0):
            problems.append(f"top_p={self.top_p!r} (must be in (0, 1])")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            problems.append(f"top_k={self.top_k!r} (must be an integer >= 0; 0 disables it)")
        if not (0.0 <= self.min_p < 1.0):
            problems.append(f"min_p={self.min_p!r} (must be in [0, 1))")
        if not (0.0 < self.repetition_penalty <= 10.0):
            problems.append(f"repetition_penalty={self.repetition_penalty!r} (must be in (0, 10])")
        if not (isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= 1024):
            problems.append(f"max_new_tokens={self.max_new_tokens!r} (must be an integer in [1, 1024])")
        if problems:
            raise InvalidArgument("invalid sampling settings: " + "; ".join(problems))


@dataclass(frozen=True)
class GenerationRequest:
    """One row: the full model input as ids (BOS included) and the row's own seed.

    ``seed`` is any integer; the engine derives the row's random stream from it alone, never
    from the row's position in the batch or from a global RNG.
    """

    input_ids: tuple[int, ...]
    seed: int
    sampling: SamplingSettings = SamplingSettings()


@dataclass(frozen=True)
class GenerationResult:
    """New token ids of one row, EOS excluded, and whether the row stopped at EOS."""

    new_ids: tuple[int, ...]
    stopped_at_eos: bool


def _never() -> bool:
    return False


def _ignore(_progress: Progress) -> None:
    return None


@dataclass(frozen=True)
class Progress:
    """Where a generation stands: engine call ``round`` of the job (1-based; 0 when the engine
    is called directly), ``step`` of at most ``steps`` decode steps, over ``rows`` rows."""

    round: int
    step: int
    steps: int
    rows: int


@dataclass(frozen=True)
class Control:
    """How a caller watches and stops a generation (the WebUI's progress bar, Interrupt, Skip).

    Engines call both between decode steps, at their stop-check cadence (every step on the CPU,
    every few on CUDA, where each check waits for the device). When ``should_stop`` returns
    True the engine raises :class:`tipo.errors.Interrupted`; the pipeline then keeps the
    original prompts of the unfinished rows. Both callables must be cheap and thread-safe.
    """

    should_stop: Callable[[], bool] = _never
    on_progress: Callable[[Progress], None] = _ignore


def checkpoint(control: Control | None, step: int, steps: int, rows: int) -> None:
    """Report progress to ``control`` and raise :class:`tipo.errors.Interrupted` if it asks to stop."""
    if control is None:
        return
    control.on_progress(Progress(0, step, steps, rows))
    if control.should_stop():
        raise Interrupted(f"stopped by the caller after {step} of at most {steps} decode steps")


class Engine(Protocol):
    """Anything that can continue a batch of rows. Implementations must be thread-safe."""

    #: Longest input + output the model was trained on (TIPO v1: 1024 tokens).
    context_length: int

    def generate(self, requests: Sequence[GenerationRequest], control: Control | None = None) -> list[GenerationResult]:
        """Continue every row; results in the order of ``requests``. With ``control``, report
        progress and stop (raising :class:`tipo.errors.Interrupted`) between decode steps."""
        ...
