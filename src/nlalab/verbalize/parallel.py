"""Data-parallel verbalization: one replica of the AV per GPU, one thread per GPU, results merged in order.

When the AV fits on one GPU and several are visible, ``verbalize`` (``GenerationSettings.devices``,
default ``"auto"``) splits its (vector, sample) rows into contiguous shards of near-equal size, one per
device, and runs the normal one-device path (``generate.iter_rows``: the fast engine, or the loop engine)
on each shard in its own Python thread. The GPU work of the threads overlaps: CUDA kernels, graph replays
and synchronisations release the GIL, and the host work per decode step is one graph replay.

- **Replicas.** The AV's model is copied to each other device once per call (``replicate_model``:
  ``copy.deepcopy`` with every Parameter and buffer pre-placed on the target device, so the source device
  never holds a second copy; tied weights stay tied); tokenizer, prompt ids, marker position, injection
  scale and end-of-turn ids are shared. No reload from disk. Replicas are freed when the call ends (and by
  ``nlalab.pairs.load.release`` of the source model). A replica that does not fit (CUDA OOM) drops that
  device with a warning. Hooks registered on the AV's modules are copied with it (they then also run on
  the replicas, in their worker threads).
- **Exactness.** Every row draws from its own counter-based noise stream (``sampling``), so a row's tokens
  do not depend on which shard or micro-batch it ran in: on the CPU the records are bitwise those of a
  one-device run (tests/unit/test_parallel.py). On GPUs the kernels of another micro-batch shape may round
  differently in bf16 (as with ``fast_batch_size``), so a row can leave the one-GPU row at a near-tie.
- **Order.** The calling thread alone converts tokens to records and calls ``on_batch``, in (vector,
  sample) order: batches of a later shard wait until every earlier shard has been handed over, so
  incremental writes (the study's JSONL logs) are in the same order as on one device. ``skip`` (resume)
  works as before: only the rows left are sharded.
- **Errors.** A worker's exception stops the other workers after their current micro-batch; the batches
  already finished are still handed to ``on_batch`` (so a resume does not redo them), then the exception
  is raised in the calling thread. CUDA out-of-memory is handled per device, as on one device (the
  micro-batch of that device is halved and retried).
- **Thread safety of the fast engine** (``engine.DEVICE_LOCK``): one engine per model (so per replica),
  built under a process-wide lock; graph captures (with their compile warm-up) one at a time, each on the
  engine's own capture stream in ``thread_local`` capture mode (other threads may allocate and synchronise
  on their GPUs meanwhile); ``empty_cache`` never during a capture; each worker makes its device current
  (Triton launches on the current device). ``torch.compile`` is not thread safe, so every call of compiled
  code that may (re)compile (prefill's head, the warm-up before a capture) holds the lock too: the step
  functions are compiled once per device, one device at a time (the first call in a process pays one
  compile per GPU), and the decode steps themselves are graph replays, which run concurrently. The SDPA
  backend choice is global torch state, so it is set once around all threads.

A backend that does not declare ``multi_gpu`` and per-row sampling (``hf``: its sampling depends on
batch composition) is never split (``nlalab.verbalize.backends``).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import gc
import os
import queue
import threading
import time
import warnings
import weakref
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from nlalab.errors import NLALabError
from nlalab.pairs import arch
from nlalab.verbalize import fast
from nlalab.verbalize.generate import iter_rows

DeviceSpec = Union[None, str, int, Sequence[Union[str, torch.device]]]

# "auto" gives each GPU at least this many rows (fewer GPUs for small calls). A decode step streams every
# weight whatever the row count, so splitting pays only when one GPU would need several micro-batches:
# measured on 2x H200, Qwen2.5-7B shape, 200 tokens: 150 rows -> 0.94x (75 + 75 rows cost what 150 do),
# 600 rows -> 1.61x (bench/results/qwen2.5-7b_h200_dp2.json).
AUTO_MIN_ROWS_PER_DEVICE = 256

_LAST: list = [None]
# source model -> replicas alive right now (so ``release`` of the source also frees them)
_LIVE: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()


def _splittable(engine: str) -> bool:
    """Rows may be split over devices only on a backend that samples per row and declares multi-GPU."""
    from nlalab.verbalize import backends

    caps = backends.capabilities(engine) if engine != "auto" else None
    return caps is None or (caps.multi_gpu and caps.per_row_sampling and not caps.tensor_parallel)


def last_info() -> Optional[dict]:
    """What the most recent ``verbalize`` call did: devices, rows and seconds per device, replication time
    (one device: its name and rows; None before any call)."""
    return None if _LAST[0] is None else dict(_LAST[0])


def note_single(device: Union[str, torch.device], n_rows: int, engine: str, replicate_s: float = 0.0) -> None:
    """Record a one-device ``verbalize`` call, so ``last_info`` always describes the latest call."""
    _LAST[0] = dict(devices=[str(_norm(device))], rows=[n_rows], seconds=[None], replicate_s=round(replicate_s, 3),
                    engine=engine)


# ------------------------------------------------------------------------------------------ devices


def _norm(d: Union[str, torch.device]) -> torch.device:
    d = torch.device(d)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return d


def replicate_unsupported_reason(model: nn.Module) -> Optional[str]:
    """None if ``model`` can be copied whole to another device, else why not."""
    devs = {t.device for t in model.parameters()} | {t.device for t in model.buffers()}
    if len(devs) > 1:
        return "its weights are on several devices (device_map sharding)"
    if any(d.type == "meta" for d in devs):
        return "its weights were released (meta device)"
    if any(getattr(m, "_hf_hook", None) is not None for m in model.modules()):
        return "it has accelerate dispatch hooks (device_map)"
    return None


def _distributed() -> bool:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return True
    except Exception:  # pragma: no cover
        pass
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _all_gpus(home: torch.device) -> list[torch.device]:
    """The AV's GPU first, then every other visible GPU in index order."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [home] + [torch.device("cuda", i) for i in range(n) if i != home.index]


