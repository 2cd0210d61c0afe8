"""Write trained models in the release layout, so ``nlalab validate`` / ``nlalab run`` take them like kitft's.

- AV dir: the full causal LM (adapters merged), its tokenizer and generation config, ``nla_meta.yaml``
  (role av, the source AV's marker, neighbours, templates and injection scale; ``stage`` sl or rl).
- AR dir: text-only config with ``num_hidden_layers = K+1``, embeddings and blocks 0..K (no final norm,
  no lm_head, as ``nlalab.pairs.build.save_truncated_backbone`` writes them), ``value_head.safetensors``
  (single key ``weight``), tokenizer with right padding, ``nla_meta.yaml`` (role ar, mse_scale,
  ``critic.extraction_layer_index``, ``critic_suffix_ids``).

For LoRA runs :func:`export_adapter_pack` also writes the adapters alone (small enough to ship in a
package) and :func:`materialize_adapter_pack` rebuilds the release-layout pair from a base model folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from nlalab.errors import NLALabError
from nlalab.pairs.adapter_pack import DTYPES, clear_dir, dtype_of, materialize_adapter_pack  # noqa: F401
from nlalab.pairs.build import VALUE_HEAD_NAME, save_truncated_backbone
from nlalab.pairs.load import AR, AV
from nlalab.pairs.sidecar import DEFAULT_AR_TEMPLATE, DEFAULT_AV_TEMPLATE, Sidecar, sidecar_dict, write_sidecar
from nlalab.train.common import merged_copy

_dtype = dtype_of
def _sidecar(sc: Sidecar, role: str, *, stage: str, trained_on: list[str], training: Optional[dict],
             critic_suffix_ids=None) -> dict[str, Any]:
    t = sc.tokens
    d = sidecar_dict(
        role=role, d_model=sc.d_model, layer=int(sc.layer) if sc.layer is not None else 0,
        injection_scale=sc.injection_scale if role == "av" else None, mse_scale=sc.mse_scale,
        injection_char=t.injection_char, injection_token_id=t.injection_token_id,
        left_id=t.injection_left_neighbor_id, right_id=t.injection_right_neighbor_id,
        critic_suffix_ids=critic_suffix_ids, base_checkpoint=sc.base_checkpoint,
        av_template=sc.av_template or DEFAULT_AV_TEMPLATE, ar_template=sc.ar_template or DEFAULT_AR_TEMPLATE,
        stage=stage, trained_on=trained_on, created_by="nlalab.train",
    )
    if training:
        d["training"] = training
    return d


_clear = clear_dir


def _recast_safetensors(path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import load_file, save_file

    if path.is_file():
        save_file({k: v.to(dtype).contiguous() for k, v in load_file(str(path)).items()}, str(path),
                  metadata={"format": "pt"})


def export_av(av: AV, out_dir: str | Path, *, peft=None, stage: str = "rl", trained_on: Optional[list[str]] = None,
              training: Optional[dict] = None, dtype: str = "fp32", av_sidecar: Optional[Sidecar] = None) -> Path:
    """The AV as a plain causal-LM folder + sidecar (adapters merged into a copy; training state untouched)."""
    out = Path(out_dir)
    _clear(out)
    model = merged_copy(av.model, peft)
    dt = _dtype(dtype)
    sd = {k: v.detach().to("cpu", dt).contiguous() for k, v in model.state_dict().items()}
    model.config.dtype = dt
    model.save_pretrained(out, state_dict=sd)
    av.tokenizer.save_pretrained(out)
    sc = av_sidecar or av.sidecar
    if sc.layer is None:
        raise NLALabError("The AV sidecar has no extraction_layer_index; cannot export.")
    write_sidecar(out, _sidecar(sc, "av", stage=stage, trained_on=trained_on or [], training=training))
    return out


def export_ar(ar: AR, out_dir: str | Path, *, peft=None, stage: str = "sl", trained_on: Optional[list[str]] = None,
              training: Optional[dict] = None, dtype: str = "fp32", head_dtype: str = "fp32") -> Path:
    """The AR as a truncated backbone + value head + sidecar (the release layout of kitft ARs)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    _clear(out)
    model = merged_copy(ar.model, peft)
    save_truncated_backbone(model, out, ar.layer + 1, dtype=_dtype(dtype))
    save_file({"weight": ar.value_head.weight.detach().to("cpu", _dtype(head_dtype)).contiguous()},
              str(out / VALUE_HEAD_NAME))
    tok = ar.tokenizer
    tok.padding_side = "right"
    tok.save_pretrained(out)
    write_sidecar(out, _sidecar(ar.sidecar, "ar", stage=stage, trained_on=trained_on or [], training=training,
                                critic_suffix_ids=ar.sidecar.tokens.critic_suffix_ids))
    return out


# ------------------------------------------------------------------------------------ adapter packs


def export_adapter_pack(out_dir: str | Path, *, av_adapters: list[Path], ar_adapters: list[Path], value_head: Path,
                        av_sidecar: Path, ar_sidecar: Path, base_id: str, layer: int, adapter_dtype: str = "bf16") -> Path:
    """Copy LoRA adapter folders (applied in order), the value head and both sidecars into one small folder.

    Adapter weights are stored in ``adapter_dtype`` (bf16 halves the pack; they are merged in fp32).
    """
    out = Path(out_dir)
    _clear(out)
    manifest = {"kind": "nlalab_adapter_pack", "version": 1, "base": base_id, "layer": layer,
                "adapter_dtype": adapter_dtype, "av_adapters": [], "ar_adapters": []}
    for role, adapters in (("av", av_adapters), ("ar", ar_adapters)):
        for i, a in enumerate(adapters):
            dst = out / f"{role}_adapter_{i}"
            shutil.copytree(a, dst, ignore=shutil.ignore_patterns("README.md"))
            if adapter_dtype != "fp32":
                _recast_safetensors(dst / "adapter_model.safetensors", _dtype(adapter_dtype))
            manifest[f"{role}_adapters"].append(dst.name)
    shutil.copy2(value_head, out / VALUE_HEAD_NAME)
    shutil.copy2(av_sidecar, out / "av_nla_meta.yaml")
    shutil.copy2(ar_sidecar, out / "ar_nla_meta.yaml")
    (out / "pack.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))
