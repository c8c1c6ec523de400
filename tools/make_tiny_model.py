"""Build a tiny random-weight TIPO-shaped model folder: ``make_tiny_model.py OUT_DIR [--seed N]``.

Real TIPO weights cannot be downloaded in tests or CI, so tests, the README demo and
benchmarks of the plumbing use this instead: a ``LlamaForCausalLM`` with TIPO's vocabulary
(32013), special ids (bos 1, eos 2, pad 2) and untied embeddings, but 2 layers of width 64,
laid out like a TIPO repo (config.json, generation_config.json, model.safetensors and the
tokenizer files, no tokenizer.json). Its text is noise; its shapes and files are real.

The weights are drawn here from one seeded ``torch.Generator`` rather than by transformers'
initialisers, so the same seed gives the same bytes under transformers 4.30, 4.46 and 5.x, and
the global RNG is left alone. Logits are scaled to a standard deviation of about 3 so that
sampling filters (top-k, top-p, min-p) have something to cut.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

VOCAB_SIZE = 32013
HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
MAX_POSITIONS = 2048
BOS_ID, EOS_ID, PAD_ID = 1, 2, 2

#: The tokenizer files a TIPO repo ships (format sheet, "Models"); it ships no tokenizer.json.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
FIXTURE_TOKENIZER = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tipo-tokenizer"


def tiny_config() -> dict[str, object]:
    """config.json in the shape of TIPO-200M's, scaled down."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }


def tiny_weights(seed: int) -> dict[str, object]:
    """LLaMA state dict (parameter names as transformers 4.30 to 5.x use them), float32."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    def norm_weight() -> torch.Tensor:
        return 1.0 + normal(HIDDEN, std=0.1)

    tensors = {"model.embed_tokens.weight": normal(VOCAB_SIZE, HIDDEN, std=1.0)}
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"{prefix}self_attn.{name}.weight"] = normal(HIDDEN, HIDDEN, std=HIDDEN**-0.5)
        tensors[f"{prefix}mlp.gate_proj.weight"] = normal(INTERMEDIATE, HIDDEN, std=HIDDEN**-0.5)
        tensors[f"{prefix}mlp.up_proj.weight"] = normal(INTERMEDIATE, HIDDEN, std=HIDDEN**-0.5)
        tensors[f"{prefix}mlp.down_proj.weight"] = normal(HIDDEN, INTERMEDIATE, std=INTERMEDIATE**-0.5)
        tensors[f"{prefix}input_layernorm.weight"] = norm_weight()
        tensors[f"{prefix}post_attention_layernorm.weight"] = norm_weight()
    tensors["model.norm.weight"] = norm_weight()
    # Normalised hidden states have ~unit entries: std 0.4 gives logits of std ~3.2.
    tensors["lm_head.weight"] = normal(VOCAB_SIZE, HIDDEN, std=0.4)
    return {name: tensor.contiguous() for name, tensor in tensors.items()}


def make_tiny_model(out_dir: str | Path, seed: int = 0, tokenizer_dir: str | Path | None = None) -> Path:
    """Write the tiny model folder to ``out_dir`` (created if missing) and return its path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    source = Path(tokenizer_dir) if tokenizer_dir is not None else FIXTURE_TOKENIZER
    missing = [name for name in TOKENIZER_FILES if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"tokenizer files {missing} not found in {source}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(tiny_config(), indent=2) + "\n", encoding="utf-8")
    generation = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    # transformers refuses safetensors files whose metadata lacks format "pt".
    save_file(tiny_weights(seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, out / name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--tokenizer-dir", type=Path, default=None, help="where the tokenizer files come from")
    args = parser.parse_args(argv)
    print(make_tiny_model(args.out_dir, seed=args.seed, tokenizer_dir=args.tokenizer_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
