"""The engine registry (one engine per model), micro-batch sizing and the row runner ``iter_fast``."""

from __future__ import annotations

import gc
import math
import warnings
import weakref
from typing import Iterator, Optional, Sequence

import torch
from nlalab.errors import NLALabError
from nlalab.pairs import arch
from nlalab.verbalize.fast.engine import FastEngine
from nlalab.verbalize.fast.options import DEVICE_LOCK, OPTIONS, empty_cache, on_device
from torch import nn

# --------------------------------------------------------------------------------- engine registry

_ENGINES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def get_engine(av) -> FastEngine:
    """The (cached) engine of an AV: its prefix K/V, rotary tables, compiled functions and graphs."""
    key = (tuple(int(i) for i in av.prompt_ids), int(av.marker_pos))
    eng = _ENGINES.get(av.model, {}).get(key)
    if eng is None or not eng.alive():
        # built under DEVICE_LOCK (weight fusion empties the CUDA cache; the Triton self-check launches on
        # the current device), with the model's device current
        with DEVICE_LOCK, on_device(arch.input_device(av.model)):
            release_engines(av.model)  # one engine per model: it may have re-laid the model's weights
            eng = FastEngine(av.model, av.prompt_ids, av.marker_pos)
            _ENGINES[av.model] = {key: eng}
    return eng


def end_call(av) -> None:
    """After a ``verbalize`` call: drop the AV's engines (buffers, graphs, prefix K/V and the references to
    its Parameters) unless ``OPTIONS.keep_state``, so releasing the AV frees all of its GPU memory. The
    compiled step functions stay (process-wide), so the next call only re-captures its graph."""
    if OPTIONS.keep_state:
        return
    release_engines(av.model)


def release_engines(model: Optional[nn.Module] = None) -> None:
    """Drop cached engines (all, or one model's), freeing their buffers, graphs and prefix K/V."""
    with DEVICE_LOCK:
        per = list(_ENGINES.values()) if model is None else [_ENGINES.get(model, {})]
        for engines in per:
            for eng in list(engines.values()):
                eng.drop_states()
                eng.unfuse()
        if model is None:
            _ENGINES.clear()
        else:
            _ENGINES.pop(model, None)


def auto_batch(eng: FastEngine, n_rows: int, max_new: int, shared: bool = False) -> int:
    """Rows per micro-batch: all of them if memory allows (CUDA: from free memory), else as many as fit; on
    the CPU ``OPTIONS.cpu_batch``."""
    cap = int(OPTIONS.max_batch) if eng.max_rows is None else min(int(OPTIONS.max_batch), eng.max_rows)
    if eng.device.type != "cuda":  # CPU: OPTIONS.cpu_batch (measured), not the loop engine's batch_size
        return max(1, min(n_rows, int(OPTIONS.cpu_batch), cap))
    free, _total = torch.cuda.mem_get_info(eng.device)
    free += torch.cuda.memory_reserved(eng.device) - torch.cuda.memory_allocated(eng.device)  # allocator cache
    free += sum(sum(t.numel() * t.element_size() for t in st.kr + st.vr) for st in eng.states.values())
    el = torch.finfo(eng.dtype).bits // 8
    d = int(eng.cfg.hidden_size)
    inter = int(eng.layers[0].wg.shape[0])
    S = eng.T - eng.P
    Lr = (0 if shared else eng.P) + S + max_new + 16
    kv = len(eng.layers) * 2 * eng.n_kv * Lr * eng.head_dim * el
    act = S * (6 * d + 3 * inter + eng.n_heads * eng.head_dim * 3) * el + eng.n_heads * S * (eng.P + Lr) * 4 * 3
    act += 2 * len(eng.layers[:1]) * eng.n_kv * (eng.P + S) * eng.head_dim * el  # prefill concat of the prefix
    logits = eng.vocab * (el + 4) * 2
    per_row = kv + act + logits
    budget = max(0.0, free * OPTIONS.mem_fraction - 512 * 2**20)
    return max(1, min(n_rows, int(budget // max(per_row, 1)), cap))


def iter_fast(av, vectors: torch.Tensor, todo: Sequence[tuple[int, int]], keys_v: Sequence[int], settings,
              batch_size: Optional[int] = None) -> Iterator[tuple[list[int], list[int], torch.Tensor, torch.Tensor]]:
    """Run ``todo`` (vector, sample) rows in equal micro-batches; yield (vidx, sidx, tokens, done) per batch.

    A CUDA out-of-memory frees the engine's buffers, halves the micro-batch and retries."""
    from nlalab.verbalize.sampling import stream_keys

    eng = get_engine(av)
    n = len(todo)
    if n == 0:
        return
    pad = av.tokenizer.pad_token_id if getattr(av.tokenizer, "pad_token_id", None) is not None else (
        av.eos_ids[0] if av.eos_ids else 0)
    mode = OPTIONS.attention
    if mode not in ("auto", "copy", "shared"):
        raise NLALabError(f"fast engine attention must be auto, copy or shared, got {mode!r}.")
    shared = eng.default_shared()
    if mode == "auto" and not shared:  # copy unless keeping the prefix once fits more rows in memory
        want = min(n, int(OPTIONS.max_batch))
        cap_copy = auto_batch(eng, n, settings.max_new_tokens, shared=False)
        shared = cap_copy < want and auto_batch(eng, n, settings.max_new_tokens, shared=True) > cap_copy
    cap = int(batch_size) if batch_size else auto_batch(eng, n, settings.max_new_tokens, shared)
    if eng.max_rows is not None:
        cap = min(cap, eng.max_rows)
    eng.plan_compile(math.ceil(n / max(1, cap)) * int(settings.max_new_tokens))
    pos = 0
    B = 0
    while pos < n:
        if not B:  # equal chunks; the last one is padded up to B, so one graph serves every chunk
            remaining = n - pos
            B = math.ceil(remaining / math.ceil(remaining / cap))
        chunk = todo[pos:pos + B]
        vidx = [i for i, _ in chunk]
        sidx = [s for _, s in chunk]
        oom = False
        try:
            dev = eng.device
            keys = stream_keys(settings.seed, keys_v, vidx, sidx, dev)
            toks, done = eng.generate(
                vectors[vidx].to(dev), keys, injection_scale=av.injection_scale,
                max_new_tokens=settings.max_new_tokens, eos_ids=av.eos_ids, pad_id=pad,
                temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                greedy=settings.greedy, batch=B, shared=shared)
        except torch.cuda.OutOfMemoryError:
            oom = True
        if oom:  # outside the except block, so the failed call's frames (and its buffers) are gone
            with DEVICE_LOCK:
                eng.drop_states()
                gc.collect()
                empty_cache()
            if B == 1:
                raise NLALabError(
                    "GPU out of memory at batch size 1 while verbalizing (fast engine). Fix: lower "
                    "--max-new-tokens, use engine 'loop', or a GPU with more memory.")
            cap = max(1, B // 2)
            eng.max_rows = cap
            warnings.warn(f"fast engine: CUDA out of memory at {B} rows per batch; retrying with {cap}.")
            B = 0
            continue
        yield vidx, sidx, toks.cpu(), done.cpu()
        pos += len(chunk)
