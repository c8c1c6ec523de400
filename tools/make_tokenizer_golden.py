"""Write ``tests/fixtures/tokenizer-golden.json``: what transformers 4.46.1 makes of our texts.

``tipo.tokenizer`` must give the ids of transformers 4.46.1's slow ``LlamaTokenizer`` without
importing it; the tests compare against this file so that they run anywhere. Run it in an
environment with exactly transformers 4.46.1 and a protobuf new enough for sentencepiece's
``sentencepiece_model_pb2`` (>= 5.26 with sentencepiece 0.2)::

    python -m venv /work/venv-tf446
    /work/venv-tf446/bin/pip install torch==2.13.0 transformers==4.46.1 sentencepiece 'protobuf>=5.26'
    /work/venv-tf446/bin/python tools/make_tokenizer_golden.py \\
        --llama-cpp-inp PATH/ggml-vocab-llama-spm.gguf.inp \\
        --check-report ../shared/fixtures/tipo-tokenizer-check.json

Each variant is a tokenizer folder built from ``tests/fixtures/tipo-tokenizer``; its files are
stored in the output so the tests rebuild the same folder. ``--llama-cpp-inp`` (the ``.out``
next to it holds the ids) comes from the llama-cpp-python 0.3.36 sdist on PyPI, member
``vendor/llama.cpp/models/``: those are SentencePiece's own ids, stored as they are.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tipo-tokenizer"
OUT = ROOT / "tests" / "fixtures" / "tokenizer-golden.json"
SEPARATOR = "\n__ggml_vocab_test__\n"

TIPO_PROMPTS = [
    "quality: masterpiece\naspect_ratio: 1.0\ntarget: <|long|> <|tag_to_long|>\ntag: 1girl, solo\nlong:",
    "quality: masterpiece, best quality\naspect_ratio: 1.0\ntarget: <|long|>\ntag: 1girl, solo, scenery, long hair",
    "rating: general\ntarget: <|long|> <|tag_to_long|>\ntag: 1girl, solo, scenery, long hair\nlong:",
    "target: <|very_short|> <|short_to_tag_to_long|>\nshort: a girl in a garden\ntag: \nlong:",
    "target: <|short|> <|long_to_tag|>\nlong: A girl. <|empty|>\ntag:",
    "meta: highres, absurdres\nrating: sensitive\nartist: wlop\ncharacters: hatsune miku\ncopyrights: vocaloid\n"
    "quality: masterpiece\naspect_ratio: 0.8\ntarget: <|very_long|> <|short_to_long_to_tag|>\n"
    "short: a girl singing on a stage\nlong: The girl, with long twin tails, sings.\ntag:",
    "target: <|long|> <|tag_to_short_to_long|> <|gen_meta|>\ntag: 2girls, multiple girls\nshort:",
    "aspect_ratio: 1.2\ntarget: <|very_short|>\ntag: 1boy, male focus, score_9, source_anime",
    "target: <|short|> <|short_to_tag|>\nshort: Ein Mädchen im Garten, 庭の少女 🌸\ntag:",
]

TRICKY = [
    "", " ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "hello", " hello", "  hello", "hello ", "hello  ",
    "Hello\n", "a\nb", "a \n b", "▁", "▁▁", "▁hello", "hello▁world", " ▁ ", "x ▁ y",
    "<s>", "</s>", "<unk>", "<s>hello</s>", " <s> hello </s> ", "<s><s>", "a<s>b", "<pad>",
    "<|long|>", " <|long|>", "<|long|> ", " <|long|> ", "<|long|><|tag_to_long|>", "<|long|> <|tag_to_long|>",
    "<|long|>  <|tag_to_long|>", "<|long|>\n<|tag_to_long|>", "a<|long|>b", "a <|long|> b", "tag:<|long|>",
    "tag: <|long|>\n", "<|long|>\n", "\n<|long|>", "<|gen_meta|>", "<|empty|><|empty|><|empty|>",
    "<|lo", "<|long|", "<<|long|>>", "<|<|long|>|>", "<|long|>>", "<|tag_to_long|>s", "<|very_long|>▁x",
    "héllo wörld", "日本語のテキスト", "emoji 🦙🚀😶‍🌫️ ✅", "Ω≈ç√∫", "\u00a0nbsp", "zero\u200bwidth", "a\r\nb",
    "tab\there", "1girl, solo, long hair, 3.14159", "(masterpiece:1.2), [worst quality]",
    "  leading and trailing  ",
    "[[[]]] {{}} <> ||", "\\n literal", "'quote' \"dq\"", "!?.,;:", "0123456789", "x" * 200,
]

RANDOM_ALPHABET = [
    "<|long|>", "<|short|>", "<|tag_to_long|>", "<|empty|>", "<s>", "</s>", "<unk>", " ", "  ", "\n",
    "\t", "▁", "a", "tag", "1girl", ", ", "é", "🦙", "日本", "<", "|", ">", "<|", "|>", "x:", "long",
]


def _variants(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Tokenizer folders to compare: name -> {"tokenizer_config.json": ..., "copy": [files]}."""

    def edit(**changes: Any) -> dict[str, Any]:
        new = copy.deepcopy(config)
        for key, value in changes.items():
            if value is None:
                new.pop(key, None)
            else:
                new[key] = value
        return new

    old_style = edit(added_tokens_decoder=None, additional_special_tokens=None)
    flags = copy.deepcopy(config["added_tokens_decoder"])
    flags["32003"]["rstrip"] = True  # <|long|> eats the whitespace after it
    flags["32005"]["lstrip"] = True  # <|tag_to_long|> eats the whitespace before it
    flags["32000"]["single_word"] = True
    flags["2"]["lstrip"] = True
    all_files = ["tokenizer.model", "special_tokens_map.json", "added_tokens.json", "tokenizer.json"]
    no_fast = all_files[:3]
    return {
        "fixture": {"tokenizer_config.json": config, "copy": all_files},
        "legacy-absent": {"tokenizer_config.json": edit(legacy=None), "copy": no_fast},
        "older-files": {"tokenizer_config.json": old_style, "copy": no_fast},
        "older-files-legacy": {"tokenizer_config.json": {**old_style, "legacy": True}, "copy": no_fast},
        "strip-flags": {"tokenizer_config.json": edit(added_tokens_decoder=flags), "copy": no_fast},
        "strip-flags-legacy": {
            "tokenizer_config.json": edit(added_tokens_decoder=flags, legacy=None),
            "copy": no_fast,
        },
        "no-prefix-space": {
            "tokenizer_config.json": edit(add_prefix_space=False, clean_up_tokenization_spaces=True, add_eos_token=True),
            "copy": no_fast,
        },
    }


