"""The added tokens a TIPO tokenizer knows, resolved as transformers 4.46.1 resolves them.

TIPO's 13 task and length tokens (``<|long|>``, ``<|tag_to_long|>`` …) are added tokens, not
SentencePiece pieces, and the prompt text is cut on them before SentencePiece sees it, so their
ids and flags decide the model's input (:mod:`tipo.tokenizer`). Reproduced from 4.46.1
``tokenization_utils_base._from_pretrained`` and ``PreTrainedTokenizer.__init__``: added
tokens come from ``tokenizer_config.json``'s ``added_tokens_decoder``; without it, from
``special_tokens_map.json``, ``added_tokens.json`` and ``tokenizer.json`` (the older files).
Every added token is an AddedToken in 4.46.1; 4.30.2 stripped both sides of special tokens
given as plain strings: not reproduced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tipo.errors import TokenizerMismatchError

#: TIPO's added tokens, ids 32000.. in this order (format sheet, "Models").
TIPO_ADDED_TOKENS: tuple[str, ...] = (
    "<|empty|>", "<|very_short|>", "<|short|>", "<|long|>", "<|very_long|>",
    "<|tag_to_long|>", "<|long_to_tag|>", "<|short_to_tag|>", "<|short_to_long|>",
    "<|tag_to_short_to_long|>", "<|short_to_tag_to_long|>", "<|short_to_long_to_tag|>",
    "<|gen_meta|>",
)  # fmt: skip
TIPO_FIRST_ADDED_ID = 32000

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class AddedToken:
    """An added token and the flags that change how text around it is cut."""

    content: str
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> AddedToken:
        flags = {key: bool(value.get(key, False)) for key in ("lstrip", "rstrip", "single_word")}
        return cls(str(value["content"]), **flags)

    def __str__(self) -> str:
        return self.content


@dataclass(frozen=True)
class Vocab:
    """The added-token facts a loaded 4.46.1 ``LlamaTokenizer`` ends up with."""

    by_id: Mapping[int, AddedToken]
    ids: Mapping[str, int]
    special: tuple[str | AddedToken, ...]  # all_special_tokens_extended, in its order
    additional: tuple[str, ...]  # additional_special_tokens


def as_token(value: Any) -> str | AddedToken:
    """A special-token value as transformers holds it: a plain string or an AddedToken."""
    if isinstance(value, AddedToken):
        return value
    return AddedToken.from_json(value) if isinstance(value, Mapping) else str(value)


def split_on(text: str, tokens: frozenset[str], first_chars: frozenset[str], longest: int) -> list[str]:
    """Cut ``text`` around occurrences of ``tokens``: leftmost match first, longest at a start.

    This equals transformers' ``Trie.split`` whenever no token's first character occurs
    later inside a token (true of LLaMA's and TIPO's ``<...>`` tokens; checked at load).
    """
    parts: list[str] = []
    start = pos = 0
    while pos < len(text):
        if text[pos] in first_chars:
            for end in range(min(len(text), pos + longest), pos, -1):
                if text[pos:end] in tokens:
                    if start < pos:
                        parts.append(text[start:pos])
                    parts.append(text[pos:end])
                    start = pos = end
                    break
            else:
                pos += 1
        else:
            pos += 1
    if start < len(text):
        parts.append(text[start:])
    return parts


def read_json(path: Path) -> Any:
    """The file's JSON, None when it does not exist (every tokenizer file but the model is optional)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise TokenizerMismatchError(f"cannot read {path}: {error}") from error


def is_piece(sp: Any, text: str) -> bool:
    """``text`` is one piece of the SentencePiece model (not mapped to ``<unk>``)."""
    return bool(sp.id_to_piece(sp.piece_to_id(text)) == text)


