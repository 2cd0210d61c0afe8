"""Tensor-parallel shards of a decoder: which slice of every weight one rank holds (Megatron layout).

Read off the model the way ``nlalab.verbalize.fast`` reads it (same families, same per-layer fields), then
cut per rank: q/k/v and gate/up column-parallel (by query heads / KV heads / intermediate rows), o/down
row-parallel (their input columns; the partial outputs are summed by an all-reduce), the embedding and the
LM head vocabulary-parallel (contiguous vocab ranges, padded to equal size so logits can be all-gathered).
Norms, RoPE tables and Gemma's q/k norms are replicated. Slices are views of the model's Parameters (no
copy) until ``TPWeights.to`` moves them to a rank's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional

import torch
from torch import nn

from nlalab.errors import UsageError
from nlalab.pairs import arch, families
from nlalab.verbalize.fast.weights import SUPPORTED_MODEL_TYPES, LayerWeights, _eps, layer_weights, read_rope_tables


@dataclass(frozen=True)
class TPConfig:
    """The numbers every rank needs (the same on all ranks)."""

    world: int
    n_heads: int  # per rank
    n_kv: int  # per rank (1 when KV heads are replicated)
    head_dim: int
    hidden: int
    vocab: int  # the full vocabulary
    vocab_per_rank: int  # padded slice size (ceil(vocab / world))
    scaling: float
    eps: float
    qk_eps: float
    norm_eps: float
    gemma: bool
    act: str  # transformers' ACT2FN key of the MLP activation
    final_softcap: Optional[float]
    embed_scale: Optional[float]  # Gemma: sqrt(d) cast to the model dtype inside the embedding module
    windows: tuple  # per layer: sliding window or None


@dataclass
class TPLayer(LayerWeights):
    """One rank's slices of a block: q/k/v and gate/up column-parallel (its heads, its MLP rows), o and down
    row-parallel (``wo`` [hidden, n_heads_local * head_dim], ``wd`` [hidden, inter_local]); ``bo`` is added
    once, after the all-reduce; norms whole."""


@dataclass
class TPWeights:
    """One rank's shard: config, layers, vocab slices of embedding and head, final norm."""

    cfg: TPConfig
    rank: int
    layers: list
    embed: torch.Tensor  # [vocab_per_rank, hidden] (zero rows pad the last slice)
    lm_w: Optional[torch.Tensor]  # [vocab_per_rank, hidden]; None for a trunk without LM head (the AR)
    lm_b: Optional[torch.Tensor]
    norm_w: Optional[torch.Tensor]
    dtype: torch.dtype = torch.float32
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def vocab_start(self) -> int:
        return self.rank * self.cfg.vocab_per_rank

    def tensors(self) -> dict:
        """name -> tensor (None kept), in a fixed order: what travels to another process."""
        out = {"embed": self.embed, "lm_w": self.lm_w, "lm_b": self.lm_b, "norm_w": self.norm_w}
        for i, L in enumerate(self.layers):
            for f in fields(TPLayer):
                out[f"{i}.{f.name}"] = getattr(L, f.name)
        return out

    @classmethod
    def from_tensors(cls, cfg: TPConfig, rank: int, dtype: torch.dtype, t: dict) -> "TPWeights":
        n = len(cfg.windows)
        layers = [TPLayer(**{f.name: t[f"{i}.{f.name}"] for f in fields(TPLayer)}) for i in range(n)]
        return cls(cfg=cfg, rank=rank, layers=layers, embed=t["embed"], lm_w=t["lm_w"], lm_b=t["lm_b"],
                   norm_w=t["norm_w"], dtype=dtype)

    def to(self, device) -> "TPWeights":
        """The shard on ``device``: tensors already there stay (views), others are copied (contiguous)."""
        device = torch.device(device)

        def mv(x):
            if x is None:
                return None
            return x if x.device == device else x.to(device).contiguous()

        t = {k: mv(v) for k, v in self.tensors().items()}
        return replace(TPWeights.from_tensors(self.cfg, self.rank, self.dtype, t), extra=dict(self.extra))


def _act_name(cfg, act: nn.Module) -> str:
    """The MLP activation as transformers' ``ACT2FN`` key (a name travels to other processes; a module
    need not), checked against the model's own activation module."""
    from transformers.activations import ACT2FN

    name = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
    if not name or name not in ACT2FN or type(ACT2FN[name]) is not type(act):
        raise UsageError(f"tensor-parallel engine: unknown MLP activation {type(act).__name__} ({name!r}). "
                         "Use engine 'loop'.")
    return str(name)


def has_head(model: nn.Module) -> bool:
    """False for the AR's trunk (``arch.strip_head_and_norm``: LM head and final norm are Identity)."""
    inner = arch.inner_model(model)
    norm = next((getattr(inner, n) for n in arch.FINAL_NORM_NAMES if hasattr(inner, n)), None)
    return hasattr(getattr(model, "lm_head", None), "weight") and hasattr(norm, "weight")


def unsupported_reason(model: nn.Module, head: bool = True) -> Optional[str]:
    """None if the tensor-parallel engine can shard ``model`` (any placement, accelerate hooks included);
    ``head=False``: only the block forward is needed (capture, the AR), so a model without LM head is fine."""
    cfg = arch.text_config(model.config)
    mt = getattr(cfg, "model_type", "")
    if mt not in SUPPORTED_MODEL_TYPES:
        return f"model type {mt!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if any(p.device.type == "meta" for p in model.parameters()):
        return "weights released or offloaded (meta device)"
    if head and not has_head(model):
        return "no lm_head"
    if getattr(cfg, "use_bidirectional_attention", False):
        return "bidirectional attention"
    return None


