"""The decoder maths as pure functions of tensors (norms, RoPE, attention, MLP, head + sampler) and their
compiled variants: one compiled graph serves every layer, and the CPU path runs the very same code."""

from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from nlalab.verbalize.sampling import MASK32, filter_logits, hash32

# ----------------------------------------------------------------------------------- pure functions
# Module-level functions of tensors and Python constants only, so one torch.compile'd graph serves every
# layer (weights are arguments, not module attributes) and the CPU path runs the very same code.


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float, gemma: bool) -> torch.Tensor:
    """transformers' RMSNorm, operation by operation (Llama/Qwen2: ``w * x_normed.to(dtype)``;
    Gemma-3: ``(x_normed * (1 + w)).to(dtype)`` in fp32)."""
    if gemma:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        out = out * (1.0 + w.float())
        return out.type_as(x)
    dt = x.dtype
    xf = x.to(torch.float32)
    var = xf.pow(2).mean(-1, keepdim=True)
    xf = xf * torch.rsqrt(var + eps)
    return w * xf.to(dt)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos) + (_rotate_half(x) * sin)


def _pre_attn(x, ln_w, wq, bq, wk, bk, wv, bv, qn, kn, cos, sin, eps: float, qk_eps: float, gemma: bool,
              n_heads: int, n_kv: int, head_dim: int):
    """Input norm, q/k/v projections, q/k norms (Gemma-3), RoPE. Returns q [B,H,S,D], k, v [B,kvH,S,D]."""
    B, S, _ = x.shape
    h = _rms(x, ln_w, eps, gemma)
    if wk is None:  # fused q/k/v weights (one GEMM)
        q, k, v = F.linear(h, wq, bq).split([n_heads * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1)
    else:
        q, k, v = F.linear(h, wq, bq), F.linear(h, wk, bk), F.linear(h, wv, bv)
    q = q.reshape(B, S, n_heads, head_dim).transpose(1, 2)
    k = k.reshape(B, S, n_kv, head_dim).transpose(1, 2)
    v = v.reshape(B, S, n_kv, head_dim).transpose(1, 2)
    if qn is not None:
        q = _rms(q, qn, qk_eps, gemma)
        k = _rms(k, kn, qk_eps, gemma)
    return _rope(q, cos, sin), _rope(k, cos, sin), v


def _post_attn(x, a, wo, bo, ln_post_attn, ln_pre_ff, ln_post_ff, wg, wu, wd, act: Callable, eps: float,
               gemma: bool):
    """Output projection of the attention result a [B,H,S,D], residuals, MLP (Gemma-3: extra norms)."""
    B, S, _ = x.shape
    a = F.linear(a.transpose(1, 2).reshape(B, S, -1), wo, bo)
    if gemma:
        x = x + _rms(a, ln_post_attn, eps, True)
        h = _rms(x, ln_pre_ff, eps, True)
        return x + _rms(_mlp(h, wg, wu, wd, act), ln_post_ff, eps, True)
    x = x + a
    h = _rms(x, ln_post_attn, eps, False)
    return x + _mlp(h, wg, wu, wd, act)


def _mlp(h, wg, wu, wd, act):
    if wu is None:  # fused gate/up weights (one GEMM)
        g, u = F.linear(h, wg).chunk(2, dim=-1)
        return F.linear(act(g) * u, wd)
    return F.linear(act(F.linear(h, wg)) * F.linear(h, wu), wd)


def _attend(q, kp, vp, kr, vr, mask_p, mask_r, scaling: float, softcap: Optional[float] = None,
            bias: Optional[torch.Tensor] = None):
    """Two-part GQA attention of q [B,H,S,D] over a shared prefix (kp/vp [kvH,P,D], no batch) and per-row
    keys (kr/vr [B,kvH,L,D]); boolean masks [S,P], [S,L] are the same for every row and head. The prefix
    scores come from one GEMM over all rows; one fp32 softmax spans both parts (scores are the matmul in
    the model dtype, as in transformers' eager attention). ``bias`` (eager CPU decoding, no soft-capping):
    the masks as one additive fp32 [S, P+L] tensor of 0/-inf made once per step for every layer, applied
    with the scaling in one pass (``0 + scaling * s`` is ``scaling * s``: the same scores)."""
    B, H, S, D = q.shape
    n_kv = kr.shape[1]
    G = H // n_kv
    qg = q.reshape(B, n_kv, G * S, D)
    s_r = torch.matmul(qg, kr.transpose(-1, -2)).view(B, n_kv, G, S, -1)
    if kp is not None:
        P = kp.shape[1]
        qp = qg.permute(1, 0, 2, 3).reshape(n_kv, B * G * S, D)
        s_p = torch.matmul(qp, kp.transpose(-1, -2)).view(n_kv, B, G, S, P).permute(1, 0, 2, 3, 4)
        s = torch.cat([s_p, s_r], dim=-1)
        mask = None if bias is not None else torch.cat([mask_p, mask_r], dim=-1)
    else:
        P = 0
        s = s_r
        mask = mask_r
    if bias is not None and softcap is None:
        s = torch.add(bias, s.float(), alpha=scaling)
    else:
        s = s.float() * scaling
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).to(q.dtype)
    out = torch.matmul(p[..., P:].reshape(B, n_kv, G * S, -1), vr)
    if kp is not None:
        pp = p[..., :P].permute(1, 0, 2, 3, 4).reshape(n_kv, B * G * S, P)
        out = out + torch.matmul(pp, vp).view(n_kv, B, G * S, D).permute(1, 0, 2, 3)
    return out.reshape(B, H, S, D)


