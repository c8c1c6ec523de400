"""``tipo.tokenizer`` gives transformers 4.46.1's slow ``LlamaTokenizer`` ids without it.

Three references: ``sentencepiece`` itself (llama.cpp's expected ids for the fixture's LLaMA
vocabulary, and the per-piece rule), ``tokenizer-golden.json`` (made by
``tools/make_tokenizer_golden.py`` under transformers 4.46.1) and, where transformers 4.46.1
with a new enough protobuf is installed, transformers itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tipo._spm_proto import WireFormatError, disable_add_dummy_prefix
from tipo.errors import ModelNotFoundError, TokenizerMismatchError
from tipo.added_tokens import TIPO_ADDED_TOKENS
from tipo.tokenizer import TipoTokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tipo-tokenizer"
GOLDEN_PATH = ROOT / "tests" / "fixtures" / "tokenizer-golden.json"
TIPO_PROMPT = "quality: masterpiece\naspect_ratio: 1.0\ntarget: <|long|> <|tag_to_long|>\ntag: 1girl, solo\nlong:"


@lru_cache(maxsize=None)
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))


def build_variant(folder: Path, name: str) -> Path:
    """Rebuild the tokenizer folder the golden file calls ``name``."""
    files = golden()["variants"][name]["files"]
    folder.mkdir(parents=True, exist_ok=True)
    for file in files["copy"]:
        shutil.copy(FIXTURE / file, folder / file)
    text = json.dumps(files["tokenizer_config.json"], indent=2, ensure_ascii=False)
    (folder / "tokenizer_config.json").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def variant_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {name: build_variant(root / name, name) for name in golden()["variants"]}


@pytest.fixture(scope="module")
def tokenizers(variant_dirs: dict[str, Path]) -> dict[str, TipoTokenizer]:
    return {name: TipoTokenizer.from_dir(folder) for name, folder in variant_dirs.items()}


@pytest.fixture(scope="module")
def sp() -> Any:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(FIXTURE / "tokenizer.model"))


def _live_transformers_446() -> Any:
    """transformers 4.46.1 with a protobuf that its ``legacy: false`` path can import, or None."""
    try:
        import transformers
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401 (needs protobuf >= 5.26)
    except Exception:
        return None
    return transformers if transformers.__version__ == "4.46.1" else None


needs_446 = pytest.mark.skipif(
    _live_transformers_446() is None, reason="needs transformers 4.46.1 and protobuf >= 5.26 installed"
)


@lru_cache(maxsize=None)
def live_tokenizer(folder: str) -> Any:
    transformers = _live_transformers_446()
    transformers.logging.set_verbosity_error()
    return transformers.LlamaTokenizer.from_pretrained(folder)


# -- the fixture and the golden file belong together --------------------------------------


def test_golden_file_was_made_from_this_fixture_by_transformers_4_46_1() -> None:
    import hashlib

    data = golden()
    assert data["versions"]["transformers"] == "4.46.1"
    assert data["tokenizer_model_sha256"] == hashlib.sha256((FIXTURE / "tokenizer.model").read_bytes()).hexdigest()
    fixture_config = json.loads((FIXTURE / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert data["variants"]["fixture"]["files"]["tokenizer_config.json"] == fixture_config
    assert data["variants"]["fixture"]["legacy"] is False
    assert data["variants"]["legacy-absent"]["legacy"] is True


# -- (a) against sentencepiece directly ------------------------------------------------------


def test_fixture_model_reproduces_llama_cpp_reference_ids(sp: Any) -> None:
    cases = golden()["sentencepiece_reference"]["cases"]
    assert len(cases) == 46
    assert [sp.encode(c["text"]) for c in cases] == [c["ids"] for c in cases]


@pytest.mark.parametrize("name", ["fixture", "legacy-absent"])
def test_plain_text_equals_sentencepiece_in_both_modes(tokenizers: dict[str, TipoTokenizer], name: str) -> None:
    """Without added tokens, legacy and non-legacy both give SentencePiece's ids (dummy prefix
    included, leading spaces too: 4.46.1 hides the prefix behind ``<unk>``, unlike transformers 5)."""
    tokenizer = tokenizers[name]
    for case in golden()["sentencepiece_reference"]["cases"]:
        assert tokenizer.encode(case["text"], add_bos=False) == case["ids"], case["text"]


def _split_on_added(text: str) -> list[str]:
    alternatives = sorted(TIPO_ADDED_TOKENS + ("<s>", "</s>", "<unk>"), key=len, reverse=True)
    return [part for part in re.split("(" + "|".join(map(re.escape, alternatives)) + ")", text) if part]


def _added_id(part: str) -> int | None:
    return {"<unk>": 0, "<s>": 1, "</s>": 2, **{t: 32000 + i for i, t in enumerate(TIPO_ADDED_TOKENS)}}.get(part)


added_mix = st.lists(
    st.sampled_from([*TIPO_ADDED_TOKENS, "<s>", "</s>", " ", "  ", "\n", "a", "tag: ", "1girl", ", ", "é", "🦙"]),
    max_size=12,
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=added_mix)
def test_legacy_encodes_each_piece_between_added_tokens_with_a_dummy_prefix(
    tokenizers: dict[str, TipoTokenizer], sp: Any, text: str
) -> None:
    expected: list[int] = []
    for part in _split_on_added(text):
        added = _added_id(part)
        expected += [added] if added is not None else sp.encode(part)
    assert tokenizers["legacy-absent"].encode(text, add_bos=False) == expected


@pytest.mark.parametrize("case", range(4))
def test_tipo_prompts_of_the_fixture_check_report(tokenizers: dict[str, TipoTokenizer], case: int) -> None:
    """The report's ``hf`` ids (transformers 5, legacy: false) and ``spm_legacy`` ids
    (SentencePiece per piece) are our non-legacy and legacy ids."""
    report = golden()["tipo_check_report"][case]
    assert tokenizers["fixture"].encode(report["text"], add_bos=False) == report["hf"]
    assert tokenizers["legacy-absent"].encode(report["text"], add_bos=False) == report["spm_legacy"]


def test_legacy_and_non_legacy_differ_only_around_added_tokens(tokenizers: dict[str, TipoTokenizer]) -> None:
    """``target: <|long|> <|tag_to_long|>\\ntag``: legacy gives the piece after each added token
    its own dummy prefix (▁▁ and ▁ before the newline); non-legacy does not."""
    legacy, modern = tokenizers["legacy-absent"], tokenizers["fixture"]
    text = "target: <|long|> <|tag_to_long|>\ntag"
    assert modern.encode(text) == [1, 3646, 29901, 29871, 32003, 29871, 32005, 13, 4039]
    assert legacy.encode(text) == [1, 3646, 29901, 29871, 32003, 259, 32005, 29871, 13, 4039]


# -- (b) against transformers 4.46.1 (golden file) ----------------------------------------


@pytest.mark.parametrize("name", list(golden()["variants"]))
def test_attributes_match_transformers_4_46_1(tokenizers: dict[str, TipoTokenizer], name: str) -> None:
    ref, ours = golden()["variants"][name], tokenizers[name]
    assert (ours.legacy, ours.vocab_size, ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id) == (
        ref["legacy"], ref["len"], ref["bos_id"], ref["eos_id"], ref["pad_id"], ref["unk_id"]
    )  # fmt: skip
    assert dict(ours.added_tokens) == ref["added_tokens"]


@pytest.mark.parametrize("name", list(golden()["variants"]))
def test_ids_and_decoding_match_transformers_4_46_1(tokenizers: dict[str, TipoTokenizer], name: str) -> None:
    tokenizer = tokenizers[name]
    for case in golden()["variants"][name]["cases"]:
        ids, tail = case["ids"], case["ids"][len(case["ids"]) // 2 :]
        got = {
            "ids": tokenizer.encode(case["text"]),
            "decode_skip": tokenizer.decode(ids),
            "decode_keep": tokenizer.decode(ids, skip_special=False),
            "tail_decode_skip": tokenizer.decode(tail),
            "tail_decode_keep": tokenizer.decode(tail, skip_special=False),
        }
        assert got == {key: case[key] for key in got}, repr(case["text"])


@needs_446
@pytest.mark.parametrize("name", list(golden()["variants"]))
def test_golden_file_still_matches_live_transformers(variant_dirs: dict[str, Path], name: str) -> None:
    live = live_tokenizer(str(variant_dirs[name]))
    for case in golden()["variants"][name]["cases"]:
        assert live.encode(case["text"]) == case["ids"], repr(case["text"])
        assert live.decode(case["ids"], skip_special_tokens=True) == case["decode_skip"]


# -- (c) properties -------------------------------------------------------------------------

any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
near_misses = st.sampled_from(["\u2581", " \u2581", "<unk>", "<|long", "|>"])
mixed_text = st.lists(st.one_of(any_text, added_mix, near_misses), max_size=5).map("".join)


@needs_446
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mixed_text, name=st.sampled_from(["fixture", "legacy-absent", "strip-flags", "strip-flags-legacy"]))
def test_random_text_matches_live_transformers(
    variant_dirs: dict[str, Path], tokenizers: dict[str, TipoTokenizer], text: str, name: str
) -> None:
    live, ours = live_tokenizer(str(variant_dirs[name])), tokenizers[name]
    ids = live.encode(text)
    assert ours.encode(text) == ids
    for part in (ids, ids[1:], ids[len(ids) // 2 :]):
        if part:
            assert ours.decode(part) == live.decode(part, skip_special_tokens=True)
            assert ours.decode(part, skip_special=False) == live.decode(part, skip_special_tokens=False)


plain_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=60).filter(
    lambda t: not any(token in t for token in (*TIPO_ADDED_TOKENS, "<s>", "</s>", "<unk>"))
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=plain_text)
def test_decode_inverts_encode_for_plain_text(tokenizers: dict[str, TipoTokenizer], text: str) -> None:
    """Text without added-token strings and without "▁" round-trips exactly with
    ``legacy: false``; ``legacy: true`` loses one leading space (SentencePiece's decoder drops
    it with the dummy prefix)."""
    assert tokenizers["fixture"].decode(tokenizers["fixture"].encode(text)) == text
    expected = text[1:] if text.startswith(" ") else text
    assert tokenizers["legacy-absent"].decode(tokenizers["legacy-absent"].encode(text)) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=mixed_text,
    continuation=st.lists(st.integers(3, 32012), max_size=20),
    name=st.sampled_from(["fixture", "legacy-absent"]),
)
def test_decoding_prompt_plus_continuation_extends_the_decoded_prompt(
    tokenizers: dict[str, TipoTokenizer], prompt: str, continuation: list[int], name: str
) -> None:
    """The continuation's text is ``decode(prompt_ids + new_ids)`` minus ``decode(prompt_ids)``."""
    tokenizer = tokenizers[name]
    prompt_ids = tokenizer.encode(prompt)
    assert tokenizer.decode(prompt_ids + continuation).startswith(tokenizer.decode(prompt_ids))


