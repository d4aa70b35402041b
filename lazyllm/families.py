"""Model-family adapters: the little that differs between Llama-like architectures.

Every supported family has the Llama layout (`model.model.embed_tokens/layers/norm/rotary_emb`, decoder layers
called as `layer(hidden, attention_mask=, position_ids=, cache= (or past_key_values=), use_cache=, position_embeddings=)`).
What differs is where the query of a layer can be read before RoPE, and which RoPE function the family uses.
Adding a family is one `FamilyAdapter(...)` entry in `FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

SUPPORTED_ATTENTION = ("sdpa", "eager")


class UnsupportedModelError(TypeError):
    """The model (architecture, cache layout or attention backend) cannot be patched; the message says why."""


@dataclass(frozen=True)
class FamilyAdapter:
    """How to read the pre-RoPE query of one decoder layer of a family.

    `query_module(layer)` is the submodule whose output holds the layer's queries before RoPE, shaped
    `(B, q, H * head_dim)` or `(B, q, H, head_dim)`. A forward hook on it sees the query computed inside the
    layer's own forward, so scoring needs neither a second projection nor weights outside that forward
    (which accelerate's offload hooks would not have loaded).
    """

    name: str
    causal_lm_class: type[nn.Module]
    query_module: Callable[[nn.Module], nn.Module]
    apply_rotary_pos_emb: Callable[..., tuple[torch.Tensor, torch.Tensor]]

    def queries(self, captured: torch.Tensor, layer: nn.Module, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Queries `(B, H, w, head_dim)` of the last `w` tokens with RoPE applied.

        `captured` is the query module's output for those tokens, `(B, w, H * head_dim)` or `(B, w, H, head_dim)`;
        `cos`/`sin` are `(B, w, head_dim)`.
        """
        batch, window = captured.shape[:2]
        query = captured.reshape(batch, window, -1, layer.self_attn.head_dim).transpose(1, 2)  # (B, H, w, d)
        query, _ = self.apply_rotary_pos_emb(query, query, cos, sin)
        return query


def _q_proj(layer: nn.Module) -> nn.Module:
    return layer.self_attn.q_proj


def _q_norm(layer: nn.Module) -> nn.Module:
    return layer.self_attn.q_norm


FAMILIES: dict[str, FamilyAdapter] = {
    "llama": FamilyAdapter("llama", modeling_llama.LlamaForCausalLM, _q_proj, modeling_llama.apply_rotary_pos_emb),
    "mistral": FamilyAdapter(
        "mistral", modeling_mistral.MistralForCausalLM, _q_proj, modeling_mistral.apply_rotary_pos_emb
    ),
    "qwen2": FamilyAdapter("qwen2", modeling_qwen2.Qwen2ForCausalLM, _q_proj, modeling_qwen2.apply_rotary_pos_emb),
    "qwen3": FamilyAdapter("qwen3", modeling_qwen3.Qwen3ForCausalLM, _q_norm, modeling_qwen3.apply_rotary_pos_emb),
}


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter of `model`, or `UnsupportedModelError` naming what is supported and why this one is not."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    adapter = FAMILIES.get(model_type)  # type: ignore[arg-type]
    if adapter is None or not isinstance(model, adapter.causal_lm_class):
        supported = ", ".join(a.causal_lm_class.__name__ for a in FAMILIES.values())
        raise UnsupportedModelError(
            f"lazyllm cannot patch {type(model).__name__} (model_type={model_type!r}): supported models are {supported}. "
            "Load the checkpoint with AutoModelForCausalLM."
        )
    check_attention_backend(model)
    layer_types = {type(layer).__name__ for layer in DynamicCache(config=config).layers}
    if layer_types and layer_types != {DynamicLayer.__name__}:
        raise UnsupportedModelError(
            f"lazyllm needs full attention in every layer, but this {adapter.name} config uses {sorted(layer_types)} "
            "cache layers (sliding-window attention). Set config.sliding_window = None if the prompts fit the window."
        )
    return adapter


def check_attention_backend(model: nn.Module) -> None:
    """Raise unless the model runs an attention backend whose masks lazyllm builds (SDPA or eager)."""
    backend = model.config._attn_implementation
    if backend not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"lazyllm supports attn_implementation {' or '.join(map(repr, SUPPORTED_ATTENTION))}, this model uses "
            f"{backend!r}: load it with attn_implementation='sdpa' or call model.set_attn_implementation('sdpa')."
        )
