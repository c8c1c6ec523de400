"""Generators of WebUI prompts, TIPO arguments and model text for fuzzing, and the oracles that
say what must hold for any of them (issue 6, item 1).

Each generator is written once against a :class:`Source` of choices, so the same grammar feeds
Hypothesis (``prompts()``… strategies: shrinking, for tests) and a seeded ``random.Random``
(:class:`RandomSource`: fast and reproducible per case, for ``benchmarks/fuzz.py``). Choices are
listed simplest first, so Hypothesis shrinks towards plain tags. Argument values come with a
verdict (:data:`VALID`, :data:`COERCE`: valid once the named/JSON form converts it, or
:data:`INVALID`) so that the oracles know which errors to expect.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import random
import re
from typing import Any, Callable, Protocol, Sequence, TypeVar

from hypothesis import strategies as st

from tipo.args import fields, spec
from tipo.engine.base import SamplingSettings
from tipo.formats import PLACEHOLDERS, TEMPLATES, template_for
from tipo.plan import LENGTHS, Mode
from tipo.request import ExpandRequest
from tipo.syntax import Kind, leaves_open, parse_prompt

T = TypeVar("T")
VALID, COERCE, INVALID = "valid", "coerce", "invalid"


class Source(Protocol):
    def integer(self, low: int, high: int) -> int: ...

    def choice(self, options: Sequence[T]) -> T: ...


class RandomSource:
    """Choices from a seeded ``random.Random``: case ``i`` of seed ``s`` is ``RandomSource(f"{s}:{i}")``."""

    def __init__(self, seed: int | str) -> None:
        self._rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return options[self._rng.randrange(len(options))]


class HypothesisSource:
    """Choices drawn by Hypothesis inside ``st.composite`` (so failures shrink)."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))


def weighted(src: Source, table: Sequence[tuple[int, T]]) -> T:
    """One value of ``(weight, value)`` pairs; shrinks towards the first."""
    pick = src.integer(0, sum(w for w, _ in table) - 1)
    for weight, value in table:
        if pick < weight:
            return value
        pick -= weight
    raise AssertionError("unreachable")


# -- prompts ---------------------------------------------------------------------------------

TAGS = (
    "1girl", "solo", "long_hair", "blue eyes", "masterpiece", "best quality", "highres", "safe", "nsfw",
    "hatsune miku", "vocaloid", "wlop", "saber (fate)", "score_9", "1boy", "smile", "scenery", "newest",
    "very aesthetic", "male focus", "a", "looking at viewer", "holding umbrella", "hat", "chat", "x_x",
)  # fmt: skip
SENTENCES = (
    "A girl walks in the rain.", "She looks up at the sky!", "The city glows at night, quiet and wet.",
    "Is it raining?", "A cat sleeps on a windowsill in the afternoon sun", "Note: she smiles.",
    "Version 1.5 of example.com looks odd.", "An old man (smiling) reads a book.", "Wait...",
)  # fmt: skip
UNICODE = (
    "初音ミク", "שלום עולם", "مرحبا بالعالم", "\u202eRTL\u202c", "e\u0301\u0301", "Z\u0337a\u0334l\u0336g\u0338o",
    "🎨", "👩\u200d👩\u200d👧", "\u200b", "\ufeff", "ﬁ", "İ", "ß", "Ⅻ", "\U0001d400", "\u0300",
)  # fmt: skip
CONTROL = (
    "\x00",
    "\x01",
    "\x02",
    "\x07",
    "\x1b[31m",
    "\r",
    "\r\n",
    "\t",
    "\x0b",
    "\x0c",
    "\x7f",
    "\x85",
    "\u2028",
    "\x1c",
)
JUNK = (
    "(", ")", "[", "]", "{", "}", "\\", ":", "<", ">", "|", ":1.2)", "(:", "<lora:", "__", "$$", "\\\\", ",",
    "<|general|>", "<|extended|>", "<|empty|>", "tag:", "long: x", "target: <|long|>", "</s>", "<s>",
)  # fmt: skip
#: Embedding names the requests pass as ``protected_words``.
EMBEDDINGS = ("easynegative", "my-embed", "bad_hands_v2")
WEIGHTS = ("1.2", "0.5", "1", "-1", "+1.5", ".5", "1.", "0", " 1.1 ", "1.2.3", "1e3", "-0")
_LETTERS = "abcxyz_-'.!? 0123456789ABé中"
SEPARATORS = ((50, ", "), (10, ","), (6, " "), (5, "\n"), (3, ",\n"), (3, " , "), (2, ""), (2, ",,"), (1, "\t"))
_PART_KINDS = (
    (30, "tag"), (6, "weighted"), (5, "emphasis"), (3, "escaped"), (3, "qualified"), (5, "network"),
    (3, "wildcard"), (3, "variant"), (5, "keyword"), (8, "sentence"), (4, "unicode"), (2, "control"),
    (3, "junk"), (2, "embedding"), (4, "word"),
)  # fmt: skip


