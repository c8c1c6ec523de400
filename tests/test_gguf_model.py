"""``tipo.gguf``: llama.cpp's ``.gguf`` files load into the same model and tokenizer.

The GGUF files are the tiny model (tools/make_tiny_model.py) written the way llama.cpp's
converter writes TIPO's (tools/make_tiny_gguf.py: names, rotary permutation, vocabulary, F32
norms); each test compares what comes back with the safetensors folder it was made from.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import FIXTURE_TOKENIZER, load_tool
from tipo.errors import ModelNotFoundError, TokenizerMismatchError, UnsupportedModelError
from tipo.added_tokens import TIPO_ADDED_TOKENS
from tipo.tokenizer import TipoTokenizer

gguf = pytest.importorskip("gguf", reason="GGUF support needs the gguf package (test extra)")
torch = pytest.importorskip("torch")

from tipo.gguf.checkpoint import dequantize_tensor, open_gguf
from tipo.gguf.convert import gguf_config, unpermute_rows
from tipo.gguf.load import load_gguf_model, supports_grouped_query_attention
from tipo.gguf.reader import read_gguf
from tipo.gguf.tokenizer import sentencepiece_proto
from tipo.models.cache import ModelCache
from tipo.models.load import load_model
from tipo.models.registry import MODELS
from tipo.models.resolve import resolve_model

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "tokenizer-golden.json").read_text(encoding="utf-8"))
TIPO_PROMPTS = [case["text"] for case in GOLDEN["tipo_check_report"]] + [
    "quality: masterpiece\naspect_ratio: 1.0\ntarget: <|long|> <|tag_to_long|>\ntag: 1girl, solo\nlong:",
    "target: <|very_long|> <|short_to_tag_to_long|>\nshort: 1girl, <|empty|>\n tag:  a  b \nlong:",
]


@pytest.fixture(scope="session")
def make_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_gguf(type, folder=tiny model, old_vocab=False)``: the converted file, made once."""
    made: dict[tuple[str, str, bool], Path] = {}
    root = tmp_path_factory.mktemp("gguf")
    tool = load_tool("make_tiny_gguf")

    def make(file_type: str = "f32", folder: Path | None = None, old_vocab: bool = False) -> Path:
        source = folder or tiny_model_dir
        key = (file_type, str(source), old_vocab)
        if key not in made:
            out = root / f"{len(made)}-{source.name}-{file_type}{'-old' if old_vocab else ''}.gguf"
            made[key] = tool.make_gguf(source, out, file_type, old_vocab=old_vocab)
        return made[key]

    return make


@pytest.fixture(scope="module")
def fixture_tokenizer() -> TipoTokenizer:
    return TipoTokenizer.from_dir(FIXTURE_TOKENIZER)


@pytest.fixture(scope="module")
def input_ids() -> Any:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, 32013, (3, 24), generator=generator)


