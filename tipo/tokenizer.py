"""TIPO's tokenizer: ids from the model's own tokenizer files, whatever transformers is installed.

Why the ids follow transformers 4.46.1's slow ``LlamaTokenizer``
    TIPO models were trained in the transformers-4.4x era with that class (the reference loads
    it on its transformers path), it is the version Forge pins, and it honours the repo's
    ``legacy`` setting. The same files give other ids elsewhere (measured, fixture README):
    transformers 4.30.2 (A1111's pin) strips the whitespace around every added token and loses
    the newline after ``<|tag_to_long|>``; llama.cpp adds a dummy prefix after each added token
    whatever ``legacy`` says. Text near the added tokens is exactly where TIPO's prompts differ,
    so ids that depended on the installed version would change the model's input per WebUI.

Why no protobuf
    4.46.1 builds the ``legacy: false`` model through ``sentencepiece_model_pb2``, which needs
    protobuf >= 5.26 with sentencepiece 0.2; both WebUIs pin protobuf 3.20.0
    (``shared/reference/webui-facts.md``). We make the same one-field change on the wire bytes
    (:mod:`tipo._spm_proto`) and load them with a plain ``SentencePieceProcessor``.

What is reproduced (4.46.1 ``tokenization_llama.py`` + ``tokenization_utils.py``):
    * added tokens as :mod:`tipo.added_tokens` resolves them;
    * the text is cut on added tokens, longest match first; a token's ``lstrip``/``rstrip``/
      ``single_word`` act on its neighbours;
    * ``legacy`` (absent means true): each piece between added tokens is encoded by
      SentencePiece with its dummy prefix;
    * ``legacy: false``: ``"▁"`` in the text becomes a space, ``"▁"`` is put before the text
      (``add_prefix_space``), SentencePiece runs without dummy prefix, a piece starting with a
      space is encoded behind ``unk_token`` whose pieces are then dropped, and a lone leading
      ``"▁"`` before a special token is dropped;
    * ``decode`` is ``decode(ids, skip_special_tokens=...)`` with its defaults: see there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tipo._spm_proto import WireFormatError, disable_add_dummy_prefix
from tipo.added_tokens import (
    SPECIAL_KEYS, Vocab, as_token, check_tipo_tokens, is_piece, read_json, resolve_vocab, split_on,
)  # fmt: skip
from tipo.errors import ModelNotFoundError, TokenizerMismatchError

logger = logging.getLogger(__name__)

SPIECE_UNDERLINE = "\u2581"


def load_processor(model_proto: bytes, legacy: bool, problem: str) -> Any:
    """A SentencePiece processor for a serialized ``ModelProto``, its dummy prefix turned off
    unless ``legacy`` (as 4.46.1 ``get_spm_processor`` does); ``problem`` opens the message
    when the bytes are no SentencePiece model."""
    import sentencepiece

    try:
        if not legacy:
            model_proto = disable_add_dummy_prefix(model_proto)
        processor = sentencepiece.SentencePieceProcessor()
        processor.LoadFromSerializedProto(model_proto)
    except (WireFormatError, RuntimeError, OSError) as error:
        raise TokenizerMismatchError(f"{problem}: {error}") from error
    return processor


def _load_sentencepiece(path: Path, legacy: bool) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise ModelNotFoundError(
            f"no tokenizer.model in {path.parent}: a TIPO model folder holds tokenizer.model next to "
            "config.json; download the model again or point at the folder that has it"
        ) from error
    return load_processor(data, legacy, f"{path} is not a SentencePiece model")


def _config_flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key)
    return default if value is None else bool(value)


class TipoTokenizer:
    """Text ⇄ ids for a TIPO model, equal to transformers 4.46.1's slow ``LlamaTokenizer``.

    Build it with :meth:`from_dir`. It is immutable and safe to share between threads (the
    SentencePiece processor is only read).
    """

    __slots__ = (
        "folder", "legacy", "add_bos_token", "add_eos_token", "add_prefix_space",
        "clean_up_tokenization_spaces", "added_tokens", "bos_id", "eos_id", "pad_id", "unk_id",
        "vocab_size", "_sp", "_piece_count", "_unk_token", "_unk_length", "_added_by_id",
        "_special", "_special_ids", "_split_args", "_joined_added",
    )  # fmt: skip

    def __init__(self, folder: Path, sp: Any, vocab: Vocab, kwargs: Mapping[str, Any]) -> None:
        set_ = object.__setattr__
        legacy = _config_flag(kwargs, "legacy", True)  # 4.46.1: None means legacy
        set_(self, "folder", folder)
        set_(self, "legacy", legacy)
        set_(self, "add_bos_token", _config_flag(kwargs, "add_bos_token", True))
        set_(self, "add_eos_token", _config_flag(kwargs, "add_eos_token", False))
        set_(self, "add_prefix_space", _config_flag(kwargs, "add_prefix_space", True))
        set_(self, "clean_up_tokenization_spaces", _config_flag(kwargs, "clean_up_tokenization_spaces", False))
        set_(self, "_sp", sp)
        set_(self, "_piece_count", sp.get_piece_size())
        set_(self, "added_tokens", vocab.ids)
        set_(self, "_added_by_id", vocab.by_id)
        special = frozenset(str(t) for t in vocab.special)
        set_(self, "_special", special)
        set_(self, "_special_ids", frozenset(self._piece_id(t) for t in special))
        ids = {key: self._piece_id(str(as_token(kwargs[key]))) if kwargs.get(key) else None for key in SPECIAL_KEYS}
        set_(self, "bos_id", ids["bos_token"])
        set_(self, "eos_id", ids["eos_token"])
        set_(self, "pad_id", ids["pad_token"])
        set_(self, "unk_id", ids["unk_token"])
        unk = str(as_token(kwargs["unk_token"])) if kwargs.get("unk_token") else ""
        set_(self, "_unk_token", unk)
        set_(self, "_unk_length", len(sp.encode(unk, out_type=str)))
        contents = frozenset(c for c in vocab.ids if c)
        first = frozenset(c[0] for c in contents)
        set_(self, "_split_args", (contents, first, max(map(len, contents), default=0)))
        if any(ch in first for c in contents for ch in c[1:]):
            logger.warning(
                "%s: an added token contains another one's first character; text where such tokens "
                "overlap may be cut differently from transformers 4.46.1", folder
            )
        # Decoding joins these as separate strings (4.46.1 ``_decode``'s legacy_added_tokens).
        joined = (contents - special) | {t for t in vocab.additional if self._piece_id(t) >= self._piece_count}
        set_(self, "_joined_added", joined)
        set_(self, "vocab_size", self._piece_count + sum(1 for c in contents if not is_piece(sp, c)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TipoTokenizer is immutable; cannot set {name!r}")

    def __repr__(self) -> str:
        return f"TipoTokenizer({str(self.folder)!r}, legacy={self.legacy}, vocab_size={self.vocab_size})"

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> TipoTokenizer:
        """Load the tokenizer files of a TIPO model folder and check TIPO's 13 added tokens."""
        folder = Path(path)
        if not folder.is_dir():
            raise ModelNotFoundError(f"tokenizer folder {folder} does not exist or is not a folder")
        config = read_json(folder / "tokenizer_config.json") or {}
        if not isinstance(config, dict):
            raise TokenizerMismatchError(f"{folder / 'tokenizer_config.json'} does not hold a JSON object")
        sp = _load_sentencepiece(folder / "tokenizer.model", _config_flag(config, "legacy", True))
        return cls.from_processor(folder, sp, config)

    @classmethod
    def from_processor(cls, source: Path, sp: Any, config: dict[str, Any]) -> TipoTokenizer:
        """The tokenizer of a loaded processor and a ``tokenizer_config.json`` dict (a folder's,
        or one rebuilt from GGUF metadata); checks TIPO's 13 added tokens."""
        try:
            vocab, kwargs = resolve_vocab(source, config, sp)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, TokenizerMismatchError):
                raise
            raise TokenizerMismatchError(f"malformed added-token entries in {source}: {error!r}") from error
        tokenizer = cls(source, sp, vocab, kwargs)
        check_tipo_tokens(tokenizer.added_tokens, source)
        logger.debug("loaded %r", tokenizer)
        return tokenizer

    def check_vocab(self, model_vocab_size: int) -> None:
        """Raise when the model has fewer embedding rows than the ids this tokenizer can give."""
        needed = max(self._piece_count - 1, *self._added_by_id, 0) + 1
        if model_vocab_size < needed:
            raise TokenizerMismatchError(
                f"the model has {model_vocab_size} embedding rows but the tokenizer in {self.folder} "
                f"uses ids up to {needed - 1} ({needed} rows needed); model and tokenizer do not belong together"
            )

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Ids of ``text``: 4.46.1 ``LlamaTokenizer.encode(text)`` (BOS per ``add_bos_token``,
        EOS per ``add_eos_token``). ``add_bos`` overrides ``add_bos_token``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        ids = [self._piece_id(piece) for piece in self._tokenize(text)]
        if self.add_bos_token if add_bos is None else add_bos:
            ids.insert(0, self._require(self.bos_id, "bos_token"))
        if self.add_eos_token:
            ids.append(self._require(self.eos_id, "eos_token"))
        return ids

    def _require(self, token_id: int | None, name: str) -> int:
        if token_id is None:
            raise TokenizerMismatchError(f"the tokenizer in {self.folder} has no {name}")
        return token_id

    def _piece_id(self, piece: str) -> int:
        added = self.added_tokens.get(piece)
        return added if added is not None else int(self._sp.piece_to_id(piece))

    def _tokenize(self, text: str) -> list[str]:
        if self.legacy or not text:
            return self._split_and_encode(text)
        text = text.replace(SPIECE_UNDERLINE, " ")
        if self.add_prefix_space:
            text = SPIECE_UNDERLINE + text
        pieces = self._split_and_encode(text)
        if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self._special:
            del pieces[0]
        return pieces

    def _split_and_encode(self, text: str) -> list[str]:
        parts = split_on(text, *self._split_args)
        for i, part in enumerate(parts):
            if part not in self.added_tokens:
                continue
            token = self._added_by_id[self.added_tokens[part]]
            left = parts[i - 1] if i > 0 else None
            right = parts[i + 1] if i < len(parts) - 1 else None
            if token.rstrip and right:
                parts[i + 1] = right.lstrip()
            if token.lstrip and left:
                parts[i - 1] = left.rstrip()
            if token.single_word and left and left[-1] != " ":
                parts[i - 1] += part
                parts[i] = ""
            elif token.single_word and right and right[0] != " ":
                parts[i + 1] = part + parts[i + 1]
                parts[i] = ""
        pieces: list[str] = []
        for part in parts:
            if part in self.added_tokens:
                pieces.append(part)
            elif part:
                pieces.extend(self._encode_plain(part))
        return pieces

    def _encode_plain(self, text: str) -> list[str]:
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return list(self._sp.encode(text, out_type=str))
        # Without dummy prefix SentencePiece drops a leading "▁"; hide it behind unk_token.
        pieces = self._sp.encode(self._unk_token + text, out_type=str)
        return list(pieces[self._unk_length :] if len(pieces) >= self._unk_length else pieces)

    # -- decoding ---------------------------------------------------------------------------

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``, equal to 4.46.1 ``decode(ids, skip_special_tokens=skip_special)``.

        With ``skip_special`` every special token (BOS, EOS, pad, unk and TIPO's 13) is dropped
        and the other pieces are joined by SentencePiece; the spaces the text had around a
        dropped token stay (``"target: <|long|> <|tag_to_long|>\ntag"`` → ``"target:  \ntag"``).
        The first piece loses one leading ``"▁"`` (``add_prefix_space``), so a continuation
        decoded alone loses the space that starts it: decode ``prompt_ids + new_ids`` and cut
        off ``decode(prompt_ids)``, which is always its prefix (tested). Plain text without
        ``"▁"`` or added-token strings round-trips exactly with ``legacy: false``; with
        ``legacy: true`` one leading space is lost. Kept added tokens outside SentencePiece's
        vocabulary (TIPO's, with ``skip_special=False``) are set apart by one space on each
        side, as in 4.46.1. Ids outside the vocabulary raise :class:`TokenizerMismatchError`.
        """
        tokens = []
        for token_id in ids:
            token_id = int(token_id)
            if skip_special and token_id in self._special_ids:
                continue
            if token_id in self._added_by_id:
                tokens.append(self._added_by_id[token_id].content)
            elif 0 <= token_id < self._piece_count:
                tokens.append(self._sp.id_to_piece(token_id))
            else:
                raise TokenizerMismatchError(
                    f"id {token_id} is outside the tokenizer's vocabulary ({self.vocab_size} tokens in {self.folder})"
                )
        texts: list[str] = []
        run: list[str] = []
        for token in tokens:
            if skip_special and token in self._special:
                continue
            if token in self._joined_added:
                if run and (joined := self._join_pieces(run)):
                    texts.append(joined)
                run = []
                texts.append(token)
            else:
                run.append(token)
        if run:
            texts.append(self._join_pieces(run))
        text = " ".join(texts)
        return _clean_up_spaces(text) if self.clean_up_tokenization_spaces else text

    def _join_pieces(self, tokens: list[str]) -> str:
        """4.46.1 ``LlamaTokenizer.convert_tokens_to_string``."""
        if tokens[0].startswith(SPIECE_UNDERLINE) and self.add_prefix_space:
            tokens = [tokens[0][1:], *tokens[1:]]
        out = ""
        run: list[str] = []
        prev_is_special = False
        for i, token in enumerate(tokens):
            if token in self._special:
                if not prev_is_special and i != 0 and self.legacy:
                    out += " "
                out += self._sp.decode(run) + token
                prev_is_special = True
                run = []
            else:
                if prev_is_special and i == 1 and self.add_prefix_space and not token.startswith(SPIECE_UNDERLINE):
                    out += " "
                run.append(token)
                prev_is_special = False
        return out + self._sp.decode(run)


def _clean_up_spaces(text: str) -> str:
    """``clean_up_tokenization`` of transformers, for configs that turn it on."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
        text = text.replace(before, after)
    return text
