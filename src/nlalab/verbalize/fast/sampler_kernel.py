"""Exact Gumbel-max sampling on CUDA with float64 scores only where a token can win (Triton).

The sampler's token is the argmax over the vocabulary of ``S_j = lg_j - log(-log(u_j))`` in float64 (first
index among equal scores), ``u_j`` from the 32-bit noise hash of (row key, step, token)
(``maths.gumbel_scores``). The fused float64 pass over [rows, vocabulary] took ~0.3 ms of a 6.3 ms decode
step on an H200 (150 rows x 152k): two float64 logs per entry. This sampler: 0.12 ms, same tokens
(``bench/results/qwen2.5-7b_h200_run8.json``, ``tests/gpu/test_gpu_sampler_kernel.py``).

Here the same argmax comes from three steps, with no change in the tokens:

1. ``_pass1``: each (row, slice of the vocabulary) computes ``s_j``, the score in fp32 (log1p where ``u``
   is near 1, so the largest noises keep their precision), and stores the slice's max.
2. ``_pass2``: each (row, slice) reads the row's max ``M`` of ``s``; the candidates are the tokens with
   ``s_j >= M - delta``, ``delta = ABS + REL |M|``. Only blocks that hold a candidate compute float64
   scores, exactly as ``gumbel_scores`` does (the same operations in the same order), for their candidates.
   A slice stores its best float64 score and the first column reaching it.
3. :func:`combine` (torch): the best slice per row, the first column among equal scores.

Why it is exact: ``|s_j - S_j| <= E`` for every token, with ``E ~ 1e-5 (1 + |S_j|)`` (fp32 rounding of the
noise, of two logs and of the sum), and ``delta >= 2E`` by two orders of magnitude. If ``j*`` is the
argmax of ``S``, then ``s_j* >= S_j* - E >= S_j - E >= s_j - 2E`` for every ``j``, so ``s_j* >= M - 2E``:
``j*`` and every token tied with it are candidates, and their float64 scores are the full path's. Rows
with a NaN logit take the first NaN (what ``argmax`` returns on the full path); +inf logits are their own
candidates (``M = inf``); a row of -inf makes every token a candidate.

A row has about one candidate whatever the logits look like (the top two Gumbel-perturbed scores of a
row are rarely within 1e-3), so pass 2 costs one block per row, and pass 1 is fp32 work only.
"""

from __future__ import annotations

import torch

#: the candidate margin ``delta = ABS + REL * |M|`` (see the module docstring: ~100x the fp32 error bound)
ABS, REL = 1e-3, 1e-4
#: columns per block and the number of vocabulary slices per row (programs per row in both passes)
BLOCK, SLICES = 1024, 32

try:  # CUDA installs; the kernels are defined at module level so that Triton finds the helpers they call
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - CPU-only installs
    triton = None


def available() -> bool:
    """Triton imports (the kernels compile at their first launch, on a CUDA device)."""
    return triton is not None


