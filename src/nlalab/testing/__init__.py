"""Tiny release-layout NLA pairs (Qwen2, Gemma-3 text / multimodal wrapper, Llama) and defect builders.

Why: every loader, validator and metric must be tested on checkpoints shaped exactly like the
released kitft pairs, including their traps (K+1 blocks, no final norm, marker neighbours, BOS,
padding side), without network access or a GPU. A whole four-arch set builds in a few seconds.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Literal

import torch
import yaml

from nlalab.pairs.build import build_untrained_pair, load_base, save_truncated_backbone
from nlalab.pairs.sidecar import SIDECAR_NAME, write_sidecar
from nlalab.testing.models import ARCHES, make_base_model

Arch = Literal["qwen2", "gemma3_text", "gemma3_mm", "llama"]
Defect = Literal["missing_value_head", "wrong_marker_id", "ar_k_plus_2", "d_model_mismatch", "missing_sidecar"]
DEFECTS: tuple[str, ...] = ("missing_value_head", "wrong_marker_id", "ar_k_plus_2", "d_model_mismatch",
                            "missing_sidecar")


@dataclass(frozen=True)
class FixturePair:
    arch: str
    target: Path  # the base model (for gemma3_mm: the multimodal wrapper checkpoint)
    av: Path
    ar: Path
    layer: int


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Temporarily set torch's intra-op threads.

    Why: tiny matmuls gain nothing from threads, and on a shared 2-core box OpenMP spin-waits make
    a 4-layer forward take ~0.4 s with 2 threads versus ~2 ms with 1.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def build_fixture_pair(
    root: str | Path,
    arch: Arch,
    layer: int = 2,
    n_layers: int = 4,
    d_model: int = 64,
    seed: int = 0,
) -> FixturePair:
    """Base model in ``root/target``, untrained pair in ``root/pair/{av,ar}`` (K = ``layer``)."""
    if arch not in ARCHES:
        raise ValueError(f"Unknown arch {arch!r}; expected one of {ARCHES}.")
    root = Path(root)
    with torch_threads(1):
        target = make_base_model(arch, root / "target", n_layers=n_layers, d_model=d_model, seed=seed)
        pair = build_untrained_pair(target, root / "pair", layer, base_id=f"nlalab-testing/tiny-{arch}")
    return FixturePair(arch=arch, target=target, av=pair.av, ar=pair.ar, layer=layer)


def _edit_sidecar(model_dir: Path, edit) -> None:
    raw = yaml.safe_load((model_dir / SIDECAR_NAME).read_text())
    edit(raw)
    write_sidecar(model_dir, raw)


def make_defect(pair: FixturePair, defect: Defect, dest: str | Path) -> FixturePair:
    """Copy ``pair`` to ``dest/{av,ar}`` and introduce exactly one defect (the target is shared, not copied).

    - missing_value_head: ``ar/value_head.safetensors`` deleted.
    - wrong_marker_id: AV sidecar ``tokens.injection_token_id`` + 1.
    - ar_k_plus_2: AR config and weights rebuilt with K+2 blocks (the sidecar still says K).
    - d_model_mismatch: AV sidecar ``d_model`` = hidden_size + 1.
    - missing_sidecar: ``av/nla_meta.yaml`` deleted.
    """
    if defect not in DEFECTS:
        raise ValueError(f"Unknown defect {defect!r}; expected one of {DEFECTS}.")
    dest = Path(dest)
    av, ar = dest / "av", dest / "ar"
    for src, dst in ((pair.av, av), (pair.ar, ar)):
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    out = replace(pair, av=av, ar=ar)

    if defect == "missing_value_head":
        (ar / "value_head.safetensors").unlink()
    elif defect == "missing_sidecar":
        (av / SIDECAR_NAME).unlink()
    elif defect == "wrong_marker_id":
        def bump(d):
            d["tokens"]["injection_token_id"] += 1

        _edit_sidecar(av, bump)
    elif defect == "d_model_mismatch":
        _edit_sidecar(av, lambda d: d.__setitem__("d_model", int(d["d_model"]) + 1))
    elif defect == "ar_k_plus_2":
        with torch_threads(1):
            model, _ = load_base(pair.target)
            for f in ar.glob("model*.safetensors*"):
                f.unlink()
            (ar / "config.json").unlink()
            save_truncated_backbone(model, ar, pair.layer + 2)
    return out


def dispatch_layers(model: torch.nn.Module, devices: list):
    """Spread a loaded model over ``devices`` with accelerate hooks, as a ``device_map`` load does: embeddings
    (and rotary tables) on ``devices[0]``, block i on ``devices[i % n]`` (alternating, so every block boundary
    crosses devices), final norm after the last block, lm_head there too (on ``devices[0]`` when tied).

    Devices are CUDA ordinals or "cpu"; with every device the CPU the hooks are forced anyway, so the CPU
    suite runs the multi-device code paths (inputs and outputs moved by hooks, not by nlalab).
    """
    from accelerate import dispatch_model

    from nlalab.pairs import arch

    inner = arch.inner_model(model)
    prefix = next(n for n, m in model.named_modules() if m is inner)
    dmap: dict = {}
    last = devices[0]
    for i in range(len(inner.layers)):
        last = devices[i % len(devices)]
        dmap[f"{prefix}.layers.{i}"] = last
    for name, _ in inner.named_children():
        if name != "layers":
            dmap[f"{prefix}.{name}"] = last if name in arch.FINAL_NORM_NAMES else devices[0]
    head = getattr(model, "lm_head", None)
    tied = head is not None and getattr(head, "weight", None) is model.get_input_embeddings().weight
    for name, child in model.named_children():
        if child is not inner and any(True for _ in child.parameters()):
            dmap[name] = devices[0] if (child is not head or tied) else last
    model.to(devices[0] if devices[0] == "cpu" else f"cuda:{devices[0]}")  # off-map tensors stay with the inputs
    skip = getattr(model, "_skip_keys_device_placement", None)
    one = len({str(d) for d in devices}) == 1
    return dispatch_model(model, device_map=dmap, main_device=devices[0], force_hooks=one,
                          **({"skip_keys": list(skip)} if skip else {}))


__all__ = ["ARCHES", "DEFECTS", "FixturePair", "build_fixture_pair", "dispatch_layers", "make_defect",
           "torch_threads"]


def prefix_agreement(a, b) -> list[float]:
    """Per row: the fraction of its tokens before the first difference between two runs' token lists (how
    bf16 GPU rows are compared with ``loop``; tests/gpu and bench/gpu_agreement_diag.py)."""
    fr = []
    for x, y in zip(a, b):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        fr.append(n / max(len(x), len(y), 1))
    return fr


def chat_prompt_ids(tokenizer, texts) -> list[list[int]]:
    """Token ids of each text as one user turn with the generation prompt (the chat template's output may
    be a list or, in newer transformers, a BatchEncoding)."""
    out = []
    for t in texts:
        x = tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=True, add_generation_prompt=True)
        out.append(list(x["input_ids"]) if hasattr(x, "keys") else list(x))
    return out
