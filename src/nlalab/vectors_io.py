"""Read arbitrary vectors (probe directions, saved activations) from .npy, .pt/.pth or .safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from nlalab.errors import NLALabError, check_finite


def load_vectors(path: str | Path, key: Optional[str] = None) -> torch.Tensor:
    """fp32 [n, d]; a single [d] vector becomes [1, d]. ``key`` picks a tensor from a dict-like file."""
    p = Path(path)
    if not p.is_file():
        raise NLALabError(f"Vector file {p} does not exist.")
    suf = p.suffix.lower()
    if suf == ".npy":
        import numpy as np

        obj = torch.from_numpy(np.load(p))
    elif suf in (".pt", ".pth"):
        obj = torch.load(p, map_location="cpu", weights_only=True)
    elif suf == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(p))
    else:
        raise NLALabError(f"Unsupported vector file {p.name}: use .npy, .pt/.pth or .safetensors.")
    if isinstance(obj, dict):
        if key is None:
            if len(obj) != 1:
                raise NLALabError(f"{p} holds several tensors ({', '.join(obj)}); pick one with --key.")
            key = next(iter(obj))
        if key not in obj:
            raise NLALabError(f"{p} has no tensor {key!r}; it has {', '.join(obj)}.")
        obj = obj[key]
    if not isinstance(obj, torch.Tensor):
        raise NLALabError(f"{p} does not contain a tensor (found {type(obj).__name__}).")
    t = obj.detach().to(torch.float32)
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[0] == 0:
        raise NLALabError(f"Vectors in {p} have shape {tuple(obj.shape)}; expected [d] or [n, d] with n >= 1.")
    check_finite(t, f"Vectors in {p}")
    return t
