"""Architecture facts we rely on, in one place: text config of wrappers, layer lists, final norm, embed scale."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from nlalab.errors import NLALabError

# Per-layer config arrays that transformers validates against num_hidden_layers.
PER_LAYER_KEYS = ("layer_types", "sliding_window_pattern", "no_rope_layers", "swa_layers", "full_attn_idxs")
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f")
# kitft arch_adapters: an explicit registry, not prefix matching.
EMBED_SCALED_TYPES = {"gemma", "gemma2", "gemma3", "gemma3_text", "t5"}


def is_wrapper(config: Any) -> bool:
    """A multimodal wrapper whose language model lives in ``text_config`` (Gemma-3 IT checkpoints)."""
    return getattr(config, "text_config", None) is not None and hasattr(config, "vision_config")


def text_config(config: Any) -> Any:
    return config.text_config if is_wrapper(config) else config


def d_model_of(config: Any) -> int:
    return int(text_config(config).hidden_size)


def n_layers_of(config: Any) -> int:
    return int(text_config(config).num_hidden_layers)


def truncated_text_config(config: Any, n_layers: int) -> Any:
    """A copy of the text config with ``n_layers`` blocks and its per-layer arrays cut to match."""
    tc = copy.deepcopy(text_config(config))
    total = tc.num_hidden_layers
    if not 1 <= n_layers <= total:
        raise NLALabError(f"Cannot keep {n_layers} blocks of a {total}-block model.")
    tc.num_hidden_layers = n_layers
    for key in PER_LAYER_KEYS:
        val = getattr(tc, key, None)
        if isinstance(val, (list, tuple)) and len(val) == total:
            setattr(tc, key, list(val)[:n_layers])
    return tc


def embed_scale(config: Any) -> float:
    tc = text_config(config)
    mt = getattr(tc, "model_type", "")
    return float(tc.hidden_size) ** 0.5 if mt in EMBED_SCALED_TYPES else 1.0


def inner_model(model: nn.Module) -> nn.Module:
    """The decoder stack (the module owning ``layers``) of a CausalLM or multimodal wrapper."""
    for path in ("model.language_model", "language_model.model", "model", "language_model", "transformer"):
        obj = model
        ok = True
        for part in path.split("."):
            if not hasattr(obj, part):
                ok = False
                break
            obj = getattr(obj, part)
        if ok and isinstance(getattr(obj, "layers", None), nn.ModuleList):
            return obj
    if isinstance(getattr(model, "layers", None), nn.ModuleList):
        return model
    raise NLALabError(
        f"Cannot find the decoder layers of {type(model).__name__}. Supported: Llama/Qwen2/Mistral-style "
        "`model.layers` and Gemma-3 wrappers."
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return inner_model(model).layers


def strip_head_and_norm(model: nn.Module) -> None:
    """AR surgery: the value head reads the raw (un-normed) block-K residual, and there are no logits."""
    inner = inner_model(model)
    for name in FINAL_NORM_NAMES:
        if hasattr(inner, name):
            setattr(inner, name, nn.Identity())
            break
    if hasattr(model, "lm_head"):
        model.lm_head = nn.Identity()


def input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device
