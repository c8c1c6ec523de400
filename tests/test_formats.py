"""Output templates."""

from __future__ import annotations

from tipo.formats import TEMPLATES, apply_template, template_for
from tipo.plan import Mode

BOTH = TEMPLATES[Mode.BOTH_TAG_FIRST]


def test_reference_layout_of_the_recommended_preset():
    values = {
        "special": ["1girl"], "characters": ["hatsune miku"], "copyrights": ["vocaloid"], "artist": ["wlop"],
        "general": ["solo", "long hair"], "extended": "A girl sings", "quality": ["masterpiece"],
        "meta": ["highres"], "rating": ["safe"],
    }  # fmt: skip
    assert apply_template(BOTH, values) == (
        "1girl, hatsune miku, vocaloid,\nwlop,\n\nsolo, long hair,\n\nA girl sings.\n\nmasterpiece, highres, safe"
    )


def test_empty_placeholders_take_their_separator_with_them():
    """The reference left a lone '.' where <|extended|> was empty."""
    assert apply_template(BOTH, {"general": ["solo"]}) == "solo"
    assert apply_template(TEMPLATES[Mode.NL_ONLY], {}) == ""


def test_extended_falls_back_to_generated_and_back():
    assert apply_template("<|extended|>.", {"generated": "Made up"}) == "Made up."
    assert apply_template("<|generated|>.", {"extended": "Kept"}) == "Kept."
    assert apply_template("<|generated|>. <|extended|>.", {"extended": "Kept"}) == "Kept."


def test_values_are_never_reexpanded_or_cleaned():
    out = apply_template("<|general|>, <|quality|>", {"general": ["<|quality|>", ".", "a  b"], "quality": ["best"]})
    assert out == "<|quality|>, ., a  b, best", "a value is filled as is (restore drops model tags like <|x|>)"


def test_control_characters_in_a_custom_template_are_inert():
    assert apply_template("\x01x\x02<|general|>\x00", {"general": ["a"]}) == "xa"


def test_custom_template_replaces_the_mode_template():
    assert template_for(Mode.TAG_ONLY, "<|general|>") == "<|general|>"
    assert template_for(Mode.TAG_ONLY) == TEMPLATES[Mode.TAG_ONLY]
