"""Differential test against the reference package ``tipo-kgen==0.3.1``.

On seeded random requests (every preset, length, aspect ratio, tag kind, NL, odd input) our
categorisation, pass plan and first model input must equal the reference's byte for byte, and
our parsing and post-processing must agree with it on synthetic model outputs, except where the
format sheet lists a reference defect (each has its own test in ``test_reference_defects.py``).

Runs only where the reference is installed for tests (``pip install --no-deps tipo-kgen==0.3.1``);
the product never imports it.
"""

from __future__ import annotations

import collections
import random

import pytest

kgen_tipo = pytest.importorskip("kgen.executor.tipo", reason="tipo-kgen 0.3.1 is not installed")
kgen_formatter = pytest.importorskip("kgen.formatter")
kgen_metainfo = pytest.importorskip("kgen.metainfo")

from tipo.bans import BanList  # noqa: E402
from tipo.categorise import categorise  # noqa: E402
from tipo.formats import TEMPLATES  # noqa: E402
from tipo.parse import parse_output  # noqa: E402
from tipo.plan import LENGTHS, Mode, Pass, Task, plan_passes  # noqa: E402
from tipo.postprocess import NL_TARGETS, TAG_TARGETS, PassInput, post_process, split_sentences  # noqa: E402
from tipo.render import aspect_ratio_text, general_text, meta_lines, render_input  # noqa: E402
from tipo.tagdb import TagDatabase  # noqa: E402

CASES = 2400
#: The reference's preset names, as its WebUI extension passes them, and ours.
PRESETS = {
    "tag only (DTG mode)": Mode.TAG_ONLY,
    "NL only (Tag to NL)": Mode.NL_ONLY,
    "Both, tag first (recommend)": Mode.BOTH_TAG_FIRST,
    "Both, NL first (recommend)": Mode.BOTH_NL_FIRST,
    "Both + generated NL": Mode.BOTH_GENERATED,
}
GENERAL = [
    "solo", "long hair", "long_hair", "smile", "looking at viewer", "blue eyes", "short hair",
    "open mouth", "blush", "skirt", "hat", "dress", "glass", "glasses", "chat", "thighhighs",
    "school uniform", "flower", "outdoors", "sky", "cloud", "scenery", "1", "a_b", "abc_d",
    "holding sword", "white_background", "simple background", "upper body", "red ribbon",
]  # fmt: skip
ODD = ["1Girl", "Masterpiece", "NSFW", "  spaced  ", "ünïcödé tag", "tag\nwith newline", "日本語", "emoji 🎨",
       "x" * 60, "a:b", "tag (qualifier)", "score_9", "score 9", "source_anime", "male_focus", "6+girls"]  # fmt: skip
SENTENCES = [
    "A girl stands in a field of flowers", "The sky is clear and blue", "She smiles at the viewer",
    "Soft light falls on her face", "A quiet street at night", "Rain falls on the old town",
]  # fmt: skip


@pytest.fixture(scope="module")
def lookup():
    """Our database built from the reference's own lists, so the test compares code, not data."""
    lists = kgen_formatter.tag_lists
    return TagDatabase.from_lists({name: lists[name] for name in ("artist", "characters", "copyrights", "meta")}).category