def model_folder(tiny_model_dir: Path, target: Path, **config_changes: Any) -> Path:
    """A copy of the tiny model folder with config.json changed (weights copied as they are)."""
    shutil.copytree(tiny_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config.update(config_changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def rewrite_weights(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


# -- weights -----------------------------------------------------------------------------------


def test_unpermute_inverts_llama_cpps_rotary_permutation() -> None:
    import numpy as np

    tool = load_tool("make_tiny_gguf")
    weights = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    for heads in (8, 2, 1):
        permuted = tool.permute_rows(weights, heads)
        assert not np.array_equal(permuted, weights)
        assert np.array_equal(unpermute_rows(permuted, heads), weights)
    # llama.cpp pairs row i with row i + head_dim/2 of the same head: rows 0 and 8 of head 0.
    assert np.array_equal(tool.permute_rows(weights, 8)[:2], weights[[0, 8]])


def test_f32_file_gives_the_safetensors_logits(make_gguf: Callable[..., Path], tiny_llama: Any, input_ids: Any) -> None:
    loaded = load_gguf_model(make_gguf("f32"), "cpu")
    assert type(loaded.model) is type(tiny_llama)
    assert loaded.dtype == torch.float32 and not loaded.model.training
    torch.testing.assert_close(loaded.model(input_ids).logits, tiny_llama(input_ids).logits, rtol=0, atol=1e-5)


def test_f16_file_gives_logits_within_half_precision(
    make_gguf: Callable[..., Path], tiny_llama: Any, input_ids: Any
) -> None:
    """Stored as F16 (what the Hub's TIPO GGUFs are), loaded as float32 on CPU."""
    logits = load_gguf_model(make_gguf("f16"), "cpu").model(input_ids).logits
    torch.testing.assert_close(logits, tiny_llama(input_ids).logits, rtol=0, atol=3e-2)


@pytest.mark.parametrize(
    ("file_type", "min_cosine", "min_top1"), [("bf16", 0.9999, 0.95), ("q8_0", 0.999, 0.9), ("q4_0", 0.9, 0.5)]
)
def test_quantised_file_gives_close_logits(
    make_gguf: Callable[..., Path], tiny_llama: Any, input_ids: Any, file_type: str, min_cosine: float, min_top1: float
) -> None:
    """Random weights have near ties, so top-1 agreement is checked loosely and the cosine of
    every position's logit vector tightly; the weight test below pins the layout."""
    logits = load_gguf_model(make_gguf(file_type), "cpu").model(input_ids).logits
    reference = tiny_llama(input_ids).logits
    assert torch.nn.functional.cosine_similarity(logits, reference, dim=-1).min() > min_cosine
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= min_top1


@pytest.mark.parametrize(("file_type", "max_error"), [("f16", 1e-3), ("bf16", 1e-2), ("q8_0", 1e-2), ("q4_0", 0.15)])
def test_every_weight_comes_back_in_place(
    make_gguf: Callable[..., Path], tiny_llama: Any, file_type: str, max_error: float
) -> None:
    """Relative error per tensor within the type's rounding: a misplaced row (wrong name or
    permutation) would be off by about 140%."""
    loaded = load_gguf_model(make_gguf(file_type), "cpu").model.state_dict()
    for name, expected in tiny_llama.state_dict().items():
        if "rotary" in name:
            continue
        error = (loaded[name] - expected).norm() / expected.norm()
        assert error < max_error, (name, float(error))


def test_grouped_query_attention_unpermutes_k_with_the_kv_head_count(
    tiny_model_dir: Path, tmp_path: Path, make_gguf: Callable[..., Path], input_ids: Any
) -> None:
    from transformers import LlamaForCausalLM

    folder = model_folder(tiny_model_dir, tmp_path / "gqa", num_key_value_heads=2)

    def keep_two_heads(tensors: dict[str, Any]) -> None:
        for name in [n for n in tensors if n.endswith(("k_proj.weight", "v_proj.weight"))]:
            tensors[name] = tensors[name][:32].contiguous()  # 2 KV heads of 16

    rewrite_weights(folder, keep_two_heads)
    if not supports_grouped_query_attention():  # transformers 4.30 (A1111)
        with pytest.raises(UnsupportedModelError, match=r"grouped-query attention.*4\.31\+ can"):
            load_gguf_model(make_gguf("f32", folder), "cpu")
        return
    reference = LlamaForCausalLM.from_pretrained(str(folder), use_safetensors=True).eval()
    loaded = load_gguf_model(make_gguf("f32", folder), "cpu")
    assert loaded.model.config.num_key_value_heads == 2
    torch.testing.assert_close(loaded.model(input_ids).logits, reference(input_ids).logits, rtol=0, atol=1e-5)


def test_file_without_output_tensor_ties_the_embeddings(
    tiny_model_dir: Path, tmp_path: Path, make_gguf: Callable[..., Path], input_ids: Any
) -> None:
    from transformers import LlamaForCausalLM

    folder = model_folder(tiny_model_dir, tmp_path / "tied", tie_word_embeddings=True)
    rewrite_weights(folder, lambda tensors: tensors.pop("lm_head.weight"))
    reference = LlamaForCausalLM.from_pretrained(str(folder), use_safetensors=True).eval()
    loaded = load_gguf_model(make_gguf("f32", folder), "cpu").model
    assert loaded.config.tie_word_embeddings
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(loaded(input_ids).logits, reference(input_ids).logits, rtol=0, atol=1e-5)


def test_config_comes_from_the_llama_metadata(make_gguf: Callable[..., Path], tiny_llama: Any) -> None:
    config = load_gguf_model(make_gguf("f16"), "cpu").model.config
    expected = tiny_llama.config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "vocab_size", "bos_token_id", "eos_token_id",
                "pad_token_id", "tie_word_embeddings"):  # fmt: skip
        assert getattr(config, key) == getattr(expected, key), key
    assert config.rms_norm_eps == pytest.approx(expected.rms_norm_eps)


# -- tokenizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("old_vocab", [False, True], ids=["added-tokens-control", "added-tokens-user-defined"])
def test_rebuilt_sentencepiece_model_is_the_repos_tokenizer_model(make_gguf: Callable[..., Path], old_vocab: bool) -> None:
    """Both converter generations (``<unk>`` CONTROL with score -1000, or as SentencePiece wrote
    it) give back the original tokenizer.model byte for byte."""
    metadata, _ = read_gguf(make_gguf("q8_0", old_vocab=old_vocab))
    types = metadata["tokenizer.ggml.token_type"]
    assert types[32000:] == [3 if not old_vocab else 4] * 13
    base = 32000
    proto = sentencepiece_proto(
        metadata["tokenizer.ggml.tokens"][:base], metadata["tokenizer.ggml.scores"][:base], types[:base],
        unk=0, bos=1, eos=2,
    )  # fmt: skip
    assert proto == (FIXTURE_TOKENIZER / "tokenizer.model").read_bytes()


@pytest.mark.parametrize("old_vocab", [False, True])
def test_gguf_tokenizer_equals_the_folders_with_the_same_legacy(
    make_gguf: Callable[..., Path], fixture_tokenizer: TipoTokenizer, old_vocab: bool
) -> None:
    tokenizer = load_gguf_model(make_gguf("q8_0", old_vocab=old_vocab), "cpu", legacy=False).tokenizer
    assert tokenizer.legacy is False
    texts = TIPO_PROMPTS + [case["text"] for case in GOLDEN["sentencepiece_reference"]["cases"]]
    for text in texts:
        ids = fixture_tokenizer.encode(text)
        assert tokenizer.encode(text) == ids, text
        for skip in (True, False):
            assert tokenizer.decode(ids, skip_special=skip) == fixture_tokenizer.decode(ids, skip_special=skip)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id) == (1, 2, 2, 0)
    assert tokenizer.vocab_size == fixture_tokenizer.vocab_size == 32013
    assert [tokenizer.added_tokens[t] for t in TIPO_ADDED_TOKENS] == list(range(32000, 32013))


def test_gguf_tokenizer_defaults_to_llama_cpps_per_piece_prefix(make_gguf: Callable[..., Path]) -> None:
    """Without a tokenizer_config.json beside the file: legacy, the ids llama.cpp (the
    reference's GGUF path) fed these files (``spm_legacy`` in the fixture's check report)."""
    tokenizer = load_gguf_model(make_gguf("q8_0"), "cpu").tokenizer
    assert tokenizer.legacy is True
    for case in GOLDEN["tipo_check_report"]:
        assert tokenizer.encode(case["text"]) == [1, *case["spm_legacy"]], case["text"]


@pytest.mark.parametrize(("setting", "expected"), [(False, False), (True, True), (None, True)])
def test_tokenizer_config_beside_the_file_decides_legacy(
    make_gguf: Callable[..., Path], tmp_path: Path, setting: bool | None, expected: bool
) -> None:
    """A .gguf inside a model folder tokenizes as that folder's safetensors path does; an
    explicit ``legacy`` still wins."""
    file = tmp_path / "model.gguf"
    shutil.copyfile(make_gguf("q8_0"), file)
    config = {} if setting is None else {"legacy": setting}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_gguf_model(file, "cpu").tokenizer.legacy is expected
    assert load_gguf_model(file, "cpu", legacy=not expected).tokenizer.legacy is (not expected)


# -- through tipo.models -----------------------------------------------------------------------


def test_models_resolve_load_and_cache_a_gguf_file(make_gguf: Callable[..., Path], input_ids: Any) -> None:
    file = make_gguf("f16")
    assert resolve_model(str(file)) == file
    loaded = load_model(file, "cpu")
    assert loaded.name == file.name and loaded.path == file
    cache = ModelCache()
    first = cache.get(file, "cpu")
    assert cache.get(file, "cpu") is first and len(cache) == 1
    torch.testing.assert_close(first.model(input_ids).logits, loaded.model(input_ids).logits, rtol=0, atol=0)


def test_every_registry_entry_names_its_gguf_file() -> None:
    """Format sheet, "Models": each TIPO repo ships one F16 GGUF."""
    assert all(info.gguf_file.endswith(".gguf") and "16" in info.gguf_file for info in MODELS)


# -- refusals ----------------------------------------------------------------------------------


def write_gguf(path: Path, architecture: str, **strings: str) -> Path:
    writer = gguf.GGUFWriter(str(path), architecture)
    for key, value in strings.items():
        writer.add_string(key.replace("__", "."), value)
    writer.add_tensor("token_embd.weight", gguf.quants.quantize(torch.zeros(4, 32).numpy(), gguf.GGMLQuantizationType.F32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("architecture", ["dots1", "qwen2"])
def test_non_llama_gguf_is_refused_by_name(tmp_path: Path, architecture: str) -> None:
    """TIPO v2's GGUF is ``dots1`` (docs/MODELS.md): refused before any weight is read."""
    file = write_gguf(tmp_path / "v2.gguf", architecture)
    for call in (lambda: resolve_model(str(file)), lambda: load_model(file, "cpu")):
        with pytest.raises(UnsupportedModelError, match=f"general.architecture is '{architecture}'.*LLaMA"):
            call()


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.9999], ids=["in-vocabulary", "in-weights", "last-bytes"])
def test_truncated_file_is_reported_as_damaged(make_gguf: Callable[..., Path], tmp_path: Path, keep: float) -> None:
    source = make_gguf("q8_0").read_bytes()
    file = tmp_path / "cut.gguf"
    file.write_bytes(source[: int(len(source) * keep)] if keep < 0.9999 else source[:-7])
    with pytest.raises(ModelNotFoundError, match="damaged or incompletely downloaded: download it again") as info:
        load_model(file, "cpu")
    assert isinstance(info.value, FileNotFoundError)


def test_a_header_cut_short_is_damaged_too(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    file = tmp_path / "cut.gguf"
    file.write_bytes(make_gguf("f16").read_bytes()[:100])
    with pytest.raises(ModelNotFoundError, match="damaged"):
        resolve_model(str(file))


def test_file_that_is_not_gguf_says_so(tmp_path: Path) -> None:
    file = tmp_path / "model.gguf"
    file.write_bytes(b"<html>Not Found</html>")
    with pytest.raises(ModelNotFoundError, match="is not a GGUF file"):
        load_model(file, "cpu")


def test_missing_tensor_is_named(tiny_model_dir: Path, tmp_path: Path, make_gguf: Callable[..., Path]) -> None:
    folder = model_folder(tiny_model_dir, tmp_path / "partial")
    rewrite_weights(folder, lambda tensors: tensors.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ModelNotFoundError, match=r"1 tensors are missing, e\.g\. blk\.1\.ffn_up\.weight"):
        load_gguf_model(make_gguf("f16", folder), "cpu")


def test_mixture_of_experts_llama_metadata_is_refused() -> None:
    metadata = {"general.architecture": "llama", "llama.expert_count": 8, "llama.attention.head_count": 4,
                "llama.embedding_length": 64}  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="8 experts"):
        gguf_config(metadata, True, Path("x.gguf"))


def test_missing_gguf_package_names_the_pip_command(
    make_gguf: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    file = make_gguf("f16")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    with pytest.raises(UnsupportedModelError, match='pip install "gguf>=0.10"'):
        load_model(file, "cpu")
    assert resolve_model(str(file)) == file  # the header check needs no gguf package


def test_tokenizer_without_tipo_tokens_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "plain-llama"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "added_tokens.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items() if int(k) < 3}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    file = load_tool("make_tiny_gguf").make_gguf(folder, tmp_path / "plain.gguf", "f16")
    with pytest.raises(TokenizerMismatchError, match="missing <\\|empty\\|>"):
        load_gguf_model(file, "cpu")


# -- the checkpoint reader other engines use ----------------------------------------------------


def test_checkpoint_serves_every_weight_by_transformers_name(make_gguf: Callable[..., Path], tiny_llama: Any) -> None:
    checkpoint = open_gguf(make_gguf("f32"))
    expected = {k: v for k, v in tiny_llama.state_dict().items() if "rotary" not in k}
    assert sorted(checkpoint.names()) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(checkpoint.tensor(name), tensor), name
    assert checkpoint.stored_dtype == "float32" and checkpoint.tokenizer.vocab_size == 32013
    with pytest.raises(UnsupportedModelError, match="no tensor 'lm_head.bias'"):
        checkpoint.tensor("lm_head.bias")


def test_fast_engine_weights_build_from_a_gguf_checkpoint(make_gguf: Callable[..., Path], tiny_llama: Any) -> None:
    """``LlamaWeights.build`` reads weights by name; a GGUF checkpoint gives the same fused
    weights as the transformers model it was converted from."""
    llama = pytest.importorskip("tipo.engine.llama")
    checkpoint = open_gguf(make_gguf("f32"))
    shape = llama.LlamaShape.from_config(dict(checkpoint.config))
    built = llama.LlamaWeights.build(shape, checkpoint.tensor, torch.device("cpu"), torch.float32)
    reference = llama.LlamaWeights.from_model(tiny_llama)
    assert torch.equal(built.embed, reference.embed) and torch.equal(built.lm_head, reference.lm_head)
    for mine, theirs in zip(built.layers, reference.layers):
        assert all(torch.equal(getattr(mine, f), getattr(theirs, f)) for f in ("qkv", "o", "gate_up", "down"))


def test_corrupt_length_in_the_header_is_damaged_not_a_memory_error(tmp_path: Path) -> None:
    import struct

    file = tmp_path / "bad.gguf"
    # magic, version 3, 0 tensors, 1 key whose length claims 2**60 bytes
    file.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**60) + b"general.architecture")
    with pytest.raises(ModelNotFoundError, match="more than the file has left.*damaged"):
        resolve_model(str(file))


