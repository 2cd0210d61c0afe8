"""Architecture facts we rely on, in one place: text config of wrappers, layer lists, final norm, embed scale."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from nlalab.errors import NLALabError
from nlalab.pairs.families import embed_scaled_types

# Per-layer config arrays that transformers validates against num_hidden_layers.
PER_LAYER_KEYS = ("layer_types", "sliding_window_pattern", "no_rope_layers", "swa_layers", "full_attn_idxs")
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f")
# kitft arch_adapters: an explicit registry, not prefix matching.
# (our families' entries come from nlalab.pairs.families; older Gemmas and T5 are listed here)
EMBED_SCALED_TYPES = {"gemma", "gemma2", "t5"} | embed_scaled_types()


def is_wrapper(config: Any) -> bool:
    """A multimodal wrapper whose language model lives in ``text_config`` (Gemma-3 IT checkpoints)."""
    return getattr(config, "text_config", None) is not None and hasattr(config, "vision_config")


def text_config(config: Any) -> Any:
    """The decoder's config: ``text_config`` of a multimodal wrapper, else the config itself."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else getattr(config, "text_config", config)


def d_model_of(config: Any) -> int:
    return int(text_config(config).hidden_size)


def n_layers_of(config: Any) -> int:
    return int(text_config(config).num_hidden_layers)


def truncated_text_config(config: Any, n_layers: int) -> Any:
    """A text-only config with ``n_layers`` blocks and every per-layer array cut to match.

    transformers >= 4.50 validates per-layer arrays (layer_types, ...) against num_hidden_layers,
    so they must be truncated together; this is done before loading, never by slicing modules.
    """
    tc = text_config(config)
    total = int(tc.num_hidden_layers)
    if not 1 <= n_layers <= total:
        raise NLALabError(f"Cannot keep {n_layers} blocks of a {total}-block model.")
    d = tc.to_dict()
    d.pop("_name_or_path", None)  # the release scrub deletes it
    for key, val in list(d.items()):
        if isinstance(val, list) and len(val) == total and (key in PER_LAYER_KEYS or "layer" in key):
            d[key] = val[:n_layers]
    d["num_hidden_layers"] = n_layers
    # A wrapper may keep special-token ids only at top level; the text-only model needs them itself.
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if d.get(key) is None and getattr(config, key, None) is not None:
            d[key] = getattr(config, key)
    return type(tc).from_dict(d)


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


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its weights' device; for weights that accelerate offloaded (``device_map``
    with cpu/disk entries: parameters on ``meta``), the device its hook loads them to."""
    p = next(module.parameters(), None)
    if p is not None and p.device.type != "meta":
        return p.device
    ex = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if ex is None:
        return p.device if p is not None else torch.device("cpu")
    return torch.device(f"cuda:{ex}") if isinstance(ex, int) else torch.device(ex)


def input_device(model: nn.Module) -> torch.device:
    """The first device of a model sharded with ``device_map`` (inputs go there)."""
    return module_device(model.get_input_embeddings())


def sdpa_backends(device):
    """Scaled-dot-product attention kernels for our forwards on CUDA: memory-efficient, flash and math, not
    cuDNN. cuDNN's attention builds an execution plan on the host for every new (batch, length) shape:
    the V1-shape study's capture and AR forwards (length-bucketed batches, many shapes) spent ~8 s of host
    time in it on an H200 (7 ms a call), and it was 5x slower on the fast engine's short-query decode
    shapes. A no-op off CUDA."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