def resolve_devices(spec: DeviceSpec, av, engine: str, n_rows: Optional[int] = None) -> list[torch.device]:
    """The devices a ``verbalize`` call runs on (the first is where the AV itself is, if it is listed).

    ``spec`` (``GenerationSettings.devices``, ``nlalab run --verbalize-devices``):
    - ``"auto"`` (default): every visible GPU when the AV is on one CUDA device, the first (an AV put on
      another GPU on purpose stays there), was loaded for inference (no parameter requires grad), is not
      sharded, the engine is not ``hf`` and the process is not one rank of ``torch.distributed``; else just
      the AV's device. Each GPU gets at least ``AUTO_MIN_ROWS_PER_DEVICE`` rows (fewer GPUs for small
      calls). (Limit the GPUs with ``CUDA_VISIBLE_DEVICES`` or an explicit list.)
    - ``"all"``: every visible GPU; an error where the AV is not on one CUDA device, is sharded or the
      engine is ``hf``.
    - ``None`` / ``"none"``: the AV's device only.
    - a count (``2`` or ``"2"``): that many GPUs, the AV's first.
    - devices: ``"cuda:0,cuda:1"`` or a list (``["cpu", "cpu"]`` runs two CPU threads: for tests).
    ``engine`` is the resolved engine. At most ``n_rows`` devices are used (each gets at least one row).
    """
    home = _norm(arch.input_device(av.model))
    key = spec.strip().lower() if isinstance(spec, str) else spec
    if key is None or key in ("", "none", "single", "off", "1") or (isinstance(key, int) and key == 1):
        return [home]
    if isinstance(key, str) and key.isdigit():
        key = int(key)
    hard = None
    if home.type != "cuda":
        hard = f"the AV is on {home}, not on a CUDA device"
    elif not _splittable(engine):
        hard = (f"engine {engine!r} samples from torch's global RNG per batch, so splitting the rows would "
                "change them")
    else:
        hard = replicate_unsupported_reason(av.model)
    if key == "auto":
        if hard or home.index != 0 or _distributed() or any(p.requires_grad for p in av.model.parameters()):
            return [home]
        devs = _all_gpus(home)
        if n_rows is not None:
            devs = devs[:max(1, -(-int(n_rows) // AUTO_MIN_ROWS_PER_DEVICE))]
    elif key == "all" or isinstance(key, int):
        if hard:
            raise NLALabError(f"Cannot verbalize on several GPUs: {hard}. Fix: --verbalize-devices none.")
        devs = _all_gpus(home)
        if isinstance(key, int):
            if key < 1:
                raise NLALabError(f"--verbalize-devices: a GPU count must be >= 1, got {key}.")
            if key > len(devs):
                raise NLALabError(f"--verbalize-devices {key}: only {len(devs)} GPU(s) visible.")
            devs = devs[:key]
    else:
        if isinstance(key, str):
            parts = [p.strip() for p in key.split(",") if p.strip()]
        else:
            parts = [key] if isinstance(key, torch.device) else list(key)
        if not parts:
            raise NLALabError(f"--verbalize-devices: no device in {spec!r}.")
        try:
            devs = [_norm(p) for p in parts]
        except (RuntimeError, ValueError) as e:
            raise NLALabError(f"--verbalize-devices: {e}. Use auto, all, none, a GPU count or "
                              "a comma list such as cuda:0,cuda:1.") from None
        n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for d in devs:
            if d.type == "cuda" and d.index >= n_gpu:
                raise NLALabError(f"--verbalize-devices: {d} is not visible ({n_gpu} GPU(s)).")
        cuda = [d for d in devs if d.type == "cuda"]
        if len(set(cuda)) != len(cuda):
            raise NLALabError("--verbalize-devices: list each GPU once (two threads on one GPU share its "
                              "streams and gain nothing).")
        if len(devs) > 1:
            if not _splittable(engine):
                raise NLALabError(f"Cannot verbalize on several devices with engine {engine!r} (its sampling "
                                  "depends on batch composition). Use engine fast or loop.")
            why = replicate_unsupported_reason(av.model)
            if why:
                raise NLALabError(f"Cannot replicate the AV: {why}. Fix: --verbalize-devices none.")
    if n_rows is not None:
        devs = devs[:max(1, min(len(devs), int(n_rows)))]
    return devs


# ----------------------------------------------------------------------------------------- replicas


def replicate_model(model: nn.Module, device: Union[str, torch.device]) -> nn.Module:
    """A copy of ``model`` on ``device`` for inference, without a second copy on the source device.

    Every Parameter and buffer is placed on ``device`` first and handed to ``copy.deepcopy`` through its
    memo, so the copy is made straight onto the target (tied parameters are one object, so they stay
    tied). On the source's own device the replica's Parameters share the source's storage (read-only use);
    buffers are always cloned."""
    device = _norm(device)
    memo: dict = {}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in memo:
                t = p.detach()
                memo[id(p)] = nn.Parameter(t if t.device == device else t.to(device), requires_grad=False)
        for b in model.buffers():
            if id(b) not in memo:
                memo[id(b)] = b.detach().to(device, copy=True)
        rep = copy.deepcopy(model, memo)
        rep.to(device)  # anything registered that the memo did not cover
        for mod in rep.modules():  # plain tensor attributes (not registered) follow the weights too
            for name, val in list(vars(mod).items()):
                if isinstance(val, torch.Tensor) and not isinstance(val, nn.Parameter) and val.device != device \
                        and val.device.type != "cpu":
                    setattr(mod, name, val.to(device))
    rep.eval()
    rep.requires_grad_(False)
    return rep


def replicate_av(av, device: Union[str, torch.device]):
    """The AV handle with a replica of its model on ``device`` (everything else shared)."""
    rep = copy.copy(av)
    rep.model = replicate_model(av.model, device)
    return rep


def _free(models: Sequence[nn.Module]) -> None:
    """Free replicas now: drop their engines, move their weights to the meta device, empty the CUDA cache
    (like ``pairs.load.release`` without its ``gc.collect()``, which costs ~0.1-0.3 s per call)."""
    if not models:
        return
    for m in models:
        fast.release_engines(m)
        try:
            m.to("meta")
        except Exception:  # pragma: no cover - best effort
            pass
    fast.empty_cache()


def release_replicas(model: Optional[nn.Module] = None) -> None:
    """Free the replicas made from ``model`` (all if None) that are still alive (normally none: each call
    frees its own)."""
    keys = list(_LIVE.keys()) if model is None else [model]
    for m in keys:
        reps = _LIVE.pop(m, None) or []
        _free(reps)


# ------------------------------------------------------------------------------------------ running


def split(todo: Sequence, n: int) -> list[list]:
    """``todo`` cut into ``n`` contiguous shards whose sizes differ by at most one (the first ones larger)."""
    n = max(1, min(int(n), len(todo))) if todo else 1
    q, r = divmod(len(todo), n)
    out, pos = [], 0
    for j in range(n):
        m = q + (1 if j < r else 0)
        out.append(list(todo[pos:pos + m]))
        pos += m
    return out


def _worker(j: int, av_j, device: torch.device, vectors: torch.Tensor, shard: list, keys_v: Sequence[int],
            settings, engine: str, out: "queue.Queue", stop: threading.Event) -> None:
    t0 = time.perf_counter()
    try:

        if device.type == "cuda":
            torch.cuda.set_device(device)  # this thread's current device (Triton, graph capture)
        rows = iter_rows(av_j, vectors, shard, keys_v, settings, engine, stop=stop)
        with contextlib.closing(rows):
            for batch in rows:
                out.put(("rows", j, batch))
                if stop.is_set():
                    break
        out.put(("done", j, time.perf_counter() - t0))
    except BaseException as e:  # noqa: BLE001 - handed to the calling thread, which raises it
        out.put(("error", j, e))


def iter_parallel(av, vectors: torch.Tensor, todo: Sequence[tuple[int, int]], keys_v: Sequence[int], settings,
                  engine: str, devices: Sequence[Union[str, torch.device]],
                  on_rows: Optional[Callable[[int], None]] = None,
                  ) -> Iterator[tuple[list[int], list[int], torch.Tensor, torch.Tensor]]:
    """``generate.iter_rows`` over several devices: yields (vidx, sidx, tokens, done) per micro-batch, on
    the CPU, in ``todo`` order, from the calling thread.

    ``engine`` is resolved (fast, loop); ``devices`` as from ``resolve_devices``; ``on_rows(n)`` is called
    (in the calling thread) as soon as a worker finishes n rows, before they are yielded in order (for a
    progress bar). Close the generator when stopping early: it stops the workers and frees the replicas."""

    todo = list(todo)
    if not todo:
        return
    if not _splittable(engine):
        raise NLALabError(f"engine {engine!r} cannot run data parallel (its sampling depends on batch composition).")
    home = _norm(arch.input_device(av.model))
    devices = [_norm(d) for d in devices][:len(todo)]
    t0 = time.perf_counter()
    avs, devs, reps = [], [], []
    try:
        for d in devices:
            if d == home and not any(a is av for a in avs):
                avs.append(av)
                devs.append(d)
                continue
            oom = False
            try:
                avs.append(replicate_av(av, d))
            except torch.cuda.OutOfMemoryError:
                oom = True
            if oom:  # outside the except block, so the partial replica is unreferenced
                gc.collect()
                fast.empty_cache()
                warnings.warn(f"data-parallel verbalization: the AV does not fit on {d} (CUDA out of memory); "
                              "running without it.")
                continue
            devs.append(d)
            reps.append(avs[-1].model)
    except BaseException:
        _free(reps)
        raise
    replicate_s = time.perf_counter() - t0
    if reps:
        _LIVE.setdefault(av.model, []).extend(reps)
    if len(avs) == 1 and avs[0] is av:  # the other devices did not fit a replica
        note_single(home, len(todo), engine, replicate_s)
        yield from iter_rows(av, vectors, todo, keys_v, settings, engine)
        return
    vecs = vectors.detach().to("cpu")
    shards = split(todo, len(avs))
    W = len(shards)
    avs, devs = avs[:W], devs[:W]
    info = dict(devices=[str(d) for d in devs], rows=[len(s) for s in shards], seconds=[None] * W,
                replicate_s=round(replicate_s, 3), engine=engine)
    _LAST[0] = info
    q: "queue.Queue" = queue.Queue()
    stop = threading.Event()
    threads = [threading.Thread(target=_worker, name=f"nlalab-verbalize-{d}", daemon=True,
                                args=(j, avs[j], devs[j], vecs, shards[j], keys_v, settings, engine, q, stop))
               for j, d in enumerate(devs)]
    pending = [collections.deque() for _ in range(W)]
    finished = [False] * W
    nxt = 0
    error: Optional[BaseException] = None

    def take(item) -> Optional[BaseException]:
        kind, j, payload = item
        if kind == "rows":
            pending[j].append(payload)
            if on_rows is not None:
                on_rows(len(payload[0]))
        elif kind == "done":
            finished[j] = True
            info["seconds"][j] = round(payload, 3)
        else:
            if hasattr(payload, "add_note"):
                payload.add_note(f"(raised by the verbalization worker on {devs[j]})")
            return payload
        return None

    stack = contextlib.ExitStack()
    try:
        if engine == "fast" and any(d.type == "cuda" for d in devs):
            # global torch state: set once here, so the workers' own (nested) settings never undo each other
            stack.enter_context(arch.sdpa_backends("cuda"))
        for t in threads:
            t.start()
        while nxt < W:
            if pending[nxt]:
                yield pending[nxt].popleft()
                continue
            if finished[nxt]:
                nxt += 1
                continue
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                dead = [j for j, t in enumerate(threads) if not t.is_alive() and not finished[j]]
                if not dead:
                    continue
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    error = NLALabError(f"verbalization worker on {devs[dead[0]]} ended without a result.")
                    break
            error = take(item)
            if error is not None:
                break
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:  # started
                t.join()
        stack.close()
        if reps:
            live = _LIVE.get(av.model, [])
            for r in reps:
                if any(x is r for x in live):
                    live.remove(r)
            if not live:
                _LIVE.pop(av.model, None)
            _free(reps)
    if error is not None:
        # hand over what the workers finished (in order), so a resume does not redo it; then raise
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if item[0] == "rows":
                take(item)
        for j in range(nxt, W):
            while pending[j]:
                yield pending[j].popleft()
        raise error
