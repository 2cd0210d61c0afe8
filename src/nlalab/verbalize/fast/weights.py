"""Which models the fast engine runs, and per-layer weight views read off the model (no copies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from nlalab.errors import NLALabError
from nlalab.pairs import arch, families
from torch import nn

SUPPORTED_MODEL_TYPES = families.fast_engine_types()

# ------------------------------------------------------------------------------------------- model


@dataclass
class LayerWeights:
    """One decoder block's tensors as nlalab's engines read them: whole for the fast engine, one rank's
    slices for the tensor-parallel one (``tp.shard``). Bias and q/k-norm entries are None where the family
    has none; the sandwich norms (``ln_pre_ff``, ``ln_post_ff``) exist for Gemma only."""

    ln_in: torch.Tensor
    ln_post_attn: torch.Tensor
    ln_pre_ff: Optional[torch.Tensor]
    ln_post_ff: Optional[torch.Tensor]
    wq: torch.Tensor
    bq: Optional[torch.Tensor]
    wk: torch.Tensor
    bk: Optional[torch.Tensor]
    wv: torch.Tensor
    bv: Optional[torch.Tensor]
    wo: torch.Tensor
    bo: Optional[torch.Tensor]
    qn: Optional[torch.Tensor]
    kn: Optional[torch.Tensor]
    wg: torch.Tensor
    wu: torch.Tensor
    wd: torch.Tensor


def layer_weights(lay: nn.Module, sandwich_norms: bool) -> LayerWeights:
    """The block's Parameters (no copies), read one way for every supported family."""
    at, mlp = lay.self_attn, lay.mlp
    return LayerWeights(
        ln_in=lay.input_layernorm.weight, ln_post_attn=lay.post_attention_layernorm.weight,
        ln_pre_ff=lay.pre_feedforward_layernorm.weight if sandwich_norms else None,
        ln_post_ff=lay.post_feedforward_layernorm.weight if sandwich_norms else None,
        wq=at.q_proj.weight, bq=at.q_proj.bias, wk=at.k_proj.weight, bk=at.k_proj.bias,
        wv=at.v_proj.weight, bv=at.v_proj.bias, wo=at.o_proj.weight, bo=at.o_proj.bias,
        qn=at.q_norm.weight if getattr(at, "q_norm", None) is not None else None,
        kn=at.k_norm.weight if getattr(at, "k_norm", None) is not None else None,
        wg=mlp.gate_proj.weight, wu=mlp.up_proj.weight, wd=mlp.down_proj.weight,
    )


@dataclass
class _Layer(LayerWeights):
    window: Optional[int] = None
    rope: int = 0  # index into the engine's cos/sin tables
    wqkv: Optional[torch.Tensor] = None  # fused weights (fuse_weights), views of which the Parameters are
    bqkv: Optional[torch.Tensor] = None
    wgu: Optional[torch.Tensor] = None


def _eps(norm: nn.Module) -> float:
    for name in ("variance_epsilon", "eps"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise NLALabError(f"fast engine: cannot read the epsilon of {type(norm).__name__}.")


def unsupported_reason(model: nn.Module) -> Optional[str]:
    """None if the fast engine supports ``model``, else why not (the caller falls back to ``loop``)."""
    cfg = arch.text_config(model.config)
    mt = getattr(cfg, "model_type", "")
    if mt not in SUPPORTED_MODEL_TYPES:
        return f"model type {mt!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    devs = {p.device for p in model.parameters()}
    if len(devs) != 1:
        return "weights on several devices (device_map sharding)"
    if next(iter(devs)).type == "meta":
        return "weights released (meta device)"
    if getattr(model, "lm_head", None) is None or not hasattr(model.lm_head, "weight"):
        return "no lm_head"
    try:
        arch.decoder_layers(model)
    except NLALabError as e:
        return str(e)
    if getattr(cfg, "use_bidirectional_attention", False):
        return "bidirectional attention"
    dispatched = next((n for n, m in model.named_modules() if getattr(m, "_hf_hook", None) is not None), None)
    if dispatched is not None:  # accelerate's device hooks wrap forwards the engine never calls
        return f"dispatched with accelerate hooks ({dispatched or 'the model'}); the fast engine would skip them"
    hooked = next(((n, h) for n, m in model.named_modules() for h in user_hooks(m)), None)
    if hooked is not None:  # the engine never calls module forwards, so it would silently skip the hook
        name, h = hooked
        return (f"forward hooks registered on the model ({name or 'the model'}: "
                f"{getattr(h, '__module__', '?')}.{getattr(h, '__qualname__', type(h).__name__)}); "
                "the fast engine would skip them")
    return None


# Hooks of these libraries record outputs; they do not change what a module computes, so the engine may skip
# them (accelerate's device hooks are refused above, by the ``_hf_hook`` they leave on a module).
LIBRARY_HOOKS = ("transformers.", "torch.")


def user_hooks(module) -> list:
    """The forward (pre-)hooks of ``module`` that may change its output: every hook but the libraries' own."""
    hooks = list(module._forward_hooks.values()) + list(module._forward_pre_hooks.values())
    return [h for h in hooks if not str(getattr(h, "__module__", "") or "").startswith(LIBRARY_HOOKS)]


def read_rope_tables(model: nn.Module, length: int, device, dtype, who: str = "fast engine") -> tuple[list, list, tuple]:
    """cos/sin tables [length, head_dim] exactly as the model computes them, read off one forward of its own
    (pre-hooks on every decoder layer), so no family's rotary variant is re-implemented here: the distinct
    tables once, and each layer's index into them. Tables stay where the model put them."""
    layers = arch.decoder_layers(model)
    got: dict[int, tuple] = {}

    def hook(i):
        def fn(_m, args, kwargs):
            pe = kwargs.get("position_embeddings")
            if pe is None:
                pe = next((a for a in args if isinstance(a, tuple) and len(a) == 2), None)
            got[i] = pe
        return fn

    hs = [lay.register_forward_pre_hook(hook(i), with_kwargs=True) for i, lay in enumerate(layers)]
    d = arch.d_model_of(model.config)
    try:
        with torch.no_grad():
            arch.inner_model(model)(inputs_embeds=torch.zeros(1, length, d, device=device, dtype=dtype),
                                    position_ids=torch.arange(length, device=device)[None], use_cache=False)
    finally:
        for h in hs:
            h.remove()
    if len(got) != len(layers) or any(v is None for v in got.values()):
        raise NLALabError(f"{who}: could not read the rotary tables from the model's forward.")
    uniq: dict[int, int] = {}
    cos, sin, idx = [], [], []
    for i, (c, s) in sorted(got.items()):
        if id(c) not in uniq:
            uniq[id(c)] = len(cos)
            cos.append(c.reshape(length, -1).contiguous())
            sin.append(s.reshape(length, -1).contiguous())
        idx.append(uniq[id(c)])
    return cos, sin, tuple(idx)