def _word(src: Source) -> str:
    return "".join(src.choice(_LETTERS) for _ in range(src.integer(1, 8)))


def _group(src: Source, depth: int) -> str:
    parts = [_part(src, depth + 1) for _ in range(src.integer(1, 3))]
    return src.choice((", ", " ")).join(parts)


def _part(src: Source, depth: int = 0) -> str:
    kind = weighted(src, _PART_KINDS) if depth < 3 else "tag"
    if kind == "tag":
        return src.choice(TAGS)
    if kind == "weighted":
        return f"({_group(src, depth)}:{src.choice(WEIGHTS)})"
    if kind == "emphasis":
        opener, closer = src.choice((("(", ")"), ("[", "]"), ("{", "}")))
        opens = src.integer(1, 3)
        closes = opens if src.integer(0, 5) else src.integer(0, 4)
        return opener * opens + _group(src, depth) + closer * closes
    if kind == "escaped":
        return src.choice(("\\({}\\)", "{} \\(copyright\\)", "\\[{}\\]", "{}\\\\", "{}\\", "\\{}")).format(
            src.choice(TAGS)
        )
    if kind == "qualified":
        return src.choice(("saber (fate)", "name (series) ", "a b (c d)", "x (y) z", "(fate) saber"))
    if kind == "network":
        name = src.choice(("style", "a b", "ünï", "x(y)", "c:d", "_"))
        return src.choice(("<lora:{}:0.8>", "<hypernet:{}:1>", "<lyco:{}:1:0.5>", "<lora:{}>", "<ti:{}:-1>")).format(
            name
        )
    if kind == "wildcard":
        return src.choice(("__color__", "__dir/name__", "__*__", "__a__b__", "__ü__", "a__b__c"))
    if kind == "variant":
        return src.choice(("{a|b}", "{2$$a|b|c}", "{a|{b|c}}", "{}", "{a|}", "{red, blue|green}", "{ (x:1.2) | y }"))
    if kind == "keyword":
        return src.choice(
            ("BREAK", "AND", "AND (x:1.2)", "and", "break", "BREAKING", "ANDROID", "BREAK BREAK", "AND :1.2")
        )
    if kind == "sentence":
        return src.choice(SENTENCES)
    if kind == "unicode":
        return src.choice(UNICODE)
    if kind == "control":
        tag = src.choice(TAGS)
        cut = src.integer(0, len(tag))
        return tag[:cut] + src.choice(CONTROL) + tag[cut:]
    if kind == "junk":
        return src.choice(JUNK)
    if kind == "embedding":
        return src.choice(EMBEDDINGS)
    return _word(src)


def join_parts(src: Source, parts: Sequence[str]) -> str:
    return "".join(part + (weighted(src, SEPARATORS) if i < len(parts) - 1 else "") for i, part in enumerate(parts))


