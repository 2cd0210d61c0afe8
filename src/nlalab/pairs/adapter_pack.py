"""Rebuild a release-layout pair from a base model and an adapter pack (LoRA adapters, value head, sidecars),
as nlalab ships its offline default pair. Lives in pairs/ (not train/) because loading a shipped pair must
not need the trainer."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

from nlalab.errors import NLALabError
from nlalab.pairs.build import VALUE_HEAD_NAME, save_truncated_backbone

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise NLALabError(f"export dtype {name!r}: use fp32, bf16 or fp16.") from None


def clear_dir(d: Path) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)


def materialize_adapter_pack(pack_dir: str | Path, base_dir: str | Path, out_dir: str | Path,
                             dtype: str = "fp32") -> tuple[Path, Path]:
    """Base model + pack -> ``out_dir/{av,ar}`` in the release layout (adapters merged)."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from nlalab.pairs import arch
    from nlalab.pairs.load import quiet_transformers

    pack, base, out = Path(pack_dir), Path(base_dir), Path(out_dir)
    man = yaml.safe_load((pack / "pack.yaml").read_text())
    layer = int(man["layer"])
    tok = AutoTokenizer.from_pretrained(base)
    # AV: full base + AV adapters in order.
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    for name in man["av_adapters"]:
        model = PeftModel.from_pretrained(model, pack / name).merge_and_unload()
    av_dir = out / "av"
    clear_dir(av_dir)
    dt = dtype_of(dtype)
    model.save_pretrained(av_dir, state_dict={k: v.to(dt).contiguous() for k, v in model.state_dict().items()})
    tok.save_pretrained(av_dir)
    shutil.copy2(pack / "av_nla_meta.yaml", av_dir / "nla_meta.yaml")
    # AR: truncated base (K+1 blocks) + AR adapters in order + value head.
    cfg = arch.truncated_text_config(AutoConfig.from_pretrained(base), layer + 1)
    with quiet_transformers():  # blocks after K are "unexpected" by design
        ar_model = AutoModelForCausalLM.from_pretrained(base, config=cfg, dtype=torch.float32)
    arch.strip_head_and_norm(ar_model)
    for name in man["ar_adapters"]:
        ar_model = PeftModel.from_pretrained(ar_model, pack / name).merge_and_unload()
    ar_dir = out / "ar"
    clear_dir(ar_dir)
    save_truncated_backbone(ar_model, ar_dir, layer + 1, dtype=dt)
    shutil.copy2(pack / VALUE_HEAD_NAME, ar_dir / VALUE_HEAD_NAME)
    tok.padding_side = "right"
    tok.save_pretrained(ar_dir)
    shutil.copy2(pack / "ar_nla_meta.yaml", ar_dir / "nla_meta.yaml")
    return av_dir, ar_dir
