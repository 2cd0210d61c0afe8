"""Fast engine knobs (``OPTIONS``, env overrides) and the process-wide device lock."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Optional

import torch
from nlalab.errors import NLALabError

# Process-wide device-state lock (data-parallel verbalization runs one engine per GPU, one thread each).
# CUDA allows one graph capture at a time per process, and ``torch.cuda.graph`` as well as our OOM paths
# call ``torch.cuda.empty_cache()``, which touches every device's allocator: so engine builds (weight
# fusion empties the cache, the Triton self-check compiles), graph captures (with their compile warm-up),
# engine teardown and cache emptying hold this lock. Replays, prefill and decode run unlocked.
DEVICE_LOCK = threading.RLock()


def on_device(device: torch.device):
    """Make ``device`` the current CUDA device (Triton launches and ``torch.cuda.graph`` use the current
    device, and a worker thread starts on cuda:0); a no-op off CUDA."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def empty_cache() -> None:
    """``torch.cuda.empty_cache()`` under ``DEVICE_LOCK`` (never while another thread captures a graph)."""
    if torch.cuda.is_available():
        with DEVICE_LOCK:
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ options


@dataclass
class EngineOptions:
    """Knobs of the fast engine (module default ``OPTIONS``; env vars override at engine build).

    - ``compile``: ``"all"`` (layer parts + head/sampler through ``torch.compile``), ``"sampler"`` (only the
      fused head + sampler), ``"none"``. Default on CUDA: ``NLALAB_FAST_COMPILE`` or ``"all"``; on CPU
      always ``"none"``. A compile failure falls back to ``"none"`` with a warning.
    - ``cuda_graphs``: capture the decode step (CUDA only). ``NLALAB_FAST_GRAPHS=0`` turns it off.
    - ``attention``: ``"auto"``, ``"shared"`` or ``"copy"`` (see the module docstring).
    - ``triton``: use the Triton decode-attention kernel for the shared layout (None: if it imports and
      passes its self-check; CUDA, bf16/fp16 only).
    - ``check_every``: decode steps between "all rows finished?" checks (one host sync each).
    - ``max_batch``: upper bound on rows per micro-batch when sized automatically.
    - ``compact``: eager (CPU) decoding drops finished rows once this fraction of the batch has ended
      (0 = never; the fixed-shape CUDA graphs never compact).
    - ``keep_state``: keep per-batch buffers and graphs between ``verbalize`` calls (faster repeated calls,
      holds GPU memory until ``release_engines``).
    - ``profile``: synchronise around prefill and decode so ``Stats`` times are device times.
    - ``fuse_weights``: while an engine lives, re-lay each layer's q/k/v and gate/up weights into one
      buffer each (the Parameters become row views of it, values unchanged), so each is one GEMM; restored
      to separate tensors when the engine is dropped (end of the ``verbalize`` call). None: on CUDA.
    """

    compile: Optional[str] = None
    cuda_graphs: Optional[bool] = None
    attention: str = "auto"
    triton: Optional[bool] = None
    check_every: int = 16
    max_batch: int = 512
    mem_fraction: float = 0.85
    keep_state: bool = False
    compact: float = 0.25
    profile: bool = False
    fuse_weights: Optional[bool] = None


OPTIONS = EngineOptions()


def _resolved_compile(device: torch.device) -> str:
    if device.type != "cuda":
        return "none"
    mode = OPTIONS.compile or os.environ.get("NLALAB_FAST_COMPILE", "all")
    mode = {"1": "all", "0": "none", "true": "all", "false": "none"}.get(str(mode).lower(), str(mode).lower())
    if mode not in ("all", "sampler", "none"):
        raise NLALabError(f"NLALAB_FAST_COMPILE must be all, sampler or none, got {mode!r}.")
    return mode


def _resolved_graphs(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    if OPTIONS.cuda_graphs is not None:
        return bool(OPTIONS.cuda_graphs)
    return os.environ.get("NLALAB_FAST_GRAPHS", "1") not in ("0", "false", "False")


def _sdpa_backends(device: torch.device):
    """Efficient/flash/math SDPA kernels only: cuDNN's was 5x slower on our short-query decode shapes."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