def check_tipo_tokens(ids: Mapping[str, int], source: Path) -> None:
    """Refuse a tokenizer without TIPO's 13 added tokens at their ids: any other vocabulary
    would feed the model ids it was never trained on."""
    missing = [t for t in TIPO_ADDED_TOKENS if t not in ids]
    misnumbered = [
        f"{t} (id {ids[t]}, expected {TIPO_FIRST_ADDED_ID + i})"
        for i, t in enumerate(TIPO_ADDED_TOKENS)
        if t in ids and ids[t] != TIPO_FIRST_ADDED_ID + i
    ]
    if missing or misnumbered:
        problems = (["missing " + ", ".join(missing)] if missing else []) + (
            ["misnumbered " + ", ".join(misnumbered)] if misnumbered else []
        )
        raise TokenizerMismatchError(
            f"the tokenizer in {source} is not TIPO's: {'; '.join(problems)}. TIPO models need "
            f"its 13 added tokens at ids {TIPO_FIRST_ADDED_ID}..{TIPO_FIRST_ADDED_ID + 12}; "
            "use the tokenizer files that came with the model"
        )


def resolve_vocab(folder: Path, config: dict[str, Any], sp: Any) -> tuple[Vocab, dict[str, Any]]:
    """Follow 4.46.1 ``_from_pretrained`` and ``PreTrainedTokenizer.__init__`` for added tokens."""
    kwargs = dict(config)
    decoder: dict[int, AddedToken] = {}
    if "added_tokens_decoder" in kwargs:
        for idx, value in kwargs["added_tokens_decoder"].items():
            decoder[int(idx)] = AddedToken.from_json(value)
        by_content = {token.content: token for token in decoder.values()}
    else:  # older repos: the special-token map, added_tokens.json, tokenizer.json
        for key, value in (read_json(folder / "special_tokens_map.json") or {}).items():
            if key == "additional_special_tokens" and isinstance(value, list):
                merged = list(kwargs.pop(key, None) or [])
                seen = {str(as_token(t)) for t in merged}
                merged += [as_token(t) for t in value if str(as_token(t)) not in seen]
                value = merged
            kwargs[key] = value
        for content, idx in (read_json(folder / "added_tokens.json") or {}).items():
            decoder[int(idx)] = AddedToken(content)
        fast = read_json(folder / "tokenizer.json") or {}
        from_fast = {int(v["id"]): AddedToken.from_json(v) for v in fast.get("added_tokens", [])}
        decoder.update(from_fast)
        by_content = {token.content: token for token in from_fast.values()}
    for key in SPECIAL_KEYS:  # a special token named in the config takes the added token's flags
        if kwargs.get(key) is not None:
            token = as_token(kwargs[key])
            kwargs[key] = by_content.get(str(token), token)
    for key, default in _LLAMA_DEFAULTS.items():  # LlamaTokenizer.__init__ makes these AddedTokens
        kwargs.setdefault(key, default)
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if isinstance(kwargs.get(key), str):
            kwargs[key] = AddedToken(kwargs[key])
    return _register_special(decoder, kwargs, sp), kwargs


def _register_special(decoder: dict[int, AddedToken], kwargs: dict[str, Any], sp: Any) -> Vocab:
    """Give every special token an id: its added id, else its SentencePiece id, else a new one."""
    specials: list[str | AddedToken] = []
    seen: set[str] = set()
    values = [kwargs.get(key) for key in SPECIAL_KEYS] + list(kwargs.get("additional_special_tokens") or [])
    for value in values:
        token = as_token(value) if value else None
        if token and str(token) not in seen:
            seen.add(str(token))
            specials.append(token)
    ids = {token.content: idx for idx, token in decoder.items()}
    next_id = sp.get_piece_size() + sum(1 for c in ids if not is_piece(sp, c))
    for token in specials:
        if isinstance(token, str):
            if token in ids:
                continue
            token = AddedToken(token)
        # else: an AddedToken replaces the entry even when its content is there (4.46.1 re-adds it)
        idx = ids.get(token.content)
        if idx is None:
            idx = sp.piece_to_id(token.content) if is_piece(sp, token.content) else None
        if idx is None:
            idx, next_id = next_id, next_id + 1
        decoder[idx] = token
        ids[token.content] = idx
    additional = tuple(str(as_token(t)) for t in (kwargs.get("additional_special_tokens") or []))
    return Vocab(MappingProxyType(dict(decoder)), MappingProxyType(ids), tuple(specials), additional)