def draw_prompt(src: Source, max_chars: int = 20_000) -> str:
    """A WebUI prompt of 0 to ``max_chars`` characters (long ones tiled from drawn parts and
    sometimes cut mid-piece, as a truncated paste would be)."""
    size = weighted(src, ((70, "short"), (5, "empty"), (20, "medium"), (5, "long")))
    if size == "empty":
        return src.choice(("", " ", ",", "\n", " , ,", "BREAK"))
    count = src.integer(1, 8) if size == "short" else src.integer(9, 60)
    text = join_parts(src, [_part(src) for _ in range(count)])
    if size == "long" and text:
        target = src.integer(2_000, max(2_000, max_chars))
        text = ((text + ", ") * (target // (len(text) + 2) + 1))[: target if src.integer(0, 1) else None]
    if src.integer(0, 99) == 0:  # JSON's "\ud800" reaches Python unpaired; it cannot be encoded
        at = src.integer(0, len(text))
        text = text[:at] + src.choice(("\ud83d", "\udc00")) + text[at:]
    return text[:max_chars]


def draw_nl(src: Source) -> str:
    kind = weighted(src, ((5, "none"), (3, "sentences"), (1, "prompt"), (1, "odd")))
    if kind == "none":
        return ""
    if kind == "sentences":
        return " ".join(src.choice(SENTENCES) for _ in range(src.integer(1, 3)))
    if kind == "prompt":
        return draw_prompt(src, 300)
    return src.choice((" ", "( )", "(smiling:1.2) girl.", "BREAK", "a <lora:n:1> walks.", "\x00", *UNICODE))


CUSTOM_TEMPLATES = (
    "<|general|>", "<|special|> <|general|>, <|extended|>.", "(<|general|>:1.2)", "{<|general|>|<|extended|>}",
    "<|general|><|special|>", "no placeholders", "<|nope|> <|general|>", "<lora:tpl:1> <|general|>",
    "<|extended|>", "<|generated|>", "<|meta|>, <|rating|>", "\n\n\n<|extended|>\n\n\n<|generated|>\n",
    "<|special|>", "<|general|> AND <|extended|>", "<|general|>\\", *TEMPLATES.values(),
)  # fmt: skip


def draw_template(src: Source) -> str:
    """A custom template. Free text has no ``<``/``>``: glued to the user's text, they could
    make an extra network of both (the user's own doing, not a defect)."""
    if src.integer(0, 3):
        return src.choice(("", *CUSTOM_TEMPLATES))
    return draw_prompt(src, 200).replace("<", "").replace(">", "")


GOOD_BANS = ("hat", "*text*", "/official.*/", "umbrella", "1girl", "/(a+)+$/", "*", "/.*/", "solo", "/a,b/", "x_x")
BAD_BANS = ("/(/", "/[/", "/a{2,1}/", "/*/", "x" * 600)


def draw_ban_text(src: Source, allow_bad: bool = True) -> str:
    """A ban box: entries joined by commas or newlines; with ``allow_bad``, sometimes a bad one."""
    entries = [src.choice(GOOD_BANS) for _ in range(src.integer(0, 3))]
    if allow_bad and src.integer(0, 9) == 0:
        entries.insert(src.integer(0, len(entries)), src.choice(BAD_BANS))
    return src.choice((", ", "\n", ",")).join(entries)


# -- arguments -------------------------------------------------------------------------------

_JUNK_VALUES: tuple[Any, ...] = (None, [], {}, "x", "", [1], {"a": 1})
_FIELDS = {f.name: f for f in fields()}


def _valid_number(src: Source, kind: type, low: float | None, high: float | None, default: Any) -> Any:
    low = -(2**63) if low is None else low
    high = 2**64 if high is None else high
    if kind is int:
        return src.choice((default, int(low), int(high), src.integer(int(low), int(min(high, low + 2000)))))
    inside = min(high, max(low, low + (high - low) * src.integer(0, 1000) / 1000))
    return src.choice(
        (float(default), float(low), float(high), inside, int(math.ceil(low)) if math.ceil(low) <= high else low)
    )


def draw_field_value(src: Source, name: str) -> tuple[Any, str]:
    """A value for the :class:`tipo.args.TipoArgs` field ``name`` and its verdict."""
    field, info = _FIELDS[name], spec(name)
    kind = type(field.default)
    verdict = weighted(src, ((6, VALID), (2, COERCE), (2, INVALID)))
    if kind is bool:
        options = {
            VALID: (True, False),
            COERCE: ("true", "false", " True ", "FALSE"),
            INVALID: (0, 1, "yes", 1.0, *_JUNK_VALUES),
        }
        return src.choice(options[verdict]), verdict
    if kind is str:
        if verdict == INVALID:
            bad = (
                (1, 1.5, True, ["a"], None)
                if info.choices is None
                else ("Long", "very long", " long", "", "CUSTOM", None, 1)
            )
            return src.choice(bad), INVALID
        if info.choices is not None:
            return src.choice(info.choices), VALID
        text = {"ban_tags": draw_ban_text, "template": draw_template, "nl_prompt": draw_nl}.get(name)
        return (text(src) if text else src.choice(("KBlueLeaf/TIPO-200M-ft2", "", "/tmp/x", "ünï", "a\x00b"))), VALID
    value = _valid_number(src, kind, info.minimum, info.maximum, field.default)
    if verdict == COERCE:
        if kind is int:
            return src.choice((float(value), str(value), f"{value}.0", f" {value} ")), COERCE
        return src.choice((repr(float(value)), f" {float(value)} ")), COERCE
    if verdict == VALID:
        return value, VALID
    bad: list[Any] = [math.nan, math.inf, -math.inf, "nan", "1e400", True, False, "abc", *_JUNK_VALUES]
    if info.minimum is not None:
        bad += [info.minimum - 1, -(10**400)]
    if info.maximum is not None:
        bad += [info.maximum + 1, 10**400, float(info.maximum) * 10]
    if kind is int and abs(value) < 2**52:  # beyond, value + 0.5 rounds to an integer float
        bad += [value + 0.5, f"{value}.5"]
    return src.choice(bad), INVALID


def draw_args_dict(src: Source) -> tuple[dict[Any, Any], dict[Any, str]]:
    """A named-args dict (API, JSON) and each key's verdict; unknown keys are INVALID."""
    values: dict[Any, Any] = {}
    verdicts: dict[Any, str] = {}
    for _ in range(src.integer(0, 6)):
        name = src.choice(tuple(_FIELDS))
        values[name], verdicts[name] = draw_field_value(src, name)
    if src.integer(0, 9) == 0:
        key = src.choice(("sed", "Seed", "", "enabled ", 1, None, "très"))
        values[key], verdicts[key] = 1, INVALID
    return values, verdicts


def draw_request_kwargs(src: Source) -> tuple[dict[str, Any], dict[str, str]]:
    """Keyword arguments of :class:`tipo.request.ExpandRequest` (the Python API) and verdicts."""
    good: dict[str, Callable[[], Any]] = {
        "prompt": lambda: draw_prompt(src, 300), "nl_prompt": lambda: draw_nl(src),
        "mode": lambda: src.choice(tuple(Mode)), "template": lambda: draw_template(src),
        "tag_length": lambda: src.choice(LENGTHS), "nl_length": lambda: src.choice(LENGTHS),
        "width": lambda: src.choice((1, 512, 1024, 65536)), "height": lambda: src.choice((1, 768, 65536)),
        "ban_tags": lambda: tuple(src.choice(GOOD_BANS) for _ in range(src.integer(0, 2))),
        "ban_nl": lambda: src.choice(((), ("rain",), ["umbrella", "x"])),
        "seed": lambda: src.choice((-1, 0, 7, 2**64)),
        "sampling": lambda: SamplingSettings(max_new_tokens=src.integer(1, 8)),
        "protected_words": lambda: src.choice(((), EMBEDDINGS, ["easynegative"])),
        "max_retry": lambda: src.integer(0, 10),
    }  # fmt: skip
    text_bad = (None, 1, b"x", ["a"])
    bad: dict[str, tuple[Any, ...]] = {
        "prompt": text_bad, "nl_prompt": text_bad, "template": text_bad,
        "mode": ("tag_only", None, 3), "tag_length": ("Long", None), "nl_length": ("very long", 2),
        "width": (0, -1, 65537, 1.5, True, "512"), "height": (0, None, 10**400),
        "ban_tags": ("hat", None, (1,), ("a", None)), "ban_nl": ("rain", None, [b"x"]), "seed": (1.5, "1", None, True),
        "sampling": (None, {"temperature": 1.0}, "x"), "protected_words": ("easynegative", None, (None,)),
        "max_retry": (-1, 11, 1.5, True, None),
    }  # fmt: skip
    kwargs: dict[str, Any] = {}
    verdicts: dict[str, str] = {}
    for _ in range(src.integer(0, 5)):
        name = src.choice(tuple(good))
        if src.integer(0, 3):
            kwargs[name], verdicts[name] = good[name](), VALID
        else:
            kwargs[name], verdicts[name] = src.choice(bad[name]), INVALID
    if kwargs.get("mode") is Mode.CUSTOM and not str(kwargs.get("template", "")).strip() and "template" not in verdicts:
        kwargs["template"], verdicts["template"] = "<|general|>", VALID
    return kwargs, verdicts


def draw_pipeline_request(src: Source, max_chars: int = 20_000, max_new_tokens: int = 8) -> ExpandRequest:
    """A valid request as the WebUI glue builds one (valid :class:`TipoArgs`, then ``request``),
    with retries and new tokens bounded so that a random model's run stays cheap."""
    from tipo.args import TipoArgs

    values: dict[str, Any] = {}
    for name in ("mode", "tag_length", "nl_length", "ban_tags", "ban_nl", "nl_prompt", "seed", "temperature",
                 "top_p", "top_k", "min_p", "repetition_penalty"):  # fmt: skip
        if src.integer(0, 2) == 0 or name == "mode":
            value, verdict = draw_field_value(src, name)
            if verdict != INVALID:
                values[name] = value
    if values.get("mode") == "custom" or src.integer(0, 9) == 0:
        values["template"] = src.choice(CUSTOM_TEMPLATES)
    args = TipoArgs.from_dict(values)
    request = args.request(
        draw_prompt(src, max_chars), protected_words=src.choice(((), EMBEDDINGS)),
        width=src.choice((1024, 832, 1, 65536, 640)), height=src.choice((1024, 1216, 1, 65536)),
    )  # fmt: skip
    sampling = dataclasses.replace(request.sampling, max_new_tokens=src.integer(1, max_new_tokens))
    return dataclasses.replace(
        request, sampling=sampling, max_retry=src.integer(0, 1), seed=src.choice((-1, 0, src.integer(1, 2**40)))
    )


def draw_continuation(src: Source) -> str:
    """Model text after the input, hostile to restore: WebUI syntax, keys, placeholders."""
    segments = (
        ", {t}", ", {t}", ", ({t}:1.3)", ", {t} (fate)", ", <lora:evil:1>", ", __wild__", ", {{a|b}}", ", AND {t}",
        " BREAK {t}", "\nlong: {s}", "\nshort: {s}", "\ntag: {t}, {t}", "\nlong: {s} (and more", "\nlong: <|empty|>",
        "\n{s}", ", <|general|>", ", \\", ", {t}]", ", [{t}", ", {u}", "\nNote: {s}", "\nlong: AND {s} BREAK",
        ", {t}\x00", "\ntarget: <|long|>", ", {{", " }}", "\nlong: {s} <lora:x:1> __w__.",
    )  # fmt: skip
    out = []
    for _ in range(src.integer(0, 8)):
        segment = src.choice(segments)
        out.append(segment.format(t=src.choice(TAGS), s=src.choice(SENTENCES), u=src.choice(UNICODE + CONTROL)))
    return "".join(out)


class HostileEngine:
    """An engine (no model) that continues each row with :func:`draw_continuation` text drawn
    from the row's own seed: the pipeline's real path, with model text a random model rarely
    writes. ``fixed`` replaces the drawn text (Hypothesis draws it instead)."""

    context_length = 1024

    def __init__(self, tokenizer: Any, fixed: str | None = None) -> None:
        self.tokenizer, self.fixed = tokenizer, fixed

    def generate(self, requests: Sequence[Any], control: Any = None) -> list[Any]:
        from tipo.engine.base import GenerationResult

        out = []
        for row in requests:
            text = self.tokenizer.decode(list(row.input_ids))
            continuation = self.fixed if self.fixed is not None else draw_continuation(RandomSource(row.seed))
            ids = self.tokenizer.encode(text + continuation)[len(row.input_ids) :]
            out.append(
                GenerationResult(tuple(ids[: row.sampling.max_new_tokens]), len(ids) <= row.sampling.max_new_tokens)
            )
        return out


# -- Hypothesis strategies -------------------------------------------------------------------


def _composite(drawer: Callable[..., T], *args: Any) -> st.SearchStrategy[T]:
    return st.composite(lambda draw: drawer(HypothesisSource(draw), *args))()


def prompts(max_chars: int = 20_000) -> st.SearchStrategy[str]:
    return _composite(draw_prompt, max_chars)


def args_dicts() -> st.SearchStrategy[tuple[dict[Any, Any], dict[Any, str]]]:
    return _composite(draw_args_dict)


def request_kwargs() -> st.SearchStrategy[tuple[dict[str, Any], dict[str, str]]]:
    return _composite(draw_request_kwargs)


def pipeline_requests(max_chars: int = 20_000, max_new_tokens: int = 8) -> st.SearchStrategy[ExpandRequest]:
    return _composite(draw_pipeline_request, max_chars, max_new_tokens)


def continuations() -> st.SearchStrategy[str]:
    return _composite(draw_continuation)


# -- oracles: what must hold for any case ----------------------------------------------------

Failure = tuple[str, str]  # (kind, detail)
_PAIRS = ("()", "[]", "{}")
_SYNTAX = {
    "network": re.compile(r"<\w+:[^>]+>"),
    "wildcard": re.compile(r"__[^\s_,][^\s,]*?__"),
    "keyword": re.compile(r"\b(?:AND|BREAK)\b"),
    "placeholder": re.compile("|".join(re.escape(f"<|{name}|>") for name in PLACEHOLDERS)),
}
_PLACEHOLDER = re.compile(r"<\|[a-z_]+\|>")


def unmatched(text: str) -> dict[str, tuple[int, int]]:
    """Per bracket pair: (openers never closed, closers without an opener); a backslash escapes
    the next character, each pair on its own stack. ``()`` and ``[]`` as A1111 reads them, extra
    networks first (their brackets do not count); ``{}`` as Dynamic Prompts reads them, which
    knows no networks."""
    out = {}
    for pair in _PAIRS:
        subject = text if pair == "{}" else _SYNTAX["network"].sub(" ", text)
        depth = stray = i = 0
        while i < len(subject):
            char = subject[i]
            i += 2 if char == "\\" else 1
            if char == pair[0]:
                depth += 1
            elif char == pair[1] and depth:
                depth -= 1
            elif char == pair[1]:
                stray += 1
        out[pair] = (depth, stray)
    return out


def syntax_counts(text: str, covered: Sequence[int] = ()) -> dict[str, int]:
    """How much WebUI syntax ``text`` holds outside the ``covered`` positions: unescaped
    brackets, and networks, wildcards, keywords and TIPO placeholders not wholly covered (all
    read on the whole text)."""
    covered = covered or bytes(len(text))
    counts = dict.fromkeys(_PAIRS, 0)
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        for pair in _PAIRS:
            counts[pair] += text[i] in pair and not covered[i]
        i += 1
    for name, pattern in _SYNTAX.items():  # read on the whole text: a blank would make a word boundary
        counts[name] = sum(not all(covered[m.start() : m.end()]) for m in pattern.finditer(text))
    return counts


def kept_texts(request: ExpandRequest, lookup: Callable[[str], str | None]) -> list[str]:
    """The user's texts a successful expansion holds verbatim (docs/DESIGN.md, "Putting it
    back"): every piece, except tags (before the first ``AND``) whose category has no slot in the
    template and sentences with neither an NL nor a general slot; the NL prompt when there is an
    NL slot."""
    from tipo.categorise import categorise_tag

    template = template_for(request.mode, request.template)
    nl_slot = "<|extended|>" in template or "<|generated|>" in template
    texts: list[str] = []
    after_and = False
    for piece in parse_prompt(request.prompt, protected_words=request.protected_words).pieces:
        after_and = after_and or piece.kind is Kind.AND
        if not after_and and piece.kind is Kind.TAGS:
            if f"<|{categorise_tag(piece.tags[0], lookup)[0]}|>" not in template:
                continue
        if not after_and and piece.kind is Kind.NL and not nl_slot and "<|general|>" not in template:
            continue
        texts.append(piece.text)
    if nl_slot and request.nl_prompt.strip():
        texts.append(request.nl_prompt.strip())
    return texts


def expected_errors(request: ExpandRequest) -> list[str]:
    """The fields a well-typed request must be refused for (its row alone fails): a bad ban
    pattern, text that cannot be encoded (an unpaired surrogate)."""
    bad = ["ban_tags"] if any(entry in BAD_BANS for entry in request.ban_tags) else []
    return bad + [name for name in ("prompt", "nl_prompt") if re.search("[\ud800-\udfff]", getattr(request, name))]


def check_expansion(request: ExpandRequest, result: Any, lookup: Callable[[str], str | None]) -> list[Failure]:
    """Failures of one :class:`tipo.pipeline.Expansion` of ``request`` (none when it is fine)."""
    problems: list[Failure] = []
    if result.original != request.prompt:
        problems.append(("original-changed", repr(result.original)[:120]))
    if request.seed != -1 and result.seed != request.seed:
        problems.append(("seed-changed", f"{request.seed} -> {result.seed}"))
    expected = expected_errors(request)
    if result.error is not None:
        if result.prompt != request.prompt:
            problems.append(("failed-but-prompt-changed", repr(result.prompt)[:120]))
        if not expected:
            problems.append(("unexpected-error", result.error[:160]))
        elif not any(name in result.error for name in expected):
            problems.append(("error-does-not-name-field", f"{expected}: {result.error[:160]}"))
        return problems
    if expected:
        problems.append(("missing-error", str(expected)))
    template = _PLACEHOLDER.sub(" ", template_for(request.mode, request.template))
    needed = collections.Counter(kept_texts(request, lookup))
    lost = [text for text, times in needed.items() if result.prompt.count(text) < times]
    problems += [("lost-user-text", repr(text)[:120]) for text in lost]
    typed = [p.text for p in parse_prompt(request.prompt, protected_words=request.protected_words).pieces]
    if leaves_open(request.prompt) and leaves_open(request.nl_prompt):
        return problems  # both boxes leave "(" or "<name:" open: one takes in the other, either way
    covered = _user_positions(result.prompt, {*typed, request.nl_prompt.strip()})
    added, allowed = syntax_counts(result.prompt, covered), syntax_counts(template)
    grown = sorted(name for name in added if added[name] > allowed[name])
    if grown:
        rest = "".join("_" if flag else char for char, flag in zip(result.prompt, covered))
        problems.append(("model-text-is-syntax", f"{grown} in {rest[:200]!r}"))
    before = [unmatched(text) for text in (request.prompt, request.nl_prompt, template)]
    after = unmatched(result.prompt)
    for pair in _PAIRS:
        limit = [sum(b[pair][i] for b in before) for i in (0, 1)]
        if after[pair][0] > limit[0] or after[pair][1] > limit[1]:
            problems.append(("brackets-worse", f"{pair}: {limit} -> {list(after[pair])}"))
    return problems


def _user_positions(output: str, user_texts: Any) -> bytearray:
    """Which positions of ``output`` hold a user text (every occurrence of each: a user text
    found inside model text hides that part, so the check errs towards passing)."""
    covered = bytearray(len(output))
    for text in user_texts:
        start = output.find(text)
        while text and start >= 0:
            covered[start : start + len(text)] = b"\x01" * len(text)
            start = output.find(text, start + 1)
    return covered


def check_error(error: BaseException | None, bad: Sequence[Any], *, any_named: bool = False) -> list[Failure]:
    """A call given the ``bad`` fields must raise :class:`InvalidArgument` naming each of them
    (one of them, with ``any_named``: the call stops at the first); given none, not raise."""
    from tipo.errors import InvalidArgument

    if error is None:
        return [("invalid-accepted", repr(list(bad))[:160])] if bad else []
    if not isinstance(error, InvalidArgument):
        return [(f"raised-{type(error).__name__}", str(error)[:160])]
    if not bad:
        return [("valid-rejected", str(error)[:160])]
    unnamed = [name for name in bad if str(name) not in str(error)]
    if any_named and len(unnamed) < len(bad):
        return []
    return [("error-does-not-name-field", f"{unnamed}: {str(error)[:160]}")] if unnamed else []


def _call(function: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    try:
        return function(), None
    except Exception as error:  # the oracle judges every exception type
        return None, error


def check_args(values: dict[Any, Any], verdicts: dict[Any, str], lookup: Callable[[str], str | None]) -> list[Failure]:
    """The named form (``TipoArgs.from_dict``), the constructor, then ``request`` and ``prepare``."""
    from tipo.args import TipoArgs
    from tipo.request import prepare

    unknown = [key for key in values if key not in _FIELDS]
    args, error = _call(lambda: TipoArgs.from_dict(values))
    problems = check_error(error, unknown or [k for k, v in verdicts.items() if v == INVALID])
    if unknown:
        return problems
    _, direct_error = _call(lambda: TipoArgs(**values))
    problems += check_error(direct_error, [k for k, v in verdicts.items() if v != VALID])
    if args is None or problems:
        return problems
    request, error = _call(lambda: args.request("1girl, solo"))
    problems += check_error(error, ["template"] if args.mode == "custom" and not args.template.strip() else [])
    if request is not None:
        problems += check_error(_call(lambda: prepare(request, lookup))[1], expected_errors(request), any_named=True)
    return problems


def check_request_kwargs(
    kwargs: dict[str, Any], verdicts: dict[str, str], lookup: Callable[[str], str | None]
) -> list[Failure]:
    """``ExpandRequest(**kwargs)`` then ``prepare``: valid or :class:`InvalidArgument` naming the field."""
    from tipo.request import prepare

    bad = [k for k, v in verdicts.items() if v == INVALID]
    template = kwargs.get("template", "")
    if kwargs.get("mode") is Mode.CUSTOM and isinstance(template, str) and not template.strip():
        bad.append("template")
    request, error = _call(lambda: ExpandRequest(**kwargs))
    problems = check_error(error, bad)
    if request is not None and not problems:
        problems += check_error(_call(lambda: prepare(request, lookup))[1], expected_errors(request), any_named=True)
    return problems
