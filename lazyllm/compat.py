"""The few names that differ between the Transformers releases lazyllm supports.

Transformers 5 loads GGUF files quantized unless asked to dequantize (`GgufConfig`, absent from 4.x, which always
dequantizes). Transformers 5.24 renamed the KV cache argument of model, decoder-layer and attention forwards from
`past_key_values` to `cache` (the old name still works there, with a deprecation warning), and the `past_key_values`
field of the output classes to `cache`; 5.25 renamed `generate()`'s argument too. lazyllm reads both names and passes
the one the installed release declares.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from lazyllm.errors import warn_at_caller

CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaDecoderLayer.forward).parameters else "past_key_values"
# Transformers 5.25 renamed generate()'s `past_key_values` to `cache` too (the old name warns, removal in 6.0).
GENERATE_CACHE_KWARG = "cache" if Version(transformers.__version__) >= Version("5.25.0") else "past_key_values"
_OUTPUT_CACHE_FIELD = (
    "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else ("past_key_values")
)


def cache_argument(kwargs: dict[str, Any]) -> Cache | None:
    """Pop the cache a caller passed under either name (None when it passed none)."""
    cache: Cache | None = kwargs.pop("cache", None)
    legacy: Cache | None = kwargs.pop("past_key_values", None)
    return cache if cache is not None else legacy


def renamed_generate_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`generate()`'s keyword arguments with the KV cache under the installed release's name. A deprecated name
    warns as Transformers would, at the caller of the patched `generate`, not in lazyllm."""
    if GENERATE_CACHE_KWARG == "past_key_values" or "past_key_values" not in kwargs:
        return kwargs
    warn_at_caller(
        "`past_key_values` is deprecated for generate() since Transformers 5.25: use `cache` instead.", FutureWarning
    )
    renamed = {key: value for key, value in kwargs.items() if key != "past_key_values"}
    renamed.setdefault(GENERATE_CACHE_KWARG, kwargs["past_key_values"])
    return renamed


def model_output(last_hidden_state: torch.Tensor, cache: Cache | None) -> BaseModelOutputWithPast:
    """The base model's output, its cache under the installed release's field name."""
    cache_field: dict[str, Any] = {_OUTPUT_CACHE_FIELD: cache}
    return BaseModelOutputWithPast(last_hidden_state=last_hidden_state, **cache_field)


def gguf_dequantize_kwargs() -> dict[str, Any]:
    """`from_pretrained` arguments that load a GGUF file as plain float weights."""
    try:
        from transformers import GgufConfig
    except ImportError:  # 4.x dequantizes GGUF weights on load
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}
