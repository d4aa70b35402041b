"""The errors lazyllm raises. Each is a `LazyLLMError` (so `except lazyllm.LazyLLMError` catches them all) and keeps
the builtin base that says what kind of mistake it is (`ValueError`, `TypeError`, `FileNotFoundError`). Every message
says what to change.

The modules that raise them re-export them (`from lazyllm.config import ConfigError` works); `ModelNotFoundError`
(a `FileNotFoundError`) is defined with the model loaders, in `lazyllm.models`.
"""

from __future__ import annotations


class LazyLLMError(Exception):
    """The base of every error lazyllm raises."""


class ConfigError(LazyLLMError, ValueError):
    """A `LazyConfig` value that cannot work; the message says what to change."""


class UnsupportedModelError(LazyLLMError, TypeError):
    """The model (architecture, cache layout or attention backend) cannot be patched; the message says why."""


class UnsupportedCacheError(LazyLLMError, TypeError):
    """The cache given to a patched model is not one lazyllm can prune; the message says what to use."""


class UnsupportedCallError(LazyLLMError, ValueError):
    """A call a patched model cannot serve correctly; raised before any work, the message says what to do."""


class UnsupportedGenerationError(LazyLLMError, ValueError):
    """A `generate()` option a patched model cannot serve; raised before any work."""