def test_big_endian_file_is_refused_as_unsupported(tmp_path: Path) -> None:
    import struct

    file = tmp_path / "be.gguf"
    file.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    with pytest.raises(UnsupportedModelError, match="big-endian GGUF is not supported"):
        resolve_model(str(file))


@pytest.mark.parametrize("type_name", ["Q6_K", "Q4_K", "Q5_0", "IQ4_NL"])
def test_our_tensor_table_reads_what_ggufs_reader_reads(tmp_path: Path, type_name: str) -> None:
    """Types gguf-py cannot write (K-quants, IQ): random blocks of two 256-column rows, read
    through our parser and through ``gguf.GGUFReader``, dequantise to the same numbers."""
    import numpy as np

    kind = gguf.GGMLQuantizationType[type_name]
    block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    raw = np.random.default_rng(0).integers(0, 256, (2, 256 // block * block_bytes), dtype=np.uint8)
    raw[:, :2] = 0  # keep some f16 scales finite
    file = tmp_path / "one.gguf"
    writer = gguf.GGUFWriter(str(file), "llama")
    writer.add_tensor("t", raw, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _, table = read_gguf(file)
    assert table["t"].shape == (2, 256)
    ours = dequantize_tensor(gguf, file, "t", table["t"], np.memmap(file, dtype=np.uint8, mode="r"))
    (theirs,) = [gguf.quants.dequantize(t.data, t.tensor_type) for t in gguf.GGUFReader(str(file)).tensors]
    np.testing.assert_array_equal(ours, theirs.reshape(2, 256))
