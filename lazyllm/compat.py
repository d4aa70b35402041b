"""The few names that differ between the Transformers releases lazyllm supports.

Transformers 5 loads GGUF files quantized unless asked to dequantize (`GgufConfig`, absent from 4.x, which always
dequantizes). Transformers 5.24 renamed the KV cache argument of model, decoder-layer and attention forwards from
`past_key_values` to `cache` (the old name still works there, with a deprecation warning), and the `past_key_values`
field of the output classes to `cache`. lazyllm reads both names and passes the one the installed release declares.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaDecoderLayer.forward).parameters else "past_key_values"
_OUTPUT_CACHE_FIELD = (
    "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else ("past_key_values")
)


def cache_argument(kwargs: dict[str, Any]) -> Any:
    """Pop the cache a caller passed under either name (None when it passed none)."""
    cache, legacy = kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
    return cache if cache is not None else legacy


def model_output(last_hidden_state: Any, cache: Any) -> BaseModelOutputWithPast:
    """The base model's output, its cache under the installed release's field name."""
    return BaseModelOutputWithPast(last_hidden_state=last_hidden_state, **{_OUTPUT_CACHE_FIELD: cache})


def gguf_dequantize_kwargs() -> dict[str, Any]:
    """`from_pretrained` arguments that load a GGUF file as plain float weights."""
    try:
        from transformers import GgufConfig
    except ImportError:  # 4.x dequantizes GGUF weights on load
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}
