"""Warm start: the SFT stages begin from an adapter pack's AV/AR LoRA weights and value head.

Why: one device session (~30 min) cannot run AR SFT + AV SFT + RL from scratch for the default pair; a
training run may therefore continue a pack trained earlier (``TrainConfig.init_from``), on new data, and
still export one adapter per role. The pack is checked against the run (layer, LoRA shape, one adapter per
role, width) before any model loads, and its content hash is recorded, so the lineage is in the record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from nlalab.errors import NLALabError
from nlalab.pairs.load import VALUE_HEAD_FILE as VALUE_HEAD, read_value_head


@dataclass(frozen=True)
class WarmPack:
    """A checked adapter pack to start from."""

    spec: str
    path: Path
    layer: int
    av_adapter: Path
    ar_adapter: Path
    sha256: str

    def record(self) -> dict:
        return {"init_from": self.spec, "path": str(self.path), "layer": self.layer, "sha256": self.sha256}


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def resolve_pack(spec: str) -> Path:
    """A pack folder (with ``pack.yaml``) or the name of a shipped pair."""
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "pack.yaml").is_file():
            raise NLALabError(f"init_from={spec}: {p} has no pack.yaml. Fix: point at an adapter pack "
                              "(a training run's adapter_pack/ folder) or name a shipped pair (nlalab ls).")
        return p
    from nlalab.pairs.shipped import SHIPPED, pack_dir

    if spec in SHIPPED:
        return pack_dir(spec)
    raise NLALabError(f"init_from={spec}: neither a folder nor a shipped pair. Fix: an adapter pack folder, or "
                      f"one of {', '.join(SHIPPED)}.")


def check_pack(spec: str, layer: int, lora_r: int, lora_alpha: float, target_modules: Optional[list[str]],
               lora_enabled: bool, sha256: Optional[str] = None) -> WarmPack:
    """Everything that can be checked from the files alone, before any model loads."""
    if not lora_enabled:
        raise NLALabError("init_from needs lora.enabled=true: a pack holds LoRA adapters. Fix: drop init_from, "
                          "or train with LoRA.")
    d = resolve_pack(spec)
    man = yaml.safe_load((d / "pack.yaml").read_text()) or {}
    if int(man.get("layer", -1)) != int(layer):
        raise NLALabError(f"init_from={spec}: the pack reads layer {man.get('layer')}, this run layer {layer}. "
                          f"Fix: --set layer={man.get('layer')}, or another pack.")
    adapters = {}
    for role in ("av", "ar"):
        names = man.get(f"{role}_adapters") or []
        if len(names) != 1:
            raise NLALabError(f"init_from={spec}: the pack has {len(names)} {role.upper()} adapters; a warm start "
                              "continues exactly one per role.")
        a = d / names[0]
        cfg_f, w_f = a / "adapter_config.json", a / "adapter_model.safetensors"
        if not (cfg_f.is_file() and w_f.is_file()):
            raise NLALabError(f"init_from={spec}: {a} lacks adapter_config.json or adapter_model.safetensors.")
        acfg = json.loads(cfg_f.read_text())
        if int(acfg.get("r", -1)) != int(lora_r) or float(acfg.get("lora_alpha", -1)) != float(lora_alpha):
            raise NLALabError(f"init_from={spec}: the {role.upper()} adapter has r={acfg.get('r')}, "
                              f"alpha={acfg.get('lora_alpha')}; this run lora.r={lora_r}, lora.alpha={lora_alpha}. "
                              "Fix: set lora.r/lora.alpha to the pack's.")
        if target_modules is not None and sorted(acfg.get("target_modules") or []) != sorted(target_modules):
            raise NLALabError(f"init_from={spec}: the {role.upper()} adapter targets "
                              f"{sorted(acfg.get('target_modules') or [])}; this run {sorted(target_modules)}. "
                              "Fix: set lora.target_modules to the pack's.")
        adapters[role] = a
    if not (d / VALUE_HEAD).is_file():
        raise NLALabError(f"init_from={spec}: {d / VALUE_HEAD} missing (the AR's value head).")
    files = [adapters["av"] / "adapter_model.safetensors", adapters["ar"] / "adapter_model.safetensors", d / VALUE_HEAD]
    digest = _digest(files)
    if sha256 and digest != sha256:
        raise NLALabError(f"init_from={spec}: this pack's content (sha256 {digest[:12]}…) is not the one the recipe "
                          f"continues ({sha256[:12]}…). Fix: restore that pack into a folder (scripts/restore_pack.sh; "
                          "docs/training.md, 'Warm starts') and pass the folder as init_from, or drop "
                          "init_from_sha256.")
    return WarmPack(spec=spec, path=d, layer=int(layer), av_adapter=adapters["av"], ar_adapter=adapters["ar"],
                    sha256=digest)


def _load_adapter(peft_model, adapter_dir: Path, role: str) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    own = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
    res = set_peft_model_state_dict(peft_model, sd)
    unexpected = list(getattr(res, "unexpected_keys", []) or [])
    missing = [k for k in (getattr(res, "missing_keys", []) or []) if "lora_" in k]
    if unexpected or missing or not sd:
        raise NLALabError(f"warm start: the {role.upper()} adapter in {adapter_dir} does not fit this model "
                          f"({len(missing)} LoRA tensors missing, {len(unexpected)} unexpected, e.g. "
                          f"{(missing + unexpected)[:2]}).")
    now = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    if own and all(torch.equal(own[k], now[k]) for k in own):
        raise NLALabError(f"warm start: loading {adapter_dir} changed no LoRA weight (names did not match).")


def load_av(tav, pack: WarmPack) -> None:
    """The pack's AV adapter into a freshly built trainable AV (``load_trainable_av`` with the same LoRA)."""
    _load_adapter(tav.peft, pack.av_adapter, "av")


def load_ar(tar, pack: WarmPack) -> None:
    """The pack's AR adapter and value head into a freshly built trainable AR (bias-free, as ``load_ar``
    builds it); ``read_value_head`` checks the head's key and its [d, d] shape."""
    _load_adapter(tar.peft, pack.ar_adapter, "ar")
    head = tar.ar.value_head
    w = read_value_head(pack.path, head.weight.shape[1])
    with torch.no_grad():
        head.weight.copy_(w.to(head.weight.dtype))
