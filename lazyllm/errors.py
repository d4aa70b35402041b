"""The errors lazyllm raises, and where its warnings point. Each error is a `LazyLLMError` (so `except
lazyllm.LazyLLMError` catches them all) and keeps the builtin base that says what kind of mistake it is (`ValueError`,
`TypeError`, `FileNotFoundError`, ...). Every message says what to change; every warning points at the user's line.

All errors are exported by `lazyllm`; the modules that raise them re-export them too (`from lazyllm.config import
ConfigError`, `from lazyllm.models import ModelNotFoundError` work).
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
import transformers


class LazyLLMError(Exception):
    """The base of every error lazyllm raises."""


class ConfigError(LazyLLMError, ValueError):
    """A value given to lazyllm that cannot work: a `LazyConfig` field or file, an argument of `calibrate`, a prompt,
    the length asked of `long_document_question`; the message says what to change."""


class NotPatchedError(LazyLLMError, ValueError):
    """What needs a patched model (`lazyllm.stats`) was given one that is not: call `lazyllm.patch(model)` first."""


class UnsupportedModelError(LazyLLMError, TypeError):
    """The model (architecture, cache layout or attention backend) cannot be patched; the message says why."""


class UnsupportedCacheError(LazyLLMError, TypeError):
    """The cache given to a patched model is not one lazyllm can prune; the message says what to use."""


class UnsupportedCallError(LazyLLMError, ValueError):
    """A call a patched model cannot serve correctly; raised before any work, the message says what to do."""


class UnsupportedGenerationError(LazyLLMError, ValueError):
    """A `generate()` option a patched model cannot serve; raised before any work."""


class ModelNotFoundError(LazyLLMError, FileNotFoundError):
    """No model can be loaded from what was asked for (`lazyllm.models.load_model`); the message says what is
    accepted or what to install."""


class DataNotFoundError(LazyLLMError, RuntimeError):
    """The RULER data that `lazyllm.documents` reads is not installed; the message says how to install it."""


_LIBRARIES = tuple(os.path.dirname(path) + os.sep for path in (__file__, torch.__file__, transformers.__file__))


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn at the first frame outside lazyllm, torch and Transformers: the user's line that called `generate()` or
    the model, however deep in those libraries the reason was found."""
    frame, level = sys._getframe(), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_LIBRARIES):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
