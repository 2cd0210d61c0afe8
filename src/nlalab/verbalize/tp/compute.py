"""The tensor-parallel decoder, run by every rank on its shard (SPMD): same maths as the fast engine
(``nlalab.verbalize.fast.maths``, operation by operation) with local heads and two all-reduces per layer.

Per layer: input norm and q/k/v for this rank's heads (column-parallel) -> attention over its KV heads ->
o_proj on its head columns (row-parallel) -> **all-reduce** -> residual, norms -> gate/up for its slice of
the MLP width -> down_proj on that slice -> **all-reduce** -> residual. The embedding is vocabulary-parallel
(each rank looks up the ids in its range, zeros elsewhere, **all-reduce**: exact, one non-zero term), then
Gemma's scale. The head computes this rank's vocab slice of the logits, **all-gather** gives every rank the
full row, and every rank runs the one-process sampler (``sampling.sample_next``: per-row counter-based
noise indexed by global token id) on identical logits, so all ranks draw the same token without another
collective and a row does not depend on the rank count beyond the rounding of the split sums.

Decode follows the fast engine's ``shared`` layout: the prompt part before the marker (the same for every
row) is computed once at batch 1 and kept once; each row caches only its own suffix and new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from nlalab.verbalize.fast.maths import _attend, _attend_sdpa, _pre_attn, _rms
from nlalab.verbalize.inject import rescale
from nlalab.verbalize.sampling import sample_next
from nlalab.verbalize.tp.shard import TPLayer, TPWeights


class Comm:
    """The collectives the decoder needs, from ``torch.distributed`` (gloo on the CPU, NCCL on CUDA);
    with one rank they are the identity."""

    def __init__(self, world: int, group=None):
        self.world = int(world)
        self.group = group

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        import torch.distributed as dist

        t = t.contiguous()
        dist.all_reduce(t, group=self.group)
        return t

    def gather_last(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``t`` along the last dimension, in rank order."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t, group=self.group)
        return torch.cat(parts, dim=-1)


@dataclass
class Rope:
    cos: list
    sin: list
    index: tuple  # per layer

    @property
    def length(self) -> int:
        return int(self.cos[0].shape[0])

    def to(self, device) -> "Rope":
        return Rope([c.to(device) for c in self.cos], [s.to(device) for s in self.sin], self.index)


def _act(name: str):
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def embed(W: TPWeights, comm: Comm, ids: torch.Tensor) -> torch.Tensor:
    """Vocabulary-parallel lookup of ``ids`` [B, S] -> [B, S, d] (the model's embedding module, exactly)."""
    local = ids - W.vocab_start
    ok = (local >= 0) & (local < W.cfg.vocab_per_rank)
    e = F.embedding(local.clamp(0, W.cfg.vocab_per_rank - 1), W.embed)
    e = comm.all_reduce(e.masked_fill(~ok[..., None], 0))
    if W.cfg.embed_scale is not None:
        e = e * torch.tensor(W.cfg.embed_scale, dtype=torch.float32, device=e.device).to(e.dtype)
    return e


def pre(W: TPWeights, rope: Rope, i: int, L: TPLayer, x: torch.Tensor, pos: torch.Tensor):
    """This rank's q [B,h,S,D], k, v [B,kv,S,D] (positions ``pos`` [S], or [B,S] per row)."""
    c = W.cfg
    r = rope.index[i]
    if pos.ndim == 1:
        cos, sin = rope.cos[r].index_select(0, pos), rope.sin[r].index_select(0, pos)
    else:  # per-row positions [B, S] -> [B, 1, S, D]
        cos, sin = rope.cos[r][pos][:, None], rope.sin[r][pos][:, None]
    return _pre_attn(x, L.ln_in, L.wq, L.bq, L.wk, L.bk, L.wv, L.bv, L.qn, L.kn, cos, sin, c.eps, c.qk_eps,
                     c.gemma, c.n_heads, c.n_kv, c.head_dim)


def post(W: TPWeights, comm: Comm, L: TPLayer, x: torch.Tensor, a: torch.Tensor, act) -> torch.Tensor:
    """o_proj (row-parallel) + all-reduce, residuals and norms, MLP (column then row-parallel) + all-reduce."""
    c = W.cfg
    B, S, _ = x.shape
    o = comm.all_reduce(F.linear(a.transpose(1, 2).reshape(B, S, -1), L.wo))
    if L.bo is not None:
        o = o + L.bo
    if c.gemma:
        x = x + _rms(o, L.ln_post_attn, c.eps, True)
        h = _rms(x, L.ln_pre_ff, c.eps, True)
        m = comm.all_reduce(F.linear(act(F.linear(h, L.wg)) * F.linear(h, L.wu), L.wd))
        return x + _rms(m, L.ln_post_ff, c.eps, True)
    x = x + o
    h = _rms(x, L.ln_post_attn, c.eps, False)
    return x + comm.all_reduce(F.linear(act(F.linear(h, L.wg)) * F.linear(h, L.wu), L.wd))


def logits(W: TPWeights, comm: Comm, x: torch.Tensor) -> torch.Tensor:
    """Final norm, this rank's vocab slice of the head, all-gathered into full rows [B, V], soft-capped."""
    c = W.cfg
    h = _rms(x, W.norm_w, c.norm_eps, c.gemma)
    lg = comm.gather_last(F.linear(h, W.lm_w, W.lm_b))[..., : c.vocab]
    if c.final_softcap is not None:
        lg = torch.tanh(lg / c.final_softcap) * c.final_softcap
    return lg


def _window(mask, kpos, pos_q, w):
    return mask if w is None else mask & (kpos[None, :] > pos_q[:, None] - w)


def prefix_kv(W: TPWeights, comm: Comm, rope: Rope, prefix_ids: Sequence[int]):
    """K/V [kv, P, D] per layer of the prompt tokens before the marker (batch 1, computed once)."""
    if not prefix_ids:
        return [], []
    dev = W.device
    act = _act(W.cfg.act)
    pos = torch.arange(len(prefix_ids), device=dev)
    x = embed(W, comm, torch.tensor(list(prefix_ids), device=dev)[None])
    kp, vp = [], []
    for i, L in enumerate(W.layers):
        q, k, v = pre(W, rope, i, L, x, pos)
        kp.append(k[0].contiguous())
        vp.append(v[0].contiguous())
        m = _window(pos[None, :] <= pos[:, None], pos, pos, W.cfg.windows[i])
        x = post(W, comm, L, x, _attend_sdpa(q, k, v, m, W.cfg.scaling), act)
    return kp, vp


def generate(W: TPWeights, comm: Comm, rope: Rope, prompt_ids: Sequence[int], marker_pos: int, kp, vp,
             vectors: torch.Tensor, keys: torch.Tensor, *, injection_scale: float, max_new_tokens: int,
             eos_ids: Sequence[int], pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [B, <=max_new] (pad after the end) and finished flags [B]; the same on every rank."""
    c, dev = W.cfg, W.device
    act = _act(c.act)
    P, T = int(marker_pos), len(prompt_ids)
    S = T - P
    B = vectors.shape[0]
    max_new = int(max_new_tokens)
    Lr = S + max_new
    greedy = bool(greedy or temperature == 0)
    keys = keys.to(dev)
    eos = torch.tensor(sorted(set(int(e) for e in eos_ids)), device=dev, dtype=torch.long) if eos_ids else None
    kr = [torch.zeros(B, c.n_kv, Lr, c.head_dim, device=dev, dtype=W.dtype) for _ in W.layers]
    vr = [torch.zeros_like(kr[0]) for _ in W.layers]
    kpos_p = torch.arange(P, device=dev)
    kpos_r = P + torch.arange(Lr, device=dev)

    def masks(pos_q):
        out = {}
        for w in set(c.windows):
            out[w] = (_window(kpos_p[None, :] <= pos_q[:, None], kpos_p, pos_q, w),
                      _window(kpos_r[None, :] <= pos_q[:, None], kpos_r, pos_q, w))
        return out

    def sample(x_last, step):
        lg = logits(W, comm, x_last)
        return sample_next(lg, keys, step, temperature, top_k, top_p, greedy)

    # prefill: the suffix from the marker on, over the shared prefix (the marker row carries the vector)
    ids = torch.tensor(list(prompt_ids[P:]), device=dev)[None].expand(B, -1)
    x = embed(W, comm, ids).clone()
    x[:, 0] = rescale(vectors.to(dev), injection_scale).to(x.dtype)
    pos = P + torch.arange(S, device=dev)
    mk = masks(pos)
    for i, L in enumerate(W.layers):
        q, k, v = pre(W, rope, i, L, x, pos)
        kr[i][:, :, :S].copy_(k)
        vr[i][:, :, :S].copy_(v)
        mp, mr = mk[c.windows[i]]
        if P:
            kk = torch.cat([kp[i][None].expand(B, -1, -1, -1), k], dim=2)
            vv = torch.cat([vp[i][None].expand(B, -1, -1, -1), v], dim=2)
            att = _attend_sdpa(q, kk, vv, torch.cat([mp, mr[:, :S]], dim=-1), c.scaling)
        else:
            att = _attend_sdpa(q, k, v, mr[:, :S], c.scaling)
        x = post(W, comm, L, x, att, act)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    nxt = sample(x[:, -1], 0)
    if eos is not None:
        done = torch.isin(nxt, eos)
    toks = [nxt]
    for step in range(1, max_new):
        if bool(done.all()):
            break
        x = embed(W, comm, nxt[:, None])
        pos = torch.tensor([P + S - 1 + step], device=dev)
        mk = masks(pos)
        for i, L in enumerate(W.layers):
            q, k, v = pre(W, rope, i, L, x, pos)
            kr[i][:, :, S - 1 + step].copy_(k[:, :, 0])
            vr[i][:, :, S - 1 + step].copy_(v[:, :, 0])
            mp, mr = mk[c.windows[i]]
            att = _attend(q, kp[i] if P else None, vp[i] if P else None, kr[i], vr[i], mp, mr, c.scaling)
            x = post(W, comm, L, x, att, act)
        nxt = sample(x[:, -1], step)
        nxt = torch.where(done, torch.full_like(nxt, int(pad_id)), nxt)
        if eos is not None:
            done = done | torch.isin(nxt, eos)
        toks.append(nxt)
    return torch.stack(toks, 1), done


def generate_plain(W: TPWeights, comm: Comm, rope: Rope, P: int, kp, vp, suffixes: Sequence[Sequence[int]],
                   keys: torch.Tensor, *, max_new_tokens: int, eos_ids: Sequence[int], pad_id: int,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain mode (blind control, corpus texts): rows ``prefix + suffixes[i]`` of different lengths, no
    injection. The shared prefix's K/V (``kp``/``vp``, ``P`` tokens) are computed once; each suffix is
    right-aligned in ``Smax`` slots after it ("middle padding", as ``fast.plain.generate_plain``): a row's
    gap slots are masked out and it keeps its own positions, so its tokens do not depend on its batch and
    equal the loop engine's left-padded plain rows in fp32. Tokens [B, <=max_new] and finished flags [B]."""
    c, dev = W.cfg, W.device
    act = _act(c.act)
    B = len(suffixes)
    lens = torch.tensor([len(s) for s in suffixes], device=dev)
    if int(lens.min()) < 1:
        raise ValueError("tensor-parallel plain generation: every prompt needs a token after the shared prefix.")
    Smax, max_new = int(lens.max()), int(max_new_tokens)
    greedy = bool(greedy or temperature == 0)
    keys = keys.to(dev)
    eos = torch.tensor(sorted(set(int(e) for e in eos_ids)), device=dev, dtype=torch.long) if eos_ids else None
    gap = Smax - lens
    ids = torch.full((B, Smax), int(pad_id), dtype=torch.long, device=dev)
    for i, s in enumerate(suffixes):
        ids[i, Smax - len(s):] = torch.tensor(list(s), device=dev)
    L = P + Smax + max_new
    slots = torch.arange(L, device=dev)
    valid = (slots[None] < P) | (slots[None] >= P + gap[:, None])  # [B, L]; gap slots never attended
    kpos = torch.where(valid, torch.where(slots[None] < P, slots[None], slots[None] - gap[:, None]),
                       torch.full((B, L), -1, device=dev, dtype=torch.long))
    qpos = (P + torch.arange(Smax, device=dev))[None] - gap[:, None]  # [B, Smax]; gap queries unused
    kr = [torch.zeros(B, c.n_kv, L, c.head_dim, device=dev, dtype=W.dtype) for _ in W.layers]
    vr = [torch.zeros_like(kr[0]) for _ in W.layers]
    for i in range(len(W.layers)):
        if P:
            kr[i][:, :, :P].copy_(kp[i][None])
            vr[i][:, :, :P].copy_(vp[i][None])

    def masks(qp, upto, self_slot=None):
        """window -> [B, S, upto]; a gap query also sees its own slot (no empty softmax row, no NaN)."""
        kq = kpos[:, None, :upto]
        base = valid[:, None, :upto] & (kq <= qp[:, :, None])
        out = {}
        for w in set(c.windows):
            m = base if w is None else base & (kq > qp[:, :, None] - w)
            if self_slot is not None:
                m = m | (slots[None, None, :upto] == self_slot[None, :, None])
            out[w] = m
        return out

    def attend(q, k, v, m):
        G = q.shape[1] // k.shape[1]
        Bq, H, S, D = q.shape
        qg = q.reshape(Bq, k.shape[1], G * S, D)
        o = F.scaled_dot_product_attention(qg, k, v, attn_mask=m.repeat(1, G, 1)[:, None], scale=c.scaling)
        return o.reshape(Bq, H, S, D)

    b = P + Smax
    mk = masks(qpos, b, self_slot=P + torch.arange(Smax, device=dev))
    x = embed(W, comm, ids)
    for i, Lay in enumerate(W.layers):
        q, k, v = pre(W, rope, i, Lay, x, qpos.clamp_min(0))
        kr[i][:, :, P:b].copy_(k)
        vr[i][:, :, P:b].copy_(v)
        x = post(W, comm, Lay, x, attend(q, kr[i][:, :, :b], vr[i][:, :, :b], mk[c.windows[i]]), act)
    nxt = sample_next(logits(W, comm, x[:, -1]), keys, 0, temperature, top_k, top_p, greedy)
    done = torch.isin(nxt, eos) if eos is not None else torch.zeros(B, dtype=torch.bool, device=dev)
    toks = [nxt]
    pos = qpos[:, -1:]
    for step in range(1, max_new):
        if bool(done.all()):
            break
        pos = pos + 1
        slot = b - 1 + step
        mk = masks(pos, L)
        x = embed(W, comm, nxt[:, None])
        for i, Lay in enumerate(W.layers):
            q, k, v = pre(W, rope, i, Lay, x, pos)
            kr[i][:, :, slot].copy_(k[:, :, 0])
            vr[i][:, :, slot].copy_(v[:, :, 0])
            x = post(W, comm, Lay, x, attend(q, kr[i], vr[i], mk[c.windows[i]]), act)
        nxt = sample_next(logits(W, comm, x[:, -1]), keys, step, temperature, top_k, top_p, greedy)
        nxt = torch.where(done, torch.full_like(nxt, int(pad_id)), nxt)
        if eos is not None:
            done = done | torch.isin(nxt, eos)
        toks.append(nxt)
    return torch.stack(toks, 1), done


def hidden(W: TPWeights, comm: Comm, rope: Rope, x: torch.Tensor, key_mask: Optional[torch.Tensor],
           positions: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """The residual stream after the first ``n_blocks`` blocks (what ``output_hidden_states[n_blocks]``
    holds) for input embeddings ``x`` [B, T, d]: capture at layer K and the AR's forward, sharded.
    ``key_mask`` [B, T] (True = a real token) masks padding; ``positions`` [B, T] are each row's positions."""
    c = W.cfg
    act = _act(c.act)
    B, T, _ = x.shape
    for i, L in enumerate(W.layers[:n_blocks]):
        q, k, v = pre(W, rope, i, L, x, positions)
        pq = positions
        m = pq[:, None, :] <= pq[:, :, None]  # [B, Tq, Tk]
        w = c.windows[i]
        if w is not None:
            m = m & (pq[:, None, :] > pq[:, :, None] - w)
        if key_mask is not None:
            m = m & key_mask[:, None, :].bool()
        m = m | torch.eye(T, dtype=torch.bool, device=m.device)[None]  # padded queries attend to themselves
        G = c.n_heads // c.n_kv
        qg = q.reshape(B, c.n_kv, G * T, c.head_dim)
        att = F.scaled_dot_product_attention(qg, k, v, attn_mask=m.repeat(1, G, 1)[:, None], scale=c.scaling)
        x = post(W, comm, L, x, att.reshape(B, c.n_heads, T, c.head_dim), act)
    return x