def _llama_cpp_cases(inp: Path) -> dict[str, Any]:
    out = inp.with_suffix(".out")
    texts = inp.read_text(encoding="utf-8").split(SEPARATOR)
    lines = out.read_text(encoding="utf-8").split("\n")
    if texts[-1] == "" and lines[-1] == "":  # both files end with a separator
        texts, lines = texts[:-1], lines[:-1]
    if len(texts) != len(lines):
        sys.exit(f"{inp}: {len(texts)} inputs but {out}: {len(lines)} lines")
    return {
        "source": "llama-cpp-python 0.3.36 sdist, vendor/llama.cpp/models/" + inp.name + " and .out",
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (inp, out)},
        "cases": [{"text": t, "ids": [int(x) for x in line.split()]} for t, line in zip(texts, lines)],
    }


def _check_report(path: Path) -> list[dict[str, Any]]:
    report = json.loads(path.read_text(encoding="utf-8"))
    return [{"text": p["prompt"], "hf": p["hf"], "spm_legacy": p["spm_legacy"]} for p in report["tipo_prompts"]]


def _build(folder: Path, variant: dict[str, Any]) -> None:
    folder.mkdir()
    for name in variant["copy"]:
        shutil.copy(FIXTURE / name, folder / name)
    text = json.dumps(variant["tokenizer_config.json"], indent=2, ensure_ascii=False)
    (folder / "tokenizer_config.json").write_text(text, encoding="utf-8")


def _record(tokenizer: Any, texts: list[str]) -> list[dict[str, Any]]:
    cases = []
    for text in texts:
        ids = tokenizer.encode(text)
        tail = ids[len(ids) // 2 :]
        cases.append({
            "text": text,
            "ids": ids,
            "decode_skip": tokenizer.decode(ids, skip_special_tokens=True),
            "decode_keep": tokenizer.decode(ids, skip_special_tokens=False),
            "tail_decode_skip": tokenizer.decode(tail, skip_special_tokens=True) if tail else "",
            "tail_decode_keep": tokenizer.decode(tail, skip_special_tokens=False) if tail else "",
        })  # fmt: skip
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-cpp-inp", type=Path, help="ggml-vocab-llama-spm.gguf.inp (its .out beside it)")
    parser.add_argument("--check-report", type=Path, help="shared/fixtures/tipo-tokenizer-check.json")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import google.protobuf
    import sentencepiece
    import tokenizers
    import transformers
    from transformers import LlamaTokenizer

    if transformers.__version__ != "4.46.1":
        sys.exit(f"needs transformers 4.46.1, found {transformers.__version__}")
    transformers.logging.set_verbosity_error()

    rng = random.Random(20241029)
    randoms = ["".join(rng.choice(RANDOM_ALPHABET) for _ in range(rng.randint(1, 10))) for _ in range(60)]
    reference = _llama_cpp_cases(args.llama_cpp_inp) if args.llama_cpp_inp else None
    full = TIPO_PROMPTS + TRICKY + randoms + [c["text"] for c in (reference or {"cases": []})["cases"]]
    short = TIPO_PROMPTS + TRICKY

    config = json.loads((FIXTURE / "tokenizer_config.json").read_text(encoding="utf-8"))
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, variant in _variants(config).items():
            folder = Path(tmp) / name
            _build(folder, variant)
            tokenizer = LlamaTokenizer.from_pretrained(folder)
            texts = full if name in ("fixture", "legacy-absent") else short
            variants[name] = {
                "files": {k: v for k, v in variant.items()},
                "legacy": tokenizer.legacy,
                "len": len(tokenizer),
                "bos_id": tokenizer.bos_token_id,
                "eos_id": tokenizer.eos_token_id,
                "pad_id": tokenizer.pad_token_id,
                "unk_id": tokenizer.unk_token_id,
                "added_tokens": tokenizer.get_added_vocab(),
                "cases": _record(tokenizer, texts),
            }
    golden = {
        "about": "made by tools/make_tokenizer_golden.py with LlamaTokenizer (slow) of transformers 4.46.1",
        "versions": {
            "python": sys.version.split()[0],
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "sentencepiece": sentencepiece.__version__,
            "protobuf": google.protobuf.__version__,
        },
        "tokenizer_model_sha256": hashlib.sha256((FIXTURE / "tokenizer.model").read_bytes()).hexdigest(),
        "variants": variants,
        "sentencepiece_reference": reference,
        "tipo_check_report": _check_report(args.check_report) if args.check_report else None,
    }
    args.out.write_text(_dump(golden) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v['cases'])} cases" for k, v in variants.items()))
    return 0


def _dump(value: Any, indent: str = "") -> str:
    """JSON with one line per id list, so the file stays small and diffs stay readable."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_dump(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return "[\n" + ",\n".join(inner + _dump(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)


if __name__ == "__main__":
    sys.exit(main())
