"""Build an *untrained* NLA pair from any base model, in the exact release layout.

Why: tests need release-shaped pairs for tiny models, and real-model users need a "step 0" pair
(base-model AV, truncated-backbone AR with an identity value head) as a baseline and as a sanity
check: with the identity head the AR must reproduce the base activation ``hidden_states[K+1]``
exactly, so any loader or layer off-by-one shows up as a non-zero error.

Layout written (kitft ``prepare_critic_checkpoint`` + ``release/hf_stage_and_scrub``):

- ``av/``: the base checkpoint unchanged (a multimodal wrapper stays a wrapper), tokenizer,
  ``nla_meta.yaml`` (role av).
- ``ar/``: text-only config with ``num_hidden_layers = K+1`` (per-layer arrays truncated),
  safetensors with embeddings and blocks 0..K only (no final norm, no lm_head),
  ``value_head.safetensors`` (key ``weight`` = I_d), tokenizer with right padding, ``nla_meta.yaml``
  (role ar).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from nlalab.errors import NLALabError
from nlalab.pairs.arch import FINAL_NORM_NAMES, inner_model, input_device, text_config, truncated_text_config
from nlalab.pairs.markers import av_prompt_ids, chat_ids, choose_marker, is_single_token, locate_marker
from nlalab.pairs.sidecar import (
    DEFAULT_AR_TEMPLATE,
    DEFAULT_AV_TEMPLATE,
    SIDECAR_NAME,
    sidecar_dict,
    write_sidecar,
)

VALUE_HEAD_NAME = "value_head.safetensors"
# Config fields holding one entry per layer; transformers >= 4.50 validates their length.

# Short, varied user turns; the injection scale is calibrated on their last chat-templated token.
CALIBRATION_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "def add(a, b):\n    return a + b\n\nExplain this function.",
    "Solve for x: 3x + 5 = 20.",
    "Summarise the plot of a detective novel in one sentence.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "List three uses of a paperclip.",
)


@dataclass(frozen=True)
class UntrainedPair:
    av: Path
    ar: Path
    layer: int
    injection_scale: float
    marker: str
    marker_id: int
    d_model: int = 0
    calibration_norm: Optional[float] = None  # mean ||h_K|| the default scale was rounded up from


# ----------------------------------------------------------------------------------------------
# Generic helpers (also used by nlalab.testing.make_defect)


def round_up_sig(x: float, digits: int = 2) -> float:
    """Round ``x`` > 0 up to ``digits`` significant figures (123.4 -> 130, 0.0341 -> 0.035)."""
    if not (x > 0 and math.isfinite(x)):
        raise NLALabError(f"Cannot round the calibration norm {x!r}: expected a finite positive number.")
    d = Decimal(repr(float(x)))
    q = Decimal(1).scaleb(d.adjusted() - digits + 1)
    return float((d / q).to_integral_value(rounding=ROUND_CEILING) * q)


def load_base(base_dir: str | Path, dtype: torch.dtype = torch.float32):
    """Load the base once (AutoModelForCausalLM; multimodal wrappers stay wrappers) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise NLALabError(
            f"{base_dir}: no config.json. Fix: pass a local Hugging Face checkpoint directory as the base."
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    except ValueError:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=dtype)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    return model, tokenizer


@torch.no_grad()
def calibration_norms(model, tokenizer, layer: int, prompts: Sequence[str] = CALIBRATION_PROMPTS) -> list[float]:
    """||hidden_states[K+1]|| (output of block K) at the last token of each chat-templated prompt."""
    device = input_device(model)  # the first device of a sharded model
    norms = []
    for p in prompts:
        ids = torch.tensor([chat_ids(tokenizer, p)], device=device)
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        norms.append(float(out.hidden_states[layer + 1][0, -1].float().norm()))
    return norms


def _stored_dtype(config) -> torch.dtype:
    """The dtype the base checkpoint was saved in (the AR is written in the same dtype)."""
    for cfg in (text_config(config), config):
        dt = getattr(cfg, "dtype", None)
        if isinstance(dt, str):
            dt = getattr(torch, dt, None)
        if isinstance(dt, torch.dtype):
            return dt
    return torch.float32


def save_truncated_backbone(model, out_dir: str | Path, n_blocks: int, dtype: Optional[torch.dtype] = None) -> Path:
    """Save embeddings + blocks 0..n_blocks-1 as a text-only CausalLM checkpoint without norm/lm_head.

    Keys are ``model.embed_tokens.*`` / ``model.layers.N.*`` so ``AutoModelForCausalLM`` loads them
    (reporting the final norm and lm_head as missing, which the AR replaces with Identity anyway).
    """
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = dtype or _stored_dtype(model.config)
    cfg = truncated_text_config(model.config, n_blocks)
    cfg.dtype = dtype
    inner = inner_model(model)
    sd: dict[str, torch.Tensor] = {}
    for k, v in inner.state_dict().items():
        parts = k.split(".")
        if parts[0] == "layers":
            if int(parts[1]) >= n_blocks:
                continue
        elif parts[0] in FINAL_NORM_NAMES:
            continue
        sd[f"model.{k}"] = v.detach().to(dtype=dtype).contiguous().clone()
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(cfg)
    skeleton.config.architectures = [type(skeleton).__name__]
    skeleton.save_pretrained(out, state_dict=sd)
    return out


