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
      fused head + sampler), ``"none"``, or ``"auto"``: ``"all"`` for a call that decodes at least
      ``compile_min_steps`` steps (micro-batches x max_new_tokens), else ``"none"`` (CUDA graphs either
      way). Default on CUDA: ``NLALAB_FAST_COMPILE`` or ``"auto"``; on CPU always ``"none"``. A compile
      failure falls back to ``"none"`` with a warning.
    - ``compile_min_steps``: measured on one H200 (7B shape, 150 rows): compiling the layers saves ~2.4 ms
      per decode step (6.5 vs 9.2 ms) and costs ~13 s in a fresh process (the V1 study's two 285-row
      batches: 400 steps, ~1 s saved for ~14 s of compile), so a call compiles from 4000 steps on.
    - ``cuda_graphs``: capture the decode step (CUDA only). ``NLALAB_FAST_GRAPHS=0`` turns it off.
    - ``attention``: ``"auto"``, ``"shared"`` or ``"copy"`` (see the module docstring).
    - ``triton``: use the Triton decode-attention kernel for the shared layout (None: if it imports and
      passes its self-check; CUDA, bf16/fp16 only).
    - ``check_every``: decode steps between "all rows finished?" checks (one host sync each).
    - ``max_batch``: upper bound on rows per micro-batch when sized automatically.
    - ``cpu_batch``: rows per micro-batch on the CPU (``GenerationSettings.fast_batch_size`` overrides it;
      ``batch_size`` is the loop/hf engines' knob). Measured on a 2-core AVX-512 Xeon with the offline
      default (SmolLM2-135M, fp32, 128 new tokens), with finished rows dropped and the shared-prefix layout:
      128 AV rows took 44.6 s at 128 rows per batch against 50.1 s at 64 (same tokens), 240 rows 81.5 s at
      120 against 86.1 s in one 240-row batch; the blind control's 100 rows 39.0 s in one batch against 46.7
      s in two of 50. So micro-batches of up to 128 rows, in equal chunks.
    - ``compact``: eager (CPU) decoding drops finished rows once this fraction of the batch has ended
      (0 = never; the fixed-shape CUDA graphs never compact).
    - ``cpu_screen``: eager CPU decoding samples through ``maths._sample_screened`` (float64 scores only for
      the tokens that can win; the same tokens as the full path) on reused [B, V] buffers. None: on the CPU.
    - ``cpu_bf16_head``: with the screen, sample from bf16 logits with a proven error bound and exact fp32
      logits for the few tokens that can win (``fast.head``; the same tokens as the full fp32 head). None:
      where its build-time checks pass and bf16 is >= 1.5x faster here (AMX/AVX512-BF16 CPUs); True: the
      exactness checks only (tests).
    - ``gpu_screen``: CUDA decoding samples through the Triton sampler of ``fast.sampler_kernel`` (fp32
      scores for the whole vocabulary, float64 ones only near each row's best; the same tokens as the full
      float64 pass). None: where Triton imports and the engine's self-check passes.
    - ``dedup_prefill``: rows whose prompt is identical (the K samples of one activation, the blind
      control's samples of one prompt, padding rows) share one prefill; their K/V and last hidden state
      are copied. The same tokens on the CPU (MKL's rows do not depend on the batch at prefill sizes;
      tested); on GPUs within the documented bf16 agreement.
    - ``keep_state``: keep per-batch buffers and graphs between ``verbalize`` calls (faster repeated calls,
      holds GPU memory until ``release_engines``).
    - ``profile``: synchronise around prefill and decode so ``Stats`` times are device times.
    - ``trace``: a list to which every ``generate`` (and plain-mode batch) appends its rows, batch, steps and
      prefill/capture/decode seconds (``bench/bench_study.py --trace``); None: off.
    - ``fuse_weights``: while an engine lives, re-lay each layer's q/k/v and gate/up weights into one
      buffer each (the Parameters become row views of it, values unchanged), so each is one GEMM; restored
      to separate tensors when the engine is dropped (end of the ``verbalize`` call). None: on (CPU too: MKL's
      fp32 GEMM gives each output column the same bits whichever columns share the call, checked for 1-256
      rows, and the fused gate/up GEMM is ~10 % faster at 60-128 rows).
    """

    compile: Optional[str] = None
    compile_min_steps: int = 4000
    cuda_graphs: Optional[bool] = None
    attention: str = "auto"
    triton: Optional[bool] = None
    check_every: int = 16
    max_batch: int = 512
    cpu_batch: int = 128
    mem_fraction: float = 0.85
    keep_state: bool = False
    compact: float = 0.25
    cpu_screen: Optional[bool] = None
    cpu_bf16_head: Optional[bool] = None
    gpu_screen: Optional[bool] = None
    dedup_prefill: bool = True
    profile: bool = False
    fuse_weights: Optional[bool] = None
    trace: Optional[list] = None


OPTIONS = EngineOptions()


def _resolved_compile(device: torch.device) -> str:
    if device.type != "cuda":
        return "none"
    mode = OPTIONS.compile or os.environ.get("NLALAB_FAST_COMPILE", "auto")
    mode = {"1": "all", "0": "none", "true": "all", "false": "none"}.get(str(mode).lower(), str(mode).lower())
    if mode not in ("all", "sampler", "none", "auto"):
        raise NLALabError(f"NLALAB_FAST_COMPILE must be auto, all, sampler or none, got {mode!r}.")
    return mode


def _resolved_graphs(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    if OPTIONS.cuda_graphs is not None:
        return bool(OPTIONS.cuda_graphs)
    return os.environ.get("NLALAB_FAST_GRAPHS", "1") not in ("0", "false", "False")
