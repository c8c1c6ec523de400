"""Which TIPO passes a request runs (format sheet, "Tasks and plans").

A *mode* is what the user picks. The reference's five output presets (and ``custom``) keep the
reference's plan exactly: it depends only on what the user gave (tags, NL, both, nothing), and
the output template decides only whether an extra NL pass runs. The *task modes* run one pass of
one task TIPO was trained on (e.g. ``short_to_long``: a short sentence into a detailed one, tags
untouched), which the reference never offers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["Length", "LENGTHS", "Task", "Pass", "Mode", "plan_passes", "task_fields", "PRESET_MODES"]

Length = Literal["very_short", "short", "long", "very_long"]
LENGTHS: tuple[Length, ...] = get_args(Length)


class Task(str, enum.Enum):
    """TIPO's tasks; the value is the task token's name. ``TAGS`` is plain tag expansion
    (no task token in the model input)."""

    TAGS = "tag"
    TAG_TO_LONG = "tag_to_long"
    LONG_TO_TAG = "long_to_tag"
    SHORT_TO_TAG = "short_to_tag"
    SHORT_TO_LONG = "short_to_long"
    TAG_TO_SHORT_TO_LONG = "tag_to_short_to_long"
    SHORT_TO_TAG_TO_LONG = "short_to_tag_to_long"
    SHORT_TO_LONG_TO_TAG = "short_to_long_to_tag"

    @property
    def token(self) -> str | None:
        return None if self is Task.TAGS else f"<|{self.value}|>"

    @property
    def fields(self) -> tuple[str, ...]:
        return task_fields(self)

    @property
    def writes_tags(self) -> bool:
        """Whether the pass's length target is the tag length (the reference's rule)."""
        return self is Task.TAGS or self.value.endswith("to_tag")


def task_fields(task: Task) -> tuple[str, ...]:
    """Content fields of the model input, in the task's order (``tag_to_long`` → tag, long)."""
    return tuple(task.value.split("_to_"))


@dataclass(frozen=True)
class Pass:
    """One model pass: the task, the length target it uses, and whether it *expands* (the
    model continues the last written field) or writes the last field from scratch."""

    task: Task
    length: Length
    expand: bool


class Mode(str, enum.Enum):
    """What the user asks for. The first six are the reference's presets."""

    TAG_ONLY = "tag_only"
    NL_ONLY = "nl_only"
    BOTH_TAG_FIRST = "both_tag_first"
    BOTH_NL_FIRST = "both_nl_first"
    BOTH_GENERATED = "both_generated"
    CUSTOM = "custom"
    TAGS = "tags"
    TAG_TO_LONG = "tag_to_long"
    LONG_TO_TAG = "long_to_tag"
    SHORT_TO_TAG = "short_to_tag"
    SHORT_TO_LONG = "short_to_long"
    TAG_TO_SHORT_TO_LONG = "tag_to_short_to_long"
    SHORT_TO_TAG_TO_LONG = "short_to_tag_to_long"
    SHORT_TO_LONG_TO_TAG = "short_to_long_to_tag"

    @property
    def task(self) -> Task | None:
        """The single task of a task mode; None for the presets."""
        if self in PRESET_MODES:
            return None
        return Task.TAGS if self is Mode.TAGS else Task(self.value)


PRESET_MODES = frozenset(
    {Mode.TAG_ONLY, Mode.NL_ONLY, Mode.BOTH_TAG_FIRST, Mode.BOTH_NL_FIRST, Mode.BOTH_GENERATED, Mode.CUSTOM}
)


def wants_extra_nl(template: str, has_nl: bool) -> bool:
    """The reference's rule for the extra NL pass: the template asks for ``<|generated|>``, or
    for ``<|extended|>`` while the user gave no NL."""
    return "<|generated|>" in template or ("<|extended|>" in template and not has_nl)


def plan_passes(
    mode: Mode,
    *,
    has_tags: bool,
    has_nl: bool,
    tag_length: Length,
    nl_length: Length,
    template: str = "",
) -> tuple[Pass, ...]:
    """The passes of one request, in order.

    ``has_tags`` counts special and general tags only; ``has_nl`` is whether the NL input has
    non-blank text (a blank NL is no NL: the reference's blank-NL defects come from mixing the two).
    """
    task = mode.task
    if task is not None:
        length = tag_length if task.writes_tags else nl_length
        given = {"tag": has_tags, "short": has_nl, "long": has_nl and "short" not in task.fields}
        return (Pass(task, length, expand=given.get(task.fields[-1], False)),)

    if not has_tags and not has_nl:
        passes = [Pass(Task.TAGS, tag_length, True)]
        extra = Pass(Task.TAG_TO_LONG, nl_length, True)
    elif not has_nl:
        passes = [Pass(Task.TAGS, tag_length, True)]
        extra = Pass(Task.TAG_TO_LONG, nl_length, False)
    elif not has_tags:
        passes = [Pass(Task.LONG_TO_TAG, tag_length, True)]
        extra = Pass(Task.SHORT_TO_TAG_TO_LONG, nl_length, False)
    else:
        passes = [Pass(Task.SHORT_TO_TAG, tag_length, True), Pass(Task.TAG_TO_LONG, nl_length, True)]
        extra = Pass(Task.SHORT_TO_TAG_TO_LONG, nl_length, False)
    if wants_extra_nl(template, has_nl):
        passes.append(extra)
    return tuple(passes)