def _attend_sdpa(q, k, v, mask, scaling: float):
    """GQA attention through ``F.scaled_dot_product_attention`` (fp32 scores inside the kernel): query heads
    of one KV head are stacked along the query axis, so K/V are never repeated. mask [S,L] bool."""
    B, H, S, D = q.shape
    n_kv = k.shape[1]
    G = H // n_kv
    qg = q.reshape(B, n_kv, G * S, D)
    m = mask.repeat(G, 1)[None, None]
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=m, scale=scaling)
    return out.reshape(B, H, S, D)


def _as_i32(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) -> int32 with the same 32 bits."""
    return torch.where(x >= 2 ** 31, x - 2 ** 32, x).to(torch.int32)


_M1, _M2 = 0x7FEB352D, 0x846CA68B - 2 ** 32  # lowbias32's multipliers as int32 (products wrap mod 2^32)


def _premix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32's first round, ``x ^ (x >>> 16)``, on int32 bits. It distributes over xor, so the noise
    hash of ``key ^ token`` starts from ``premix(key) ^ premix(token)``: the token half is computed once per
    engine (:func:`token_hash`), which saves three of the twelve [B, V] passes of every sampling step."""
    return x ^ ((x >> 16) & 0xFFFF)


def _hash32_tail_(x: torch.Tensor, tmp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """lowbias32 after its first round, in place on int32 bits (logical shifts are arithmetic shifts masked
    to their width; int32 products keep the low 32 bits). ``tmp``: a buffer of ``x``'s shape for the shifted
    copies (the CPU sampler reuses one, see :class:`SamplerWork`)."""
    x.mul_(_M1)
    if tmp is None:
        x ^= (x >> 15) & 0x1FFFF
        x.mul_(_M2)
        x ^= (x >> 16) & 0xFFFF
        return x
    x.bitwise_xor_(torch.bitwise_right_shift(x, 15, out=tmp).bitwise_and_(0x1FFFF))
    x.mul_(_M2)
    return x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=tmp).bitwise_and_(0xFFFF))


def key_premix(keys: torch.Tensor, step) -> torch.Tensor:
    """int32 [B]: each row's half of the step's noise hash (:func:`_premix` of its step key), to be xor-ed
    with :func:`token_hash`'s token half."""
    return _premix(_as_i32(hash32(keys ^ ((step * 0x85EBCA77 + 0x165667B1) & MASK32))))