@pytest.fixture(scope="module")
def reference_lists():
    lists = kgen_formatter.tag_lists
    return {name: sorted(lists[name])[:: max(1, len(lists[name]) // 400)] for name in ("artist", "characters", "copyrights", "meta")}


def _random_tags(rng: random.Random, names: dict[str, list[str]]) -> list[str]:
    pools = [
        (names["artist"], 1), (names["characters"], 1), (names["copyrights"], 1), (names["meta"], 1),
        (sorted(kgen_metainfo.SPECIAL), 2), (kgen_metainfo.POSSIBLE_QUALITY_TAGS, 2),
        (kgen_metainfo.RATING_TAGS, 1), (GENERAL, 6), (ODD, 1),
    ]  # fmt: skip
    weights = [w for _, w in pools]
    tags = []
    for _ in range(rng.choice([0, 0, 1, 2, 3, 5, 8, 13, 30])):
        pool = rng.choices([p for p, _ in pools], weights)[0]
        tag = rng.choice(pool)
        if rng.random() < 0.15:
            tag = tag.replace(" ", "_")
        tags.append(tag)
    return tags


def _random_nl(rng: random.Random) -> str:
    if rng.random() < 0.45:
        return ""
    text = ". ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
    return text + rng.choice(["", "."])


def _reference_plan(tag_map, nl: str, tag_length: str, nl_length: str, template: str):
    extra = (not nl and "<|extended|>" in template) or "<|generated|>" in template
    return kgen_tipo.parse_tipo_request(
        tag_map, nl, tag_length_target=tag_length, nl_length_target=nl_length, generate_extra_nl_prompt=extra
    )


def _our_task(mode):
    return Task.TAGS if mode is None else Task(mode)


def _cases(lookup, names):
    rng = random.Random(20261126)
    for index in range(CASES):
        tags = _random_tags(rng, names)
        nl = _random_nl(rng)
        preset = rng.choice(list(PRESETS))
        tag_length, nl_length = rng.choice(LENGTHS), rng.choice(LENGTHS)
        width, height = rng.randrange(64, 4097, 8), rng.randrange(64, 4097, 8)
        yield index, tags, nl, preset, tag_length, nl_length, width, height


def test_categorisation_plan_and_first_input_match_reference(lookup, reference_lists):
    counts = collections.Counter()
    for index, tags, nl, preset, tag_length, nl_length, width, height in _cases(lookup, reference_lists):
        ours = categorise(tags, lookup)
        theirs = kgen_formatter.seperate_tags(tags)
        for category in ("special", "quality", "rating", "meta", "artist", "characters", "copyrights", "general"):
            assert ours[category] == theirs[category], (index, tags, category)
        counts["categorised"] += 1

        template = TEMPLATES[PRESETS[preset]]
        meta, operations, general, nl_out = _reference_plan(theirs, nl, tag_length, nl_length, template)
        meta["aspect_ratio"] = f"{width / height:.1f}"
        passes = plan_passes(
            PRESETS[preset], has_tags=bool(general_text(ours).strip()), has_nl=bool(nl.strip()),
            tag_length=tag_length, nl_length=nl_length, template=template,
        )  # fmt: skip
        assert [(_our_task(m), length, expand) for m, length, expand in operations] == [
            (p.task, p.length, p.expand) for p in passes
        ], (index, tags, nl, preset)
        counts["planned"] += 1
        assert general == general_text(ours)

        mode, length, expand = operations[0]
        reference_input = kgen_tipo.apply_tipo_prompt(meta, general, nl_out, mode, length, expand)
        our_input = render_input(meta_lines(ours, aspect_ratio_text(width, height)), general_text(ours), nl, passes[0])
        assert our_input == reference_input, (index, tags, nl)
        counts["first input"] += 1

        # Every later pass and every task TIPO knows, fed the same content, renders the same.
        rng = random.Random(index)
        steps = [(m, length, expand) for m, length, expand in operations[1:]]
        steps.append((rng.choice([None] + [t.value for t in Task if t is not Task.TAGS]), rng.choice(LENGTHS), rng.random() < 0.5))
        for mode, length, expand in steps:
            step = Pass(_our_task(mode), length, expand)
            ours_text = render_input(meta_lines(ours, aspect_ratio_text(width, height)), general_text(ours), nl, step)
            assert ours_text == kgen_tipo.apply_tipo_prompt(meta, general, nl_out, mode, length, expand), (index, mode)
            counts["other inputs"] += 1
    print(dict(counts))
    assert counts["first input"] == CASES


def _synthetic_continuation(rng: random.Random, task: Task, expand: bool) -> str:
    new_tags = ", ".join(rng.sample(GENERAL + ODD[:3], rng.randint(0, 12)))
    sentences = ". ".join(rng.sample(SENTENCES, rng.randint(0, 4)))
    pieces = []
    if task.fields[-1] == "tag":
        pieces.append((", " if expand else " ") + new_tags)
    else:
        pieces.append((" " if expand else " ") + sentences + ".")
    if rng.random() < 0.5:
        pieces.append("\nlong: " + sentences)
    if rng.random() < 0.2:
        pieces.append("\nshort: <|empty|>")
    if rng.random() < 0.2:
        pieces.append("\nNote: a line with a colon")
    if rng.random() < 0.3:
        pieces.append("\ntag: " + new_tags)
    return "".join(pieces)


def _reference_defect_triggers(parsed_ref, general, nl, task, length, our_out) -> str | None:
    """Why this case cannot be compared (a listed reference defect), or None."""
    inputs = [t.strip() for t in general.split(",")]
    new = [t for t in parsed_ref.get("general", []) if t not in inputs]
    kept = [t for t in parsed_ref.get("general", []) if t in inputs]
    if len(kept) + len(new) > TAG_TARGETS[length][1]:
        return "tag cut uses the NL maximum"
    mode_fields = task.fields
    extended = parsed_ref.get("extended", "") if "short" in mode_fields else ""
    if "generated" in parsed_ref and "long" in mode_fields and nl and not extended.strip():
        extended = parsed_ref.get("generated", "")
    sentences_in = split_sentences(nl)
    sentences_out = [s for s in split_sentences(extended) if s not in sentences_in]
    limit = NL_TARGETS[length][1]
    if limit is not None and len(sentences_in) + len(sentences_out) > limit:
        return "NL cut after a shuffle"
    if sentences_out and not sentences_in:
        return "blank NL input with NL output"
    return None


def test_parse_and_post_process_match_reference(lookup, reference_lists):
    counts = collections.Counter()
    kgen_tipo.BAN_TAGS = []
    for index, tags, nl, preset, tag_length, nl_length, width, height in _cases(lookup, reference_lists):
        rng = random.Random(index)
        theirs = kgen_formatter.seperate_tags(tags)
        template = TEMPLATES[PRESETS[preset]]
        meta, operations, general, nl_out = _reference_plan(theirs, nl, tag_length, nl_length, template)
        meta["aspect_ratio"] = f"{width / height:.1f}"
        for mode, length, expand in operations:
            task = _our_task(mode)
            text = kgen_tipo.apply_tipo_prompt(meta, general, nl_out, mode, length, expand)
            text += _synthetic_continuation(rng, task, expand)
            # A trailing newline keeps the reference's character strip of "<s>"/"</s>" (a listed
            # defect, tested on its own) away from the text.
            reference = kgen_tipo.parse_tipo_result("<s>" + text + "\n")
            ours = parse_output(text, lookup)
            assert ours == reference, (index, text)
            counts["parsed"] += 1

            our_out = post_process(ours, PassInput(general, nl_out.strip()), task, length, BanList())
            why = _reference_defect_triggers(reference, general, nl_out, task, length, our_out)
            if why:
                counts[f"skipped: {why}"] += 1
                continue
            ref_out = kgen_tipo.post_generate_process(dict(reference), general, nl_out, mode, length)
            inputs = {t.strip() for t in general.split(",")}
            assert [t for t in our_out["general"] if t in inputs] == [t for t in ref_out["general"] if t in inputs]
            assert sorted(our_out["general"]) == sorted(ref_out["general"]), (index, text)
            assert sorted(split_sentences(our_out["extended"])) == sorted(split_sentences(ref_out["extended"])), (index, text)
            assert sorted(split_sentences(str(our_out.get("generated", "")))) == sorted(
                split_sentences(str(ref_out.get("generated", "")))
            ), (index, text)
            for category in ("special", "artist", "characters", "copyrights", "meta", "quality", "rating"):
                assert our_out.get(category) == ref_out.get(category), (index, category)
            counts["post-processed"] += 1
    print(dict(counts))
    assert counts["parsed"] >= CASES and counts["post-processed"] >= CASES // 2