def check_world(n_heads: int, n_kv: int, world: int) -> None:
    """Heads must split evenly: query heads by ``world``; KV heads too, or ``world`` a multiple of them
    (each rank then holds the one KV head its query heads read: replicated)."""
    if world < 1:
        raise UsageError(f"tensor-parallel size must be >= 1, got {world}.")
    if n_heads % world:
        raise UsageError(f"tensor parallel over {world} devices: {n_heads} attention heads do not split evenly. "
                         f"Fix: use a device count that divides {n_heads}.")
    if n_kv % world and world % n_kv:
        raise UsageError(f"tensor parallel over {world} devices: {n_kv} key/value heads neither split evenly nor "
                         f"replicate. Fix: use a device count that divides {n_kv} or a multiple of it.")


def shard_weights(model: nn.Module, rank: int, world: int) -> TPWeights:
    """Rank ``rank``'s slices of ``model`` (views of its Parameters; ``.to(device)`` copies them). A model
    without LM head or final norm (the AR) gets ``lm_w``/``norm_w`` None: block forwards only."""
    head = has_head(model)
    why = unsupported_reason(model, head=head)
    if why:
        raise UsageError(f"The tensor-parallel engine does not support this model: {why}. Use engine 'loop'.")
    cfg = arch.text_config(model.config)
    layers = arch.decoder_layers(model)
    inner = arch.inner_model(model)
    a0 = layers[0].self_attn
    fam = families.family_of(getattr(cfg, "model_type", ""))
    gemma = bool(fam.norm_one_plus_w)
    H, KV = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
    D = int(getattr(a0, "head_dim", None) or cfg.hidden_size // H)
    check_world(H, KV, world)
    h = H // world
    if KV % world == 0:
        kv, k0 = KV // world, rank * (KV // world)
    else:  # world a multiple of KV: this rank's query heads all read KV head (rank * h) // (H // KV)
        kv, k0 = 1, (rank * h) // (H // KV)
    emb_mod = model.get_input_embeddings()
    V = int((model.lm_head.weight if head else emb_mod.weight).shape[0])
    Vr = -(-V // world)
    v0, v1 = rank * Vr, min(V, (rank + 1) * Vr)

    def vocab_slice(w: torch.Tensor) -> torch.Tensor:
        part = w[v0:v1]
        if part.shape[0] == Vr:
            return part
        pad = torch.zeros(Vr - part.shape[0], *w.shape[1:], dtype=w.dtype, device=w.device)
        return torch.cat([part, pad], 0)

    rows = lambda w, a, n: None if w is None else w[a * D:(a + n) * D]  # noqa: E731  (heads of D rows)
    out_layers = []
    windows, inter = [], None
    for lay in layers:
        at, mlp = lay.self_attn, lay.mlp
        I = int(mlp.gate_proj.weight.shape[0])
        if I % world:
            raise UsageError(f"tensor parallel over {world} devices: the MLP width {I} does not split evenly. "
                             "Fix: use a device count that divides it.")
        i_r = I // world
        inter = i_r
        win = getattr(at, "sliding_window", None)
        windows.append(int(win) if win else None)
        full = layer_weights(lay, gemma)
        out_layers.append(TPLayer(**{
            **vars(full),
            "wq": rows(full.wq, rank * h, h), "bq": rows(full.bq, rank * h, h),
            "wk": rows(full.wk, k0, kv), "bk": rows(full.bk, k0, kv),
            "wv": rows(full.wv, k0, kv), "bv": rows(full.bv, k0, kv),
            "wo": full.wo[:, rank * h * D:(rank + 1) * h * D],
            "wg": full.wg[rank * i_r:(rank + 1) * i_r], "wu": full.wu[rank * i_r:(rank + 1) * i_r],
            "wd": full.wd[:, rank * i_r:(rank + 1) * i_r],
        }))
    es = getattr(emb_mod, "embed_scale", None)
    fs = getattr(cfg, "final_logit_softcapping", None)
    tcfg = TPConfig(
        world=world, n_heads=h, n_kv=kv, head_dim=D, hidden=int(cfg.hidden_size), vocab=V, vocab_per_rank=Vr,
        scaling=float(getattr(a0, "scaling", D ** -0.5)), eps=_eps(layers[0].input_layernorm),
        qk_eps=_eps(a0.q_norm) if getattr(a0, "q_norm", None) is not None else _eps(layers[0].input_layernorm),
        norm_eps=_eps(inner.norm) if head else 0.0, gemma=gemma, act=_act_name(cfg, layers[0].mlp.act_fn),
        final_softcap=float(fs) if fs is not None else None,
        embed_scale=float(es) if es is not None else None, windows=tuple(windows))
    lm_b = getattr(model.lm_head, "bias", None) if head else None
    w = TPWeights(cfg=tcfg, rank=rank, layers=out_layers, embed=vocab_slice(emb_mod.weight),
                  lm_w=vocab_slice(model.lm_head.weight) if head else None,
                  lm_b=None if lm_b is None else vocab_slice(lm_b), norm_w=inner.norm.weight if head else None,
                  dtype=emb_mod.weight.dtype)
    w.extra["inter_per_rank"] = inter
    return w


def rope_tables(model: nn.Module, length: int) -> tuple[list, list, tuple]:
    """The fast engine's rotary tables (read off the model's own forward), moved to the CPU so they travel
    to every rank; works on a model dispatched over several devices."""
    cos, sin, idx = read_rope_tables(model, length, arch.input_device(model),
                                     model.get_input_embeddings().weight.dtype, who="tensor-parallel engine")
    return [c.to("cpu") for c in cos], [x.to("cpu") for x in sin], idx