def noise_bits(keys: torch.Tensor, step, hv: torch.Tensor, out: Optional[torch.Tensor] = None,
               tmp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """int32 bits of the [B, V] noise of one step (``sampling.uniform`` before its float conversion); ``hv``
    from :func:`token_hash`; ``out``/``tmp``: optional [B, V] int32 buffers."""
    k = key_premix(keys, step).unsqueeze(1)
    x = torch.bitwise_xor(k, hv.unsqueeze(0), out=out) if out is not None else k ^ hv.unsqueeze(0)
    return _hash32_tail_(x, tmp)


def gumbel_scores(bits: torch.Tensor, lg: torch.Tensor) -> torch.Tensor:
    """``lg + Gumbel`` in float64 from the noise bits, as ``sampling.sample_next`` computes it (the same
    operations in the same order, in place on the float64 noise): the scores whose argmax is the token."""
    # the unsigned value, exact in float64; through int64 rather than adding 2^32 where bits < 0: a bool ->
    # float64 cast of the [B, V] mask took 12 of the sampler's 33 ms per CPU step (60 rows, 49k vocabulary)
    u = bits.to(torch.int64).bitwise_and_(MASK32).to(torch.float64)
    g = u.add_(0.5).div_(4294967296.0).log_().neg_().log_().neg_()
    return g.add_(lg)


def uniform_t(keys: torch.Tensor, step, hv: torch.Tensor) -> torch.Tensor:
    """``sampling.uniform`` with the step as a Python int or a device tensor, and the per-token hash
    ``hv`` (:func:`token_hash`) precomputed; bitwise the same float64 values."""
    u = noise_bits(keys, step, hv).to(torch.int64).bitwise_and_(MASK32).to(torch.float64)
    return u.add_(0.5).div_(4294967296.0)


def token_hash(vocab: int, device) -> torch.Tensor:
    """int32 bits of ``hash32(arange(V) * 0x27D4EB2F & MASK32)``, premixed (:func:`_premix`)."""
    v = torch.arange(vocab, device=device, dtype=torch.int64)
    return _premix(_as_i32(hash32(v * 0x27D4EB2F & MASK32)))


class SamplerWork:
    """Reusable [B, V] buffers of the CPU sampler (logits, noise bits, screen). Fresh 25-50 MB tensors every
    step are fresh pages from the OS (glibc serves them by mmap): at 128 rows and a 49k vocabulary their
    page faults cost more than the arithmetic done in them. Views of the largest size asked so far, so the
    batch may shrink (finished rows leave it) without reallocating."""

    def __init__(self, head=None) -> None:
        self._bufs: dict = {}
        self.head = head  # a fast.head.BoundedHead (bf16 logits with a bound, exact candidates), or None

    def get(self, name: str, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
        n = math.prod(shape)
        b = self._bufs.get(name)
        if b is None or b.numel() < n or b.dtype != dtype or b.device != torch.device(device):
            b = self._bufs[name] = torch.empty(n, dtype=dtype, device=device)
        return b[:n].view(shape)


# The screen's relative slack: it covers fp32 rounding of exp(lg - max) (|lg - max| <= ~100: ~3e-6), of the
# noise bits (2^-24) and of the per-row scale (2^-24), with two orders of magnitude to spare.
_SCREEN_EPS = 1e-3
_SCREEN_CAP = float(2 ** 31 / (1 + _SCREEN_EPS))
_SCREEN_MAX = 32768 - 32  # more candidates than this: the full path (see _sample_screened)


def _row_max(x: torch.Tensor, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, an index of it) per row of [B, V]: ``amax`` over ``split`` slices, then inside the best slice
    only (torch's index-returning reductions are ~10x slower than ``amax`` on the CPU)."""
    B, V = x.shape
    if split <= 1:
        m, i = x.max(-1)
        return m, i
    C = V // split
    sm = x.view(B, split, C).amax(-1)
    j = sm.argmax(-1)
    rows = torch.arange(B, device=x.device)
    return sm[rows, j], j * C + x.view(B, split, C)[rows, j].argmax(-1)


def _nonneg_where(d: torch.Tensor, floor: torch.Tensor, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the entries with ``d >= floor[row]``, few per row: slices whose max passes first,
    then inside those slices only (a [B, V] bool and ``nonzero`` cost ~5 ms at 128 x 49k, this ~1 ms)."""
    B, V = d.shape
    if split <= 1:
        return (d >= floor).nonzero(as_tuple=True)
    C = V // split
    dv = d.view(B, split, C)
    r, j = (dv.amax(-1) >= floor).nonzero(as_tuple=True)
    i, k = (dv[r, j] >= floor[r]).nonzero(as_tuple=True)
    return r[i], j[i] * C + k


def _sample_screened(lg: torch.Tensor, keys: torch.Tensor, step, hv: torch.Tensor,
                     work: SamplerWork) -> Optional[torch.Tensor]:
    """The Gumbel-max token of every row, with float64 scores only for the few tokens that can win.

    Exact, not an approximation. With ``L`` the score of the row's most likely token, a token j can reach
    ``L`` only if its noise ``g_j >= L - lg_j``, i.e. ``1 - u_j <= 1 - exp(-exp(lg_j - L)) <= exp(lg_j - L)``.
    That is tested for every token in fp32: ``exp(lg_j - max)`` against the noise bits scaled per row (one
    exp per token, no log, no float64), with the relative slack ``_SCREEN_EPS`` (``min(|bits|, cap)``
    folds in the tokens with ``exp(lg_j - L) >= 1/2``, which may win at any ``u >= 1/2``; tokens with
    ``u < 1/2`` and small bits pass too, harmlessly). It passes ~3 tokens per row on the offline default's AV
    (measured) and every token that can win or tie. The candidates' scores then come from
    :func:`gumbel_scores`, the same float64 operations through the same vectorized kernels as the full
    [B, V] path (their count padded to a multiple of 32, one thread), so the argmax (first index among
    equal scores) is the full path's. Returns None where the screen does not apply (non-finite logits, too
    many candidates): the caller runs the full path. 2-core CPU, 128 rows x 49k: 82 -> ~15 ms per step."""
    B, V = lg.shape
    if lg.dtype != torch.float32 or V < 64:
        return None
    split = _SPLIT if V % _SPLIT == 0 and V >= 64 * _SPLIT else 1
    mx, top = _row_max(lg, split)
    if not bool(torch.isfinite(mx).all()):
        return None
    bits = noise_bits(keys, step, hv, out=work.get("bits", (B, V), torch.int32, lg.device),
                      tmp=work.get("tmp", (B, V), torch.int32, lg.device))
    rows = torch.arange(B, device=lg.device)
    # L <= the best score; its own rounding does not matter (only the candidates' scores must be exact)
    cand = _screen(lg, mx, gumbel_scores(bits[rows, top], lg[rows, top]), bits, split, work)
    if cand is None:
        return None
    r, c = cand
    return _pick(r, c, bits[r, c], lg[r, c], B, V)


def _screen(ub: torch.Tensor, mx: torch.Tensor, score: torch.Tensor, bits: torch.Tensor, split: int,
            work: SamplerWork) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, cols) of every token that can reach ``score`` [B] (float64: a score some token of the row
    reaches, so a lower bound on the row's best), given upper bounds ``ub`` [B, V] fp32 on the logits (the
    logits themselves in :func:`_sample_screened`) with row maxima ``mx``, and the noise ``bits``: the test
    of :func:`_sample_screened` with ``lg_j`` replaced by its bound. None: too many candidates."""
    B, V = ub.shape
    dev = ub.device
    kappa = (torch.exp(score - mx.double()) / (4294967296.0 * (1 + _SCREEN_EPS))).float()[:, None]
    # d = exp(ub - max) - kappa * min(|bits|, cap); a token can win only where d >= -kappa: for u >= 1/2,
    # |bits| = 2^32 (1 - u) + 1/2 (hence the floor -kappa, not 0)
    d = torch.sub(ub, mx[:, None], out=work.get("q", (B, V), torch.float32, dev)).exp_()
    a = work.get("a", (B, V), torch.float32, dev)
    a.copy_(bits).abs_().clamp_max_(_SCREEN_CAP)
    torch.addcmul(d, a, kappa, value=-1.0, out=d)
    r, c = _nonneg_where(d, -kappa, split)
    if r.numel() > _SCREEN_MAX:  # one thread and whole vectors only below torch's grain size
        return None
    return r, c


def _pick(r: torch.Tensor, c: torch.Tensor, bc: torch.Tensor, lc: torch.Tensor, B: int, V: int
          ) -> Optional[torch.Tensor]:
    """The token of each row among its candidates (rows ``r``, columns ``c``, noise bits ``bc`` and exact
    fp32 logits ``lc`` there): the largest float64 score, the first column among equal scores."""
    n = r.numel()
    dev = r.device
    pad = (-n) % 32  # whole vectors: the same kernel path (vectorized log) as every element of [B, V]
    if pad:
        bc = torch.cat([bc, bc.new_zeros(pad)])
        lc = torch.cat([lc, lc.new_zeros(pad)])
    s = gumbel_scores(bc, lc)[:n]
    best = torch.full((B,), -math.inf, dtype=torch.float64, device=dev).scatter_reduce_(0, r, s, "amax")
    nxt = torch.full((B,), V, dtype=torch.long, device=dev).scatter_reduce_(
        0, r, torch.where(s == best[r], c, torch.full_like(c, V)), "amin")
    if bool((nxt == V).any()):  # a row without a candidate cannot happen (its top token passes); be safe
        return None
    return nxt


def _sample(logits, keys, step, hv, temperature: float, top_k: int, top_p: float, greedy: bool,
            work: Optional[SamplerWork] = None, screen: bool = False):
    """``sampling.sample_next`` with a tensor step (same Gumbel-max over the filtered fp32 logits).
    ``work`` (the CPU engine's): the screened sampler on reusable buffers, with the full path as fallback.
    ``screen`` (CUDA engines whose self-check passed): the Triton sampler that computes float64 scores only
    near each row's best (``fast.sampler_kernel``; the same tokens)."""
    if greedy:
        return logits.float().argmax(-1)
    screen = screen and logits.is_cuda and logits.dim() == 2
    if screen and not top_k and top_p >= 1.0 and temperature == 1.0:
        lg = logits  # the kernel reads the logits as they are, converting them as .float() does: no fp32 copy
    else:
        lg = filter_logits(logits, top_k, top_p)
        if temperature != 1.0:  # x / 1.0 is x: no [B, V] copy at the default temperature
            lg = lg / float(temperature)
    if screen:
        from nlalab.verbalize.fast.sampler_kernel import gumbel_argmax

        return gumbel_argmax(lg, key_premix(keys, step), hv)
    if work is not None:
        nxt = _sample_screened(lg, keys, step, hv, work)
        if nxt is not None:
            return nxt
    return _argmax_rows(gumbel_scores(noise_bits(keys, step, hv), lg))


def screen_self_check(hv: torch.Tensor, rows: int = 16) -> str:
    """'' if ``sampler_kernel.gumbel_argmax`` (the CUDA Triton sampler) picks the full float64 path's tokens
    on test logits (flat, ordinary and peaked rows, ties, -inf columns, a NaN row, +inf entries, a row of
    -inf; fp32 and bf16) on ``hv``'s device, else what differed. Run at every CUDA engine build."""
    from nlalab.verbalize.fast.sampler_kernel import gumbel_argmax

    dev = hv.device
    V = int(hv.shape[0])
    g = torch.Generator(device=dev).manual_seed(0)
    keys = torch.randint(0, 2 ** 32, (rows,), device=dev, generator=g)
    for case, sigma in (("flat", 0.01), ("ordinary", 1.0), ("peaked", 8.0), ("ties", 1.0), ("special", 1.0)):
        lg = torch.randn(rows, V, device=dev, generator=g) * sigma
        if case == "ties":
            lg = torch.round(lg * 2) / 2
        if case == "special":
            lg[:, ::7] = float("-inf")
            lg[1, V // 3] = float("nan")
            lg[2, V // 2] = lg[2, V // 5] = float("inf")
            lg[3] = float("-inf")
        for step in (0, 1):
            for x in (lg, lg.bfloat16()):  # bf16 logits are read as .float() gives them
                ref = _argmax_rows(gumbel_scores(noise_bits(keys, step, hv), x.float()))
                got = gumbel_argmax(x, key_premix(keys, step), hv)
                if not torch.equal(ref, got):
                    return (f"{case} {x.dtype} logits, step {step}: {int((ref != got).sum())} of {rows} rows "
                            "differ")
    return ""


_SPLIT = 64


def _argmax_rows(x: torch.Tensor, two_stage: Optional[bool] = None) -> torch.Tensor:
    """``x.argmax(-1)`` over a [B, V] vocabulary row, on CUDA in two stages (the max of each of 64 slices,
    then the best slice): one program per row looped over 150k+ entries and left most SMs idle (the fused
    head + sampler took 0.33 ms of a 6.5 ms decode step on an H200 at 150 rows). Same index: the
    Gumbel-perturbed float64 scores of distinct tokens do not tie."""
    B, V = x.shape
    if two_stage is None:
        two_stage = x.device.type == "cuda"
    if not two_stage or V % _SPLIT or V < 64 * _SPLIT:
        return x.argmax(-1)
    m, i = x.view(B, _SPLIT, V // _SPLIT).max(-1)
    j = m.argmax(-1)
    return j * (V // _SPLIT) + i.gather(1, j[:, None]).squeeze(1)


def _head_sample(x, norm_w, eps: float, gemma: bool, lm_w, lm_b, final_softcap: Optional[float], keys, step, hv,
                 done, eos, pad: int, temperature: float, top_k: int, top_p: float, greedy: bool,
                 work: Optional[SamplerWork] = None, screen: bool = False):
    """Final norm, LM head, soft-capping, sampling, pad-after-end, and the updated finished flags. ``work``
    (eager CPU decoding): its bounded bf16 head samples where it applies (``fast.head``), else the logits go
    into a reused buffer (``mm`` into it gives F.linear's values) and the screened sampler runs."""
    h = _rms(x, norm_w, eps, gemma)
    nxt = None
    if (work is not None and work.head is not None and lm_b is None and final_softcap is None and not greedy
            and not top_k and top_p >= 1.0 and h.dim() == 2):
        nxt = work.head.sample(h, keys, step, hv, temperature, work)  # None: it does not apply, full path
    if nxt is None:
        if work is not None and lm_b is None and h.dim() == 2:
            logits = torch.mm(h, lm_w.t(), out=work.get("logits", (h.shape[0], lm_w.shape[0]), h.dtype, h.device))
        else:
            logits = F.linear(h, lm_w, lm_b)
        if final_softcap is not None:
            logits = logits / final_softcap
            logits = torch.tanh(logits)
            logits = logits * final_softcap
        nxt = _sample(logits, keys, step, hv, temperature, top_k, top_p, greedy, work, screen)
    nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
    if eos is not None:
        done = done | torch.isin(nxt, eos)
    return nxt, done


_COMPILED: dict = {}


def _compiled_fns(mode: str) -> dict:
    """The decode-step functions for a compile mode; one set per process, so engines rebuilt for a new
    call reuse dynamo's compiled code instead of compiling again."""
    autotune = os.environ.get("NLALAB_FAST_AUTOTUNE", "0") not in ("0", "", "false", "False")
    fns = _COMPILED.get((mode, autotune))
    if fns is not None:
        return fns
    fns = {"pre": _pre_attn, "post": _post_attn, "head": _head_sample}
    if mode != "none":
        import torch._dynamo
        import torch._inductor.config as icfg

        cfg = torch._dynamo.config
        for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(int(getattr(cfg, name)), 256))
        # round at every .to(bf16) as eager does, so compiled steps follow the eager numerics
        opts = {"emulate_precision_casts": True} if hasattr(icfg, "emulate_precision_casts") else {}
        if autotune:  # NLALAB_FAST_AUTOTUNE=1: inductor benchmarks Triton GEMM templates against cuBLAS
            opts.update({"max_autotune": True, "max_autotune_gemm_backends": "ATEN,TRITON"})
        fns["head"] = torch.compile(_head_sample, fullgraph=True, options=opts)
        if mode == "all":
            fns["pre"] = torch.compile(_pre_attn, fullgraph=True, options=opts)
            fns["post"] = torch.compile(_post_attn, fullgraph=True, options=opts)
    _COMPILED[(mode, autotune)] = fns
    return fns
