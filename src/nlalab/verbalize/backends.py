"""Generation backends behind one registry: each declares what it can do, and ``resolve`` picks one.

A backend runs (vector, sample) rows with the injected vector (``rows``) and, when it declares ``plain``,
prompts of different lengths without injection (``plain_rows``: the blind control, corpus generation).
Callers ask the registry (``get``, ``resolve``, ``capabilities``) instead of comparing engine names, so a
new backend is one ``register`` call. ``auto`` takes the first backend of ``AUTO_ORDER[device type]``
that supports the model; on the CPU that is ``fast`` (shared-prefix prefill, static cache, eager: the
same tokens as ``loop`` in fp32, tests/unit/test_backends.py, and faster: bench/bench_cpu_demo.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from nlalab.errors import UsageError


@dataclass(frozen=True)
class Capabilities:
    """What a backend guarantees; the study and ``parallel`` read these, never the backend's name."""

    per_row_sampling: bool  # a row's tokens depend only on (seed, vector key, sample): batching/resume-proof
    multi_gpu: bool  # may run data parallel on replicas (needs per_row_sampling)
    devices: tuple[str, ...]  # torch device types it runs on
    dtypes: tuple[torch.dtype, ...]  # model dtypes it runs
    plain: bool  # plain mode: prompts of different lengths, no injection
    prefix_sharing: bool  # the prompt part shared by all rows is computed once
    # one model split over several devices (one process each); ``devices`` names them, no data parallelism
    tensor_parallel: bool = False


Rows = Iterator[tuple[list[int], list[int], torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Backend:
    name: str
    caps: Capabilities
    # None if the backend runs this model (an nn.Module), else why not
    unsupported: Callable[[object], Optional[str]]
    # rows(av, vectors, todo, keys_v, settings, stop) -> (vidx, sidx, tokens, done) per micro-batch, on the CPU
    rows: Callable[..., Rows]
    # plain_rows(model, tokenizer, prompts, eos_ids, todo, keys_v, settings) -> as ``rows`` (prompt index as vidx)
    plain_rows: Optional[Callable[..., Rows]] = None
    doc: str = ""


_REGISTRY: dict[str, Backend] = {}
# ``auto`` per device type: the first backend here that supports the model (and the mode)
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("fast", "loop"), "cpu": ("fast", "loop")}


def register(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Backend:
    b = _REGISTRY.get(name)
    if b is None:
        raise UsageError(f"Unknown generation engine {name!r}. Fix: use auto or one of {', '.join(_REGISTRY)}.")
    return b


def capabilities(name: str) -> Capabilities:
    return get(name).caps


def _device_type(model) -> str:
    from nlalab.pairs.arch import input_device

    return input_device(model).type


def resolve(name: str, model, plain: bool = False) -> str:
    """A concrete backend name for ``model``: ``auto`` -> the first of ``AUTO_ORDER`` that supports it (and
    plain mode when ``plain``); an explicit name stays, except that a backend without plain mode runs plain
    generation on ``loop`` (the reference path)."""
    if name != "auto":
        b = get(name)
        if plain and not b.caps.plain:
            return "loop"
        return name
    for cand in AUTO_ORDER.get(_device_type(model), ("loop",)):
        b = _REGISTRY.get(cand)
        if b is None or (plain and not b.caps.plain):
            continue
        if b.unsupported(model) is None:
            return cand
    return "loop"


def cpu_threads(default: int) -> int:
    """Threads for generation on the CPU. ``NLALAB_CPU_THREADS``: a number, or ``keep`` (torch's setting);
    default ``auto``: 1 thread when the machine is heavily oversubscribed (1-minute load average above twice
    the core count; our own threads count in it), else torch's setting. Why: decode runs thousands of small ops per token, and with more runnable
    threads than cores each parallel op waits for a descheduled worker -- measured on the shared 2-core
    machine at load ~6: 0.24-0.26 s per decode step with 1 thread against 0.35-3.7 s with 2 (SmolLM2-135M,
    32 rows). Thread count does not change which tokens are sampled (per-row streams; tested)."""
    import os

    spec = os.environ.get("NLALAB_CPU_THREADS", "auto").strip().lower()
    if spec in ("keep", ""):
        return default
    if spec == "auto":
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average on this platform
            return default
        return 1 if load > 2 * (os.cpu_count() or 1) else default
    if not spec.isdigit() or int(spec) < 1:
        raise UsageError(f"NLALAB_CPU_THREADS must be auto, keep or a positive number, got {spec!r}.")
    return int(spec)


class generation_threads:
    """Context: torch's intra-op threads set by ``cpu_threads`` while generating on the CPU, restored after."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.old = None

    def __enter__(self):
        if self.device_type == "cpu":
            self.old = torch.get_num_threads()
            n = cpu_threads(self.old)
            if n != self.old:
                torch.set_num_threads(n)
            else:
                self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            torch.set_num_threads(self.old)
        return False