if triton is not None:
    @triton.jit
    def _bits(kp, hv):
        """lowbias32 after its first round on int32 bits (``maths._hash32_tail_``), of ``kp ^ hv``."""
        x = kp ^ hv
        x = x * tl.full([], 2146121005, tl.int32)  # maths._M1; int32 products wrap mod 2^32
        x = x ^ ((x >> 15) & 0x1FFFF)
        x = x * tl.full([], -2073254261, tl.int32)  # maths._M2
        return x ^ ((x >> 16) & 0xFFFF)

    @triton.jit
    def _score32(bits, lg):
        """``lg - log(-log(u))`` in fp32. Where u >= 1/2, ``-log(u) = -log1p(-w)`` from ``w = 1 - u`` (exact
        before its fp32 rounding) by Goldberg's ``log1p(x) = log(1 + x) x / ((1 + x) - 1)``: the noises near 1,
        the largest Gumbel values, keep their relative precision (fp32 ``u`` would round them to 1)."""
        ui = bits.to(tl.uint32, bitcast=True).to(tl.int64)
        u = (ui.to(tl.float32) + 0.5) * 2.3283064365386963e-10
        w = ((4294967295 - ui).to(tl.float32) + 0.5) * 2.3283064365386963e-10
        y = 1.0 - w
        lo = u < 0.5
        ln = tl.log(tl.where(lo, u, y))  # one log for both branches
        e = tl.where(lo, -ln, tl.where(y == 1.0, w, ln * w / (y - 1.0)))
        return lg + (-tl.log(e))

    @triton.jit
    def _score64(bits, lg):
        """``maths.gumbel_scores``: ``(u + 0.5) / 2^32``, log, neg, log, neg, plus the fp32 logit, in float64."""
        u = bits.to(tl.uint32, bitcast=True).to(tl.float64)
        g = -tl.log(-tl.log((u + 0.5) * 2.3283064365386963e-10))
        return g + lg.to(tl.float64)

    @triton.jit
    def _pass1(LG, KP, HV, PMAX, PNAN, s_lg, V, CHUNK: tl.constexpr, NS: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        s = tl.program_id(1)
        kp = tl.load(KP + b)
        lo = s * CHUNK
        hi = tl.minimum(lo + CHUNK, V)
        cols0 = tl.arange(0, BLOCK)
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        nan = tl.zeros([BLOCK], tl.int32)
        for i in range(0, CHUNK, BLOCK):
            cols = lo + i + cols0
            ok = cols < hi
            lg = tl.load(LG + b * s_lg + cols, mask=ok, other=float("-inf")).to(tl.float32)
            sc = _score32(_bits(kp, tl.load(HV + cols, mask=ok, other=0)), lg)
            isn = sc != sc
            nan = nan | isn.to(tl.int32)
            m = tl.maximum(m, tl.where(isn | ~ok, float("-inf"), sc))
        tl.store(PMAX + b * NS + s, tl.max(m, 0))
        tl.store(PNAN + b * NS + s, tl.max(nan, 0))

    @triton.jit
    def _pass2(LG, KP, HV, PMAX, PNAN, BEST, IDX, s_lg, V, ABS, REL, CHUNK: tl.constexpr, NS: tl.constexpr,
               NSP: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        s = tl.program_id(1)
        k = tl.arange(0, NSP)
        M = tl.max(tl.load(PMAX + b * NS + k, mask=k < NS, other=float("-inf")), 0)
        any_nan = tl.max(tl.load(PNAN + b * NS + k, mask=k < NS, other=0), 0)
        mine = tl.load(PMAX + b * NS + s)
        my_nan = tl.load(PNAN + b * NS + s)
        thr = tl.where(M == float("inf"), M, M - (ABS + REL * tl.abs(M)))
        lo = s * CHUNK
        hi = tl.minimum(lo + CHUNK, V)
        cols0 = tl.arange(0, BLOCK)
        best = tl.max(tl.full([2], float("-inf"), tl.float64), 0)
        idx = V
        if any_nan > 0:  # the first NaN of the row wins (as argmax); best = +inf marks a slice that has one
            if my_nan > 0:
                first = V
                for i in range(0, CHUNK, BLOCK):
                    cols = lo + i + cols0
                    lg = tl.load(LG + b * s_lg + cols, mask=cols < hi, other=0.0).to(tl.float32)
                    first = tl.minimum(first, tl.min(tl.where(lg != lg, cols, V), 0))
                best = tl.max(tl.full([2], float("inf"), tl.float64), 0)
                idx = first
        elif mine >= thr:
            kp = tl.load(KP + b)
            for i in range(0, CHUNK, BLOCK):
                cols = lo + i + cols0
                ok = cols < hi
                lg = tl.load(LG + b * s_lg + cols, mask=ok, other=float("-inf")).to(tl.float32)
                bits = _bits(kp, tl.load(HV + cols, mask=ok, other=0))
                cand = ok & (_score32(bits, lg) >= thr)
                if tl.max(cand.to(tl.int32), 0) > 0:
                    sc = tl.where(cand, _score64(bits, lg), float("-inf"))
                    bb = tl.max(sc, 0)
                    bi = tl.min(tl.where(cand & (sc == bb), cols, V), 0)
                    if (bb > best) | (idx == V):
                        best = bb
                        idx = bi
        tl.store(BEST + b * NS + s, best)
        tl.store(IDX + b * NS + s, idx)


def gumbel_argmax(lg: torch.Tensor, kpre: torch.Tensor, hv: torch.Tensor) -> torch.Tensor:
    """The Gumbel-max token [B] (int64) of logits ``lg`` [B, V] (filtered and tempered already; read as
    ``lg.float()``, so bf16 logits need no fp32 copy), row
    keys premixed for this step ``kpre`` [B] int32 (``maths.key_premix``) and the token hash ``hv`` [V] int32
    (``maths.token_hash``): the same tokens as ``_argmax_rows(gumbel_scores(noise_bits(...), lg))``."""
    B, V = lg.shape
    if lg.stride(-1) != 1:
        lg = lg.contiguous()
    ns = max(1, min(SLICES, -(-V // BLOCK)))
    chunk = -(-V // ns)
    chunk = -(-chunk // BLOCK) * BLOCK
    ns = -(-V // chunk)
    dev = lg.device
    pmax = torch.empty(B, ns, device=dev, dtype=torch.float32)
    pnan = torch.empty(B, ns, device=dev, dtype=torch.int32)
    best = torch.empty(B, ns, device=dev, dtype=torch.float64)
    idx = torch.empty(B, ns, device=dev, dtype=torch.int32)
    _pass1[(B, ns)](lg, kpre, hv, pmax, pnan, lg.stride(0), V, CHUNK=chunk, NS=ns, BLOCK=BLOCK, num_warps=4)
    _pass2[(B, ns)](lg, kpre, hv, pmax, pnan, best, idx, lg.stride(0), V, ABS, REL, CHUNK=chunk, NS=ns,
                NSP=max(2, 1 << (ns - 1).bit_length()), BLOCK=BLOCK, num_warps=4)
    return combine(best, idx, V)


def combine(best: torch.Tensor, idx: torch.Tensor, V: int) -> torch.Tensor:
    """Per row, the slices' answer: the largest score among slices that have a candidate, the first
    column among equal scores (every row has one: its best token is a candidate)."""
    valid = idx < V
    bm = torch.where(valid, best, float("-inf")).amax(1, keepdim=True)
    idx64 = idx.to(torch.int64)
    return torch.where(valid & (best == bm), idx64, torch.full_like(idx64, V)).amin(1)

