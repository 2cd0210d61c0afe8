"""Plain mode of the fast engine: prompts of different lengths, no injection (blind control, corpus texts).

Every prompt of a call starts with the same template tokens, so their K/V (the longest common prefix,
``P`` tokens) are computed once by a ``FastEngine`` built on that prefix. Each row's remaining tokens are
right-aligned in a window of ``Smax`` cache slots after the prefix ("middle padding": row i's first
``Smax - S_i`` slots are gaps, masked out of every attention), so all rows still advance in lockstep
through one static cache while each keeps its own positions (per-row RoPE rows and key masks, as
``verbalize.plain``'s left padding with explicit position ids does). Sampling is the per-row stream of
``loop`` (seed, prompt key, sample), so in fp32 on the CPU the tokens equal ``plain.generate_texts`` on
``loop`` (tests/unit/test_backends.py). On the CPU rows that ended leave the batch (``OPTIONS.compact``,
as in the engine's eager decode). Runs eagerly (no CUDA graphs): on a GPU it still skips the
prompt prefix and the per-step cache reallocation of ``generate``.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from nlalab.errors import NLALabError
from nlalab.verbalize.fast.engine import duplicate_rows


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens shared by the start of every prompt, leaving each at least one token of its own."""
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return max(0, n)


def _attend_rows(q, k, v, mask, scaling: float):
    """GQA sdpa with a per-row boolean mask [B,S,L] (query heads of one KV head stacked on the query axis), or
    the mask already stacked for the query heads, [B,1,G*S,L] (:func:`_stacked`: once per step, not per layer)."""
    B, H, S, D = q.shape
    G = H // k.shape[1]
    qg = q.reshape(B, k.shape[1], G * S, D)
    m = mask if mask.dim() == 4 else _stacked(mask, G)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=m, scale=scaling)
    return out.reshape(B, H, S, D)


def _stacked(mask, G: int, dtype=None):
    """[B,S,L] bool -> [B,1,G*S,L]; with ``dtype``, as the additive 0/-inf mask SDPA would make of it on every
    call (the same values: ``convert_boolean_attn_mask``), made once per step instead of once per layer."""
    m = mask.repeat(1, G, 1)[:, None]
    if dtype is None:
        return m
    return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))