# -- (d) errors ------------------------------------------------------------------------------


def _copy_fixture(folder: Path, config: dict[str, Any] | None = None) -> Path:
    folder.mkdir()
    shutil.copy(FIXTURE / "tokenizer.model", folder / "tokenizer.model")
    config = config or json.loads((FIXTURE / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_tokenizer_without_tipo_tokens_is_refused(tmp_path: Path) -> None:
    config = json.loads((FIXTURE / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items() if int(k) < 3}
    del config["additional_special_tokens"]
    folder = _copy_fixture(tmp_path / "llama", config)
    with pytest.raises(TokenizerMismatchError, match=re.escape(str(folder))) as error:
        TipoTokenizer.from_dir(folder)
    assert "missing <|empty|>, <|very_short|>" in str(error.value)
    assert "<|gen_meta|>" in str(error.value)


def test_misnumbered_tipo_tokens_are_named(tmp_path: Path) -> None:
    config = json.loads((FIXTURE / "tokenizer_config.json").read_text(encoding="utf-8"))
    decoder = config["added_tokens_decoder"]
    decoder["32003"], decoder["32004"] = decoder["32004"], decoder["32003"]
    with pytest.raises(TokenizerMismatchError) as error:
        TipoTokenizer.from_dir(_copy_fixture(tmp_path / "swapped", config))
    assert "<|long|> (id 32004, expected 32003)" in str(error.value)
    assert "<|very_long|> (id 32003, expected 32004)" in str(error.value)


def test_missing_tokenizer_model_is_a_file_not_found_error(tmp_path: Path) -> None:
    folder = _copy_fixture(tmp_path / "model")
    (folder / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.model in") as error:
        TipoTokenizer.from_dir(folder)
    assert isinstance(error.value, ModelNotFoundError)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        TipoTokenizer.from_dir(tmp_path / "nowhere")


def test_damaged_files_raise_tokenizer_mismatch(tmp_path: Path) -> None:
    folder = _copy_fixture(tmp_path / "bad")
    (folder / "tokenizer.model").write_bytes(b"\xff\xff\xff")
    with pytest.raises(TokenizerMismatchError, match="is not a SentencePiece model"):
        TipoTokenizer.from_dir(folder)
    (folder / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerMismatchError, match="cannot read"):
        TipoTokenizer.from_dir(folder)


def test_check_vocab_names_both_sizes(tokenizers: dict[str, TipoTokenizer]) -> None:
    tokenizers["fixture"].check_vocab(32013)
    with pytest.raises(TokenizerMismatchError, match=r"32012 embedding rows.*32013 rows needed"):
        tokenizers["fixture"].check_vocab(32012)


def test_ids_outside_the_vocabulary_are_refused(tokenizers: dict[str, TipoTokenizer]) -> None:
    with pytest.raises(TokenizerMismatchError, match="id 32013"):
        tokenizers["fixture"].decode([1, 32013])


# -- shape of the object --------------------------------------------------------------------


def test_tipo_tokens_and_special_ids(tokenizers: dict[str, TipoTokenizer]) -> None:
    tokenizer = tokenizers["fixture"]
    assert [tokenizer.added_tokens[t] for t in TIPO_ADDED_TOKENS] == list(range(32000, 32013))
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id) == (1, 2, 2, 0)
    assert tokenizer.encode("", add_bos=False) == [] and tokenizer.encode("") == [1]


def test_tokenizer_is_immutable(tokenizers: dict[str, TipoTokenizer]) -> None:
    tokenizer = tokenizers["fixture"]
    with pytest.raises(AttributeError):
        tokenizer.legacy = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        tokenizer.added_tokens["<|long|>"] = 5  # type: ignore[index]


def test_threads_share_one_tokenizer(tokenizers: dict[str, TipoTokenizer]) -> None:
    tokenizer = tokenizers["fixture"]
    texts = [case["text"] for case in golden()["variants"]["fixture"]["cases"]]
    expected = [tokenizer.encode(t) for t in texts]
    results: list[list[list[int]]] = []

    def work() -> None:
        results.append([tokenizer.encode(t) for t in texts])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 8


def test_no_protobuf_or_transformers_on_any_path(variant_dirs: dict[str, Path]) -> None:
    """Both modes load and encode with protobuf and transformers made unimportable, and
    importing the module loads nothing (not even sentencepiece)."""
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("google", "transformers", "tokenizers"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import tipo.tokenizer
assert "sentencepiece" not in sys.modules
for folder in {[str(variant_dirs["fixture"]), str(variant_dirs["legacy-absent"])]!r}:
    t = tipo.tokenizer.TipoTokenizer.from_dir(folder)
    print(t.legacy, t.encode({TIPO_PROMPT!r}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0].startswith("False [1, 11029") and lines[1].startswith("True [1, 11029")


# -- the protobuf wire patch ------------------------------------------------------------------


def test_wire_patch_turns_off_the_dummy_prefix() -> None:
    import sentencepiece

    raw = (FIXTURE / "tokenizer.model").read_bytes()
    original, patched = sentencepiece.SentencePieceProcessor(), sentencepiece.SentencePieceProcessor()
    original.LoadFromSerializedProto(raw)
    patched.LoadFromSerializedProto(disable_add_dummy_prefix(raw))
    assert original.encode("Hello world", out_type=str) == ["\u2581Hello", "\u2581world"]
    assert patched.encode("Hello world", out_type=str) == ["Hello", "\u2581world"]
    assert disable_add_dummy_prefix(b"") == b"\x1a\x02\x18\x00"
    assert disable_add_dummy_prefix(b"\x1a\x04\x18\x01\x20\x01") == b"\x1a\x04\x20\x01\x18\x00"
    with pytest.raises(WireFormatError):
        disable_add_dummy_prefix(b"\x1a\x05\x18")


def test_wire_patch_equals_protobuf_merge() -> None:
    """Where protobuf can parse sentencepiece's schema, our bytes are the message that
    4.46.1 builds with ``MergeFrom`` (field order aside)."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb2
    except ImportError as error:  # no protobuf, or one too old for sentencepiece's schema
        pytest.skip(f"sentencepiece_model_pb2 unavailable: {error}")
    raw = (FIXTURE / "tokenizer.model").read_bytes()
    expected = pb2.ModelProto.FromString(raw)
    expected.normalizer_spec.MergeFrom(pb2.NormalizerSpec(add_dummy_prefix=False))
    assert pb2.ModelProto.FromString(disable_add_dummy_prefix(raw)) == expected
