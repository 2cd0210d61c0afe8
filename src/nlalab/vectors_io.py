"""Read arbitrary vectors (probe directions, saved activations) from .npy, .pt/.pth or .safetensors.

Every bad file is one :class:`UsageError` line naming the file, what is wrong and the fix: a missing
file, bytes that are not the format its suffix says, an object (pickled) array, a non-numeric dtype,
the wrong number of dimensions, an all-zero row (its cosine and FVE are undefined) or NaN/Inf.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from nlalab.errors import UsageError

FORMATS = ".npy, .pt/.pth or .safetensors"


def _read_npy(p: Path):
    import numpy as np

    with open(p, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise UsageError(f"{p}: not a .npy file (it does not start with the NumPy magic bytes). "
                         "Fix: save the vectors with numpy.save, or give the file its real suffix.")
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise UsageError(f"{p}: holds an object array (Python objects, loaded only by unpickling). "
                             "Fix: save a numeric array, e.g. numpy.save(path, np.asarray(vectors, dtype=np.float32)).") from None
        raise UsageError(f"{p}: unreadable .npy ({str(e).splitlines()[0][:120]}). Fix: save it again with numpy.save.") from None
    except (OSError, EOFError) as e:
        raise UsageError(f"{p}: truncated or corrupt .npy ({str(e).splitlines()[0][:120]}). "
                         "Fix: save it again with numpy.save.") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        kind = getattr(arr, "dtype", type(arr).__name__)
        raise UsageError(f"{p}: holds {kind} values, expected numbers. Fix: save a float array.")
    return torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32, copy=False))


def _read_pt(p: Path):
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError for bad bytes
        raise UsageError(f"{p}: not a readable torch file ({str(e).splitlines()[0][:120]}). "
                         "Fix: save a tensor or a dict of tensors with torch.save.") from None


def _read_safetensors(p: Path):
    from safetensors.torch import load_file

    from nlalab.rundir.io import check_safetensors

    fix = "save the vectors again with safetensors.torch.save_file"
    try:
        check_safetensors(p, fix)
        return load_file(str(p))
    except Exception as e:
        msg = e.line() if hasattr(e, "line") else f"{p}: unreadable safetensors ({str(e).splitlines()[0][:120]}). Fix: {fix}."
        raise UsageError(msg) from None


def load_vectors(path: str | Path, key: Optional[str] = None) -> torch.Tensor:
    """fp32 [n, d]; a single [d] vector becomes [1, d]. ``key`` picks a tensor from a dict-like file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"Vector file {p} does not exist. Fix: check the path.")
    suf = p.suffix.lower()
    if suf == ".npy":
        obj = _read_npy(p)
    elif suf in (".pt", ".pth"):
        obj = _read_pt(p)
    elif suf == ".safetensors":
        obj = _read_safetensors(p)
    else:
        raise UsageError(f"Unsupported vector file {p.name}: use {FORMATS}.")
    if isinstance(obj, dict):
        if key is None:
            if len(obj) != 1:
                raise UsageError(f"{p} holds several tensors ({', '.join(map(str, obj))}); pick one with --key.")
            key = next(iter(obj))
        if key not in obj:
            raise UsageError(f"{p} has no tensor {key!r}; it has {', '.join(map(str, obj))}. Fix: pass one of them with --key.")
        obj = obj[key]
    if not isinstance(obj, torch.Tensor):
        raise UsageError(f"{p} does not contain a tensor (found {type(obj).__name__}). Fix: save a tensor.")
    if obj.is_complex() or obj.dtype == torch.bool:
        raise UsageError(f"{p}: holds {obj.dtype} values, expected real numbers. Fix: save a float tensor.")
    t = obj.detach().to(torch.float32)
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise UsageError(f"Vectors in {p} have shape {tuple(obj.shape)}; expected [d] or [n, d] with n, d >= 1. "
                         "Fix: save one vector per row.")
    check_vectors(t, f"Vectors in {p}")
    return t


def _rows(mask: torch.Tensor) -> str:
    rows = mask.nonzero().flatten().tolist()
    return f"{rows[:10]}{'...' if len(rows) > 10 else ''}"


def check_vectors(t: torch.Tensor, what: str) -> None:
    """Refuse NaN/Inf and all-zero rows of an [n, d] tensor with one line (shape and rows named)."""
    shape = f"(n={t.shape[0]}, d={t.shape[1]})"
    bad = ~torch.isfinite(t).all(dim=-1)
    if bad.any():
        raise UsageError(f"{what} {shape} contain NaN or Inf values (rows {_rows(bad)}). Fix: check the source "
                         "of the vectors; nlalab never imputes non-finite values.")
    zero = (t == 0).all(dim=-1)
    if zero.any():
        raise UsageError(f"{what} {shape}: rows {_rows(zero)} are all zeros (no direction: cosine and FVE are "
                         "undefined). Fix: drop those rows.")