def generate_plain(eng, suffixes: Sequence[Sequence[int]], keys: torch.Tensor, *, max_new_tokens: int,
                   eos_ids: Sequence[int], pad_id: int, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [B, <=max_new] (pad after the end) and finished flags [B] for rows ``prefix + suffixes[i]``."""
    from nlalab.pairs.arch import sdpa_backends
    from nlalab.verbalize.fast import OPTIONS

    dev, P = eng.device, eng.P
    B = len(suffixes)
    lens = torch.tensor([len(s) for s in suffixes], device=dev)
    if int(lens.min()) < 1:
        raise NLALabError("fast engine (plain): every prompt needs a token after the shared prefix.")
    Smax = int(lens.max())
    max_new = int(max_new_tokens)
    greedy = bool(greedy or temperature == 0)
    temperature, top_k, top_p = (1.0, 0, 1.0) if greedy else (float(temperature), int(top_k or 0), float(top_p))
    if P + Smax + max_new + 16 > eng.rope_len:
        with torch.no_grad():
            eng._rope_tables(P + Smax + max_new + 256)
    gap = Smax - lens  # [B]
    ids = torch.full((B, Smax), int(pad_id), dtype=torch.long, device=dev)
    for i, s in enumerate(suffixes):
        ids[i, Smax - len(s):] = torch.tensor(list(s), device=dev)
    L = P + Smax + max_new
    slots = torch.arange(L, device=dev)
    # per-row key position of each cache slot (gap slots get -1 and are masked out)
    kpos = torch.where(slots[None] < P, slots[None], slots[None] - gap[:, None])
    valid = (slots[None] < P) | (slots[None] >= P + gap[:, None])
    kpos = torch.where(valid, kpos, torch.full_like(kpos, -1))
    qpos = (P + torch.arange(Smax, device=dev))[None] - gap[:, None]  # [B, Smax]; gap queries are unused
    eos = torch.tensor(sorted({int(e) for e in eos_ids}), device=dev, dtype=torch.long) if len(eos_ids) else None
    fns = eng._eager_fns()
    kr = [torch.zeros(B, eng.n_kv, L, eng.head_dim, device=dev, dtype=eng.dtype) for _ in eng.layers]
    vr = [torch.zeros_like(kr[0]) for _ in eng.layers]
    keys = keys.to(dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    out = torch.full((B, max_new), int(pad_id), dtype=torch.long, device=dev)

    def masks(qp: torch.Tensor, upto: int, self_slot=None, rows=None) -> dict:
        """window -> [B, S, upto] for query positions qp [B, S] over the first ``upto`` slots (``rows``: of
        those batch rows only). A gap query (prefill) also sees its own slot, so no row of the softmax is
        empty (no NaN in masked slots)."""
        kp = (kpos if rows is None else kpos[rows])[:, None, :upto]
        base = (valid if rows is None else valid[rows])[:, None, :upto] & (kp <= qp[:, :, None])
        if self_slot is not None:
            base = base | (slots[None, None, :upto] == self_slot[None, :, None])
        out = {}
        for w in eng.windows:
            m = base if w is None else base & (kp > qp[:, :, None] - w)
            out[w] = m if self_slot is None else m | (slots[None, None, :upto] == self_slot[None, :, None])
        return out

    G = eng.n_heads // eng.n_kv

    def rope_rows(pos) -> dict:  # per rope table, once per forward (not twice per layer)
        return {r: (eng.cos[r][pos][:, None], eng.sin[r][pos][:, None]) for r in {La.rope for La in eng.layers}}

    def pre(Lay, x, cs):
        cos, sin = cs[Lay.rope]
        w = (Lay.wqkv, Lay.bqkv, None, None, None, None) if Lay.wqkv is not None else (
            Lay.wq, Lay.bq, Lay.wk, Lay.bk, Lay.wv, Lay.bv)
        return fns["pre"](x, Lay.ln_in, *w, Lay.qn, Lay.kn, cos, sin, eng.eps, eng.qk_eps, eng.gemma,
                          eng.n_heads, eng.n_kv, eng.head_dim)

    def decode_layers(x, pos, slot, kr, vr, upto: int, at: Optional[int] = None):
        """One new token of every row through the layers: its K/V written at cache ``slot`` (a one-element
        tensor; ``at``: the same slot as an int, eager decoding only), attention over the first ``upto`` slots (on the CPU the filled ones: attention cost ~ key
        length, see FastEngine._step; all L in the CUDA graph). Masks, stacked for the query heads and made
        additive, and rotary rows once per step, not per layer."""
        ms = {w: _stacked(m, G, eng.dtype) for w, m in masks(pos, upto).items()}
        cs = rope_rows(pos)
        for i, Lay in enumerate(eng.layers):
            q, k, v = pre(Lay, x, cs)
            if at is not None:  # eager: a slice write (index_copy_ costs ~150 us a call on the CPU)
                kr[i][:, :, at:at + 1].copy_(k)
                vr[i][:, :, at:at + 1].copy_(v)
            else:
                kr[i].index_copy_(2, slot, k)
                vr[i].index_copy_(2, slot, v)
            x = eng._post(fns, Lay, x, _attend_rows(q, kr[i][:, :, :upto], vr[i][:, :, :upto], ms[Lay.window],
                                                    eng.scaling))
        return x

    def head(x, step):
        return fns["head"](x, eng.norm_w, eng.norm_eps, eng.gemma, eng.lm_w, eng.lm_b, eng.final_softcap, keys,
                           step, eng.hv, done, eos, int(pad_id), temperature, top_k, top_p, greedy, **eng._work_kw())

    with torch.no_grad(), sdpa_backends(dev):
        # rows with the same prompt (the K samples of one prompt) share one prefill; K/V copied after
        dup = duplicate_rows(torch.cat([ids, gap[:, None]], 1)) if OPTIONS.dedup_prefill else None
        R = torch.arange(B, device=dev) if dup is None else dup[0]  # the rows the prefill computes
        eng.prefill_rows = len(R)
        kr_p = kr if dup is None else [t[:len(R)] for t in kr]
        vr_p = vr if dup is None else [t[:len(R)] for t in vr]
        for i in range(len(eng.layers)):
            if P:
                kr_p[i][:, :, :P].copy_(eng.kp[i][None])
                vr_p[i][:, :, :P].copy_(eng.vp[i][None])
        b = P + Smax
        ms = masks(qpos[R], b, self_slot=P + torch.arange(Smax, device=dev), rows=R)
        # Packed prefill: the projections, norms, rotary and MLP run on the real suffix tokens only ([1, N]),
        # and only attention sees the middle-padded [B, Smax] layout (gap keys stay zero and are masked, so
        # they add exact zeros). The blind control's prompts fill 44 % of B x Smax: 10 -> ~5 s on the CPU.
        bi, si = (torch.arange(Smax, device=dev)[None] >= gap[R][:, None]).nonzero(as_tuple=True)
        x = eng.embed(ids[R][bi, si])[None]
        pos_p = qpos[R][bi, si]
        cs = eng._rope_rows(pos_p)
        qpad = torch.zeros(len(R), Smax, eng.n_heads, eng.head_dim, device=dev, dtype=eng.dtype)
        for i, Lay in enumerate(eng.layers):
            q, k, v = pre(Lay, x, cs)  # [1, heads, N, D]
            qpad[bi, si] = q[0].transpose(0, 1)
            kr_p[i][bi, :, P + si] = k[0].transpose(0, 1)
            vr_p[i][bi, :, P + si] = v[0].transpose(0, 1)
            att = _attend_rows(qpad.transpose(1, 2), kr_p[i][:, :, :b], vr_p[i][:, :, :b], ms[Lay.window],
                               eng.scaling)
            x = eng._post(fns, Lay, x, att.transpose(1, 2)[bi, si].transpose(0, 1)[None])
        last = torch.cumsum(lens[R], 0) - 1  # suffixes are right-aligned: each row's last token is its last slot
        xl = x[0, last]
        if dup is not None:  # every row from its representative (built in place: kr[i][:U] holds them)
            for t in kr + vr:
                t.copy_(t.index_select(0, dup[1]))
            xl = xl.index_select(0, dup[1])
        nxt, done = head(xl, 0)
        out[:, 0] = nxt
        steps = 1
        pos = qpos[:, -1:].clone()  # [B, 1]
        check = eos is not None
        if dev.type == "cuda":
            steps = _decode_lockstep(eng, decode_layers, head, kr, vr, out, nxt, done, pos, b, L, max_new, check)
            return out[:, :steps], done
        rows = torch.arange(B, device=dev)  # batch row -> output row (rows that ended are dropped on the CPU)
        full_done = done.clone()
        compact = float(OPTIONS.compact)
        for step in range(1, max_new):
            if check and bool(done.all()):
                break
            n_done = int(done.sum()) if compact else 0
            if compact and n_done >= max(1, compact * len(rows)):
                keep = (~done).nonzero().squeeze(1)
                full_done[rows[done]] = True
                rows, pos, nxt, done, keys = rows[keep], pos[keep], nxt[keep], done[keep], keys[keep]
                kpos, valid = kpos[keep], valid[keep]
                kr = [t.index_select(0, keep) for t in kr]
                vr = [t.index_select(0, keep) for t in vr]
            pos = pos + 1
            slot = b - 1 + step
            x = decode_layers(eng.embed(nxt[:, None]), pos, None, kr, vr, slot + 1, at=slot)
            nxt, done = head(x[:, -1], step)
            out[rows, step] = nxt
            steps = step + 1
        full_done[rows] = done
    return out[:, :steps], full_done


def _decode_lockstep(eng, decode_layers, head, kr, vr, out, nxt, done, pos, b: int, L: int, max_new: int,
                     check: bool) -> int:
    """CUDA decode of the plain rows in lockstep on static tensors: the step reads and writes only ``pos``,
    ``t``, ``nxt``, ``done``, the caches and ``out`` (slot and step are tensors), so after one eager step it
    is captured as a CUDA graph and replayed (``OPTIONS.cuda_graphs``; same kernels as the eager step, so the
    same tokens). Eager (uncompiled) layer maths: the blind control's one batch is too small to repay a
    compile. Returns the number of steps."""
    from nlalab.verbalize.fast import DEVICE_LOCK, OPTIONS, _resolved_graphs, on_device

    dev = eng.device
    t = torch.ones(1, dtype=torch.long, device=dev)

    def step_fn():
        pos.add_(1)
        x = decode_layers(eng.embed(nxt[:, None]), pos, (b - 1) + t, kr, vr, L)
        n2, d2 = head(x[:, -1], t)
        out.index_copy_(1, t, n2[:, None])
        nxt.copy_(n2)
        done.copy_(d2)
        t.add_(1)

    graph = None
    every = max(1, int(OPTIONS.check_every))
    steps = 1
    for step in range(1, max_new):
        if check and step % every == 0 and bool(done.all()):
            break
        if graph is not None:
            graph.replay()
        else:
            step_fn()
            if step == 1 and max_new > 2 and _resolved_graphs(dev):
                try:  # capture after the first eager step (it initialised the libraries' workspaces)
                    with DEVICE_LOCK, on_device(dev):
                        g = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(g, capture_error_mode="thread_local"):
                            step_fn()  # recorded, not run: t, pos and the buffers are unchanged
                    graph = g
                except Exception as e:  # pragma: no cover - depends on the GPU stack
                    warnings.warn(f"fast engine (plain): CUDA graph capture failed ({e!r}); decoding eagerly.")
        steps = step + 1
    return steps


def plain_engine(model, prefix: Sequence[int], pad_id: int, rope_len: int = 0):
    """A ``FastEngine`` whose shared prefix is ``prefix`` (built under the device lock; not cached), with
    rotary tables for ``rope_len`` positions."""
    from nlalab.pairs.arch import input_device
    from nlalab.verbalize.fast import DEVICE_LOCK, FastEngine, on_device

    with DEVICE_LOCK, on_device(input_device(model)):
        return FastEngine(model, list(prefix) + [int(pad_id)], len(prefix), rope_len=rope_len)


def iter_plain(model, tokenizer, prompts: Sequence[Sequence[int]], eos_ids: Sequence[int],
               todo: Sequence[tuple[int, int]], keys_v: Sequence, settings
               ) -> Iterator[tuple[list[int], list[int], torch.Tensor, torch.Tensor]]:
    """``todo`` (prompt, sample) rows in equal micro-batches of at most ``settings.fast_batch_size``, else
    ``OPTIONS.cpu_batch`` on the CPU and ``OPTIONS.max_batch`` on CUDA (halved on out-of-memory); yields
    (prompt idx, sample idx, tokens, done) on the CPU."""
    from nlalab.verbalize.fast import OPTIONS, empty_cache
    from nlalab.verbalize.sampling import stream_keys

    if not todo:
        return
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    P = common_prefix([prompts[i] for i, _ in todo])
    longest = max(len(prompts[i]) for i, _ in todo)
    eng = plain_engine(model, prompts[todo[0][0]][:P], pad, rope_len=longest + settings.max_new_tokens + 256)
    try:
        # CPU: OPTIONS.cpu_batch; CUDA: every row at once up to OPTIONS.max_batch (halved on OOM); equal
        # chunks (100 rows at 64 run as 50 + 50, not 64 + 36: a short last batch costs nearly a full one)
        auto = int(OPTIONS.max_batch) if eng.device.type == "cuda" else int(OPTIONS.cpu_batch)
        cap = max(1, int(settings.fast_batch_size or auto))
        pos = 0
        while pos < len(todo):
            remaining = len(todo) - pos
            chunk = todo[pos:pos + math.ceil(remaining / math.ceil(remaining / cap))]
            vidx = [i for i, _ in chunk]
            sidx = [s for _, s in chunk]
            oom = False
            try:
                t0 = time.perf_counter()
                keys = stream_keys(settings.seed, keys_v, vidx, sidx, eng.device)
                toks, done = generate_plain(
                    eng, [prompts[i][P:] for i in vidx], keys, max_new_tokens=settings.max_new_tokens,
                    eos_ids=eos_ids, pad_id=pad, temperature=settings.temperature, top_k=settings.top_k,
                    top_p=settings.top_p, greedy=settings.greedy)
            except torch.cuda.OutOfMemoryError:
                oom = True
            if oom:
                empty_cache()
                if cap == 1:
                    raise NLALabError("GPU out of memory at batch size 1 in plain generation (fast engine). "
                                      "Fix: lower --max-new-tokens or use engine 'loop'.")
                cap = max(1, math.ceil(len(chunk) / 2))
                warnings.warn(f"fast engine (plain): CUDA out of memory; retrying with {cap} rows per batch.")
                continue
            toks, done = toks.cpu(), done.cpu()
            if OPTIONS.trace is not None:
                OPTIONS.trace.append({"mode": "plain", "rows": len(chunk), "batch": len(chunk),
                                      "prefill_rows": eng.prefill_rows,
                                      "steps": int(toks.shape[1]), "total_s": round(time.perf_counter() - t0, 4),
                                      "at": time.time()})
            yield vidx, sidx, toks, done
            pos += len(chunk)
    finally:
        eng.drop_states()
        eng.unfuse()
