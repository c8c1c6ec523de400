"""Every error the core raises.

Each class derives from :class:`TipoError` and from the builtin a caller would catch
anyway (a missing model folder is also a ``FileNotFoundError``), so the WebUI glue can
keep one broad guard while scripts and tests catch precisely.
"""

from __future__ import annotations


class TipoError(Exception):
    """Base class of every error raised by :mod:`tipo`."""


class InvalidArgument(TipoError, ValueError):
    """A request setting is out of range or of the wrong type; the message names it."""


class BanPatternError(InvalidArgument):
    """A ban-list entry cannot be compiled; the message quotes the pattern."""


class ModelNotFoundError(TipoError, FileNotFoundError):
    """The model id is not in the registry and is no folder holding a TIPO model."""


class HubUnreachableError(TipoError, ConnectionError):
    """The Hugging Face Hub could not be reached and the model is not in the local cache."""


class TokenizerMismatchError(TipoError, ValueError):
    """The tokenizer lacks TIPO's 13 added tokens or disagrees with the model's vocabulary."""


class TagDatabaseError(TipoError, RuntimeError):
    """The packaged tag database is missing or damaged."""


class GenerationError(TipoError, RuntimeError):
    """The engine failed while generating; the original prompt must be kept."""


class UnsupportedModelError(ModelNotFoundError):
    """The model exists but is not a LLaMA TIPO model this package can run (e.g. the v2 ids)."""


class Interrupted(TipoError):
    """The caller asked to stop (the WebUI's Interrupt or Skip) between decode steps.

    Not a failure: the unfinished rows keep their original prompts, strict mode or not."""
