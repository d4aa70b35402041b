"""Model-family adapters: the little that differs between Llama-like architectures.

Every supported family has the Llama layout (`model.model.embed_tokens/layers/norm/rotary_emb`, decoder layers
called as `layer(hidden, attention_mask=, position_ids=, cache= (or past_key_values=), use_cache=, position_embeddings=)`).
What differs is where the query of a layer can be read before RoPE, which RoPE function the family uses, and whether
RoPE differs by layer type (Gemma 3: a local RoPE for sliding-window layers, a global one for full-attention layers).
Adding a family is one `FamilyAdapter(...)` entry in `FAMILIES`.

Sliding-window attention (Mistral or Qwen2 with `sliding_window` set, Gemma 3's hybrid layers) is read from the
config by `attention_windows`: the pruned forward applies each layer's window in the masks it builds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.models.gemma3 import modeling_gemma3
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

from lazyllm.errors import UnsupportedModelError as UnsupportedModelError

SUPPORTED_ATTENTION = ("sdpa", "eager")


class BaseModel(Protocol):
    """The Llama-like base model (`model.model`) whose forward lazyllm replaces: what that forward uses of it."""

    config: PretrainedConfig
    layers: nn.ModuleList  # the decoder layers
    embed_tokens: nn.Module  # (B, q) ids -> (B, q, D) embeddings
    norm: nn.Module  # the final norm
    rotary_emb: nn.Module  # (hidden, positions[, layer type]) -> (cos, sin)
    training: bool


class Attention(Protocol):
    """The attention module of a decoder layer (`layer.self_attn`): what lazyllm reads of it."""

    head_dim: int
    scaling: float
    q_proj: nn.Module


def model_config(model: nn.Module) -> PretrainedConfig:
    """The Transformers config of `model` (`model.config`)."""
    config = model.config
    if not isinstance(config, PretrainedConfig):
        raise UnsupportedModelError(f"lazyllm patches Transformers models, {type(model).__name__} has no model config.")
    return config


def base_model(model: nn.Module) -> BaseModel:
    """The base model of a supported causal LM (`model.model`)."""
    return cast(BaseModel, model.model)


def decoder_layer_attention(layer: nn.Module) -> Attention:
    """The attention module of a decoder layer (`layer.self_attn`)."""
    return cast(Attention, layer.self_attn)


@dataclass(frozen=True)
class FamilyAdapter:
    """How to read the pre-RoPE query of one decoder layer of a family.

    `query_module(layer)` is the submodule whose output holds the layer's queries before RoPE, shaped
    `(B, q, H * head_dim)` or `(B, q, H, head_dim)`, or `(B, H, q, head_dim)` when `heads_first` (Gemma 3 norms its
    queries after moving the heads forward). A forward hook on it sees the query computed inside the layer's own
    forward, so scoring needs neither a second projection nor weights outside that forward (which accelerate's
    offload hooks would not have loaded). `rope_by_layer_type`: the base model's `rotary_emb` takes the layer's
    type as a third argument and gives that type's `(cos, sin)`.
    """

    name: str
    causal_lm_class: type[nn.Module]
    query_module: Callable[[nn.Module], nn.Module]
    apply_rotary_pos_emb: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    heads_first: bool = False
    rope_by_layer_type: bool = False

    def last_queries(self, output: torch.Tensor, window: int) -> torch.Tensor:
        """The query module's `output` for the last `window` tokens, tokens first: `(B, w, ...)`."""
        return output[:, :, -window:].transpose(1, 2) if self.heads_first else output[:, -window:]

    def rope_kind(self, config: PretrainedConfig, layer: int) -> str | None:
        """Which RoPE layer `layer` uses: its layer type where RoPE differs by type, else None (one RoPE)."""
        if not self.rope_by_layer_type:
            return None
        kind: str = config.layer_types[layer]
        return kind

    def rotary(
        self, base: BaseModel, hidden: torch.Tensor, positions: torch.Tensor, kind: str | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, sin)` `(B, q, head_dim)` of RoPE `kind` (see `rope_kind`) at `positions (B, q)`."""
        cos_sin: tuple[torch.Tensor, torch.Tensor]
        if self.rope_by_layer_type:
            cos_sin = base.rotary_emb(hidden, positions, kind)
        else:
            cos_sin = base.rotary_emb(hidden, positions)
        return cos_sin

    def queries(self, captured: torch.Tensor, layer: nn.Module, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Queries `(B, H, w, head_dim)` of the last `w` tokens with RoPE applied.

        `captured` is the query module's output for those tokens, `(B, w, H * head_dim)` or `(B, w, H, head_dim)`;
        `cos`/`sin` are `(B, w, head_dim)`.
        """
        batch, window = captured.shape[:2]
        head_dim = decoder_layer_attention(layer).head_dim
        query = captured.reshape(batch, window, -1, head_dim).transpose(1, 2)  # (B, H, w, d)
        query, _ = self.apply_rotary_pos_emb(query, query, cos, sin)
        return query


def _q_proj(layer: nn.Module) -> nn.Module:
    return decoder_layer_attention(layer).q_proj


def _q_norm(layer: nn.Module) -> nn.Module:
    attention = cast(nn.Module, layer.self_attn)
    return cast(nn.Module, attention.q_norm)  # Qwen 3 and Gemma 3 norm their queries before RoPE


FAMILIES: dict[str, FamilyAdapter] = {
    "llama": FamilyAdapter("llama", modeling_llama.LlamaForCausalLM, _q_proj, modeling_llama.apply_rotary_pos_emb),
    "mistral": FamilyAdapter(
        "mistral", modeling_mistral.MistralForCausalLM, _q_proj, modeling_mistral.apply_rotary_pos_emb
    ),
    "qwen2": FamilyAdapter("qwen2", modeling_qwen2.Qwen2ForCausalLM, _q_proj, modeling_qwen2.apply_rotary_pos_emb),
    "qwen3": FamilyAdapter("qwen3", modeling_qwen3.Qwen3ForCausalLM, _q_norm, modeling_qwen3.apply_rotary_pos_emb),
    "gemma3_text": FamilyAdapter(
        "gemma3_text",
        modeling_gemma3.Gemma3ForCausalLM,
        _q_norm,
        modeling_gemma3.apply_rotary_pos_emb,
        heads_first=True,
        rope_by_layer_type=True,
    ),
}

ATTENTION_TYPES = ("full_attention", "sliding_attention")


def attention_windows(config: PretrainedConfig) -> list[int | None]:
    """Per decoder layer, the sliding window of its attention (None: full attention).

    A query at position p attends keys at positions k with p - window < k <= p, as Transformers' sliding masks do.
    Configs with `layer_types` (Qwen2/3, Gemma 3) say it per layer; Mistral's `sliding_window` covers every layer.
    """
    count: int = config.num_hidden_layers
    sliding = getattr(config, "sliding_window", None) is not None
    types = getattr(config, "layer_types", None) or ["sliding_attention" if sliding else "full_attention"] * count
    unknown = sorted(set(types[:count]) - set(ATTENTION_TYPES))
    if unknown:
        raise UnsupportedModelError(
            f"lazyllm supports layer types {' and '.join(ATTENTION_TYPES)}, this config also uses {unknown}."
        )
    return [config.sliding_window if kind == "sliding_attention" else None for kind in types[:count]]


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter of `model`, or `UnsupportedModelError` naming what is supported and why this one is not."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    adapter = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if adapter is None or not isinstance(model, adapter.causal_lm_class):
        supported = ", ".join(a.causal_lm_class.__name__ for a in FAMILIES.values())
        raise UnsupportedModelError(
            f"lazyllm cannot patch {type(model).__name__} (model_type={model_type!r}): supported models are {supported}. "
            "Load the checkpoint with AutoModelForCausalLM."
        )
    check_attention_backend(model_config(model))
    if adapter.rope_by_layer_type and not rope_takes_layer_type(base_model(model).rotary_emb):
        raise UnsupportedModelError(
            f"lazyllm supports {adapter.name} from Transformers 5 on (one RoPE module taking the layer type); "
            "upgrade transformers."
        )
    if getattr(config, "use_bidirectional_attention", False):
        raise UnsupportedModelError(
            "lazyllm prunes causal language models; this config uses bidirectional attention (an embedding model)."
        )
    attention_windows(model_config(model))
    return adapter


def rope_takes_layer_type(rotary_emb: nn.Module) -> bool:
    """Whether `rotary_emb(x, positions, layer_type)` works (Gemma 3 on Transformers 5; 4.x had two modules)."""
    return "layer_type" in inspect.signature(rotary_emb.forward).parameters


def check_attention_backend(config: PretrainedConfig) -> None:
    """Raise unless the model (of `config`) runs an attention backend whose masks lazyllm builds (SDPA or eager)."""
    backend = config._attn_implementation
    if backend not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"lazyllm supports attn_implementation {' or '.join(map(repr, SUPPORTED_ATTENTION))}, this model uses "
            f"{backend!r}: load it with attn_implementation='sdpa' or call model.set_attn_implementation('sdpa')."
        )