def write_identity_value_head(ar_dir: str | Path, d_model: int, dtype: torch.dtype = torch.bfloat16) -> Path:
    """``value_head.safetensors`` with the single key ``weight`` = I_d (kitft's fresh-AR init)."""
    from safetensors.torch import save_file

    path = Path(ar_dir) / VALUE_HEAD_NAME
    save_file({"weight": torch.eye(d_model, dtype=dtype)}, str(path))
    return path


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy every file of the base (following HF-cache symlinks), except any old sidecar and hidden files."""
    shutil.copytree(src, dst, symlinks=False, ignore=shutil.ignore_patterns(".*", SIDECAR_NAME), dirs_exist_ok=True)


def _has_tokenizer(d: Path) -> bool:
    return (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()


# ----------------------------------------------------------------------------------------------


def build_untrained_pair(
    base_dir: str | Path,
    out_dir: str | Path,
    layer: int,
    *,
    marker: Optional[str] = None,
    injection_scale: Optional[float] = None,
    mse_scale: Optional[float] = None,
    value_head_dtype: torch.dtype = torch.bfloat16,
    base_id: Optional[str] = None,
) -> UntrainedPair:
    """Write ``out_dir/av`` and ``out_dir/ar`` for extraction layer K = ``layer``; see the module doc.

    Defaults: marker = ``choose_marker``; injection_scale = mean ||hidden_states[K+1]|| at the last
    token of 8 chat-templated prompts, rounded up to 2 significant figures; mse_scale = sqrt(d).
    """
    from transformers import AutoConfig

    base_dir = Path(base_dir)
    out = Path(out_dir)
    av_dir, ar_dir = out / "av", out / "ar"
    base_res = base_dir.resolve()
    for d in (av_dir, ar_dir):
        r = d.resolve()
        if r == base_res or r in base_res.parents:
            raise NLALabError(
                f"Output dir {d} would overwrite the base checkpoint {base_dir}. Fix: pick another out_dir."
            )

    if not (base_dir / "config.json").is_file():
        raise NLALabError(f"{base_dir}: no config.json. Fix: pass a local Hugging Face checkpoint directory.")
    cfg = AutoConfig.from_pretrained(base_dir)
    tcfg = text_config(cfg)
    n_layers = int(tcfg.num_hidden_layers)
    d_model = int(tcfg.hidden_size)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers - 1:
        raise NLALabError(
            f"layer K={layer!r} is out of range for {base_dir} ({n_layers} layers): expected an int with "
            f"0 <= K < {n_layers - 1} (K is a decoder block whose output hidden_states[K+1] is not the "
            "final, normed state). Fix: pick K about 2/3 of the way through, e.g. "
            f"{max(0, min(n_layers - 2, round(2 * n_layers / 3)))}."
        )
    stored_dtype = _stored_dtype(cfg)

    model, tokenizer = load_base(base_dir, dtype=torch.float32)

    # Marker and its pinned neighbours in the canonical AV prompt.
    if marker is None:
        marker, marker_id = choose_marker(tokenizer)
    else:
        mid = is_single_token(tokenizer, marker)
        if mid is None:
            raise NLALabError(
                f"marker {marker!r} is not a single token with the tokenizer of {base_dir}. "
                "Fix: omit marker to let nlalab choose one."
            )
        marker_id = mid
    site = locate_marker(av_prompt_ids(tokenizer, marker, DEFAULT_AV_TEMPLATE), marker_id)

    calib = None
    if injection_scale is None:
        norms = calibration_norms(model, tokenizer, layer)
        calib = sum(norms) / len(norms)
        injection_scale = round_up_sig(calib, 2)
    injection_scale = float(injection_scale)
    mse_scale = float(mse_scale) if mse_scale is not None else math.sqrt(d_model)

    suffix = DEFAULT_AR_TEMPLATE.split("{explanation}", 1)[1]
    # kitft drops the first suffix token: it can BPE-merge with the explanation's last character.
    critic_suffix_ids = [int(i) for i in tokenizer.encode(suffix, add_special_tokens=False)[1:]]
    base_checkpoint = base_id or str(base_dir)
    common = dict(
        d_model=d_model, layer=layer, injection_char=marker, injection_token_id=int(marker_id),
        left_id=site.left_id, right_id=site.right_id, base_checkpoint=base_checkpoint, stage="init",
    )

    for d in (av_dir, ar_dir):
        if d.exists():
            shutil.rmtree(d)

    # AV: the base, unchanged.
    _copy_checkpoint(base_dir, av_dir)
    if not _has_tokenizer(av_dir):
        tokenizer.save_pretrained(av_dir)
    write_sidecar(av_dir, sidecar_dict(role="av", injection_scale=injection_scale, mse_scale=mse_scale, **common))

    # AR: truncated text-only backbone + identity value head, right padding.
    save_truncated_backbone(model, ar_dir, layer + 1, dtype=stored_dtype)
    write_identity_value_head(ar_dir, d_model, value_head_dtype)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(ar_dir)
    write_sidecar(
        ar_dir,
        sidecar_dict(role="ar", injection_scale=None, mse_scale=mse_scale, critic_suffix_ids=critic_suffix_ids,
                     **common),
    )
    return UntrainedPair(
        av=av_dir, ar=ar_dir, layer=layer, injection_scale=injection_scale, marker=marker,
        marker_id=int(marker_id), d_model=d_model, calibration_norm=calib,
    )


def read_config_json(model_dir: str | Path) -> dict[str, Any]:
    """config.json as a dict (tests and validators read it without building a config object)."""
    return json.loads((Path(model_dir) / "config.json").read_text())


__all__ = [
    "CALIBRATION_PROMPTS", "UntrainedPair", "VALUE_HEAD_NAME", "build_untrained_pair", "calibration_norms",
    "load_base", "read_config_json", "round_up_sig", "save_truncated_backbone",
    "write_identity_value_head",
]
