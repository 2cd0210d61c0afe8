"""The CPU LM head + sampler without the fp32 [rows, vocabulary] GEMM: bf16 logits with a proven error
bound pick the few tokens that can win, and only those get their exact fp32 logits.

Why: at 128 rows the offline default's fp32 head GEMM (576 x 49k) took 37 ms of a ~270 ms CPU decode step;
the same GEMM in bf16 on the AMX units takes ~11 ms. The sampled token must stay exactly the fp32 one, so:

1. ``lg~ = bf16(h) @ bf16(W)^T`` (fp32 accumulation, bf16 output). For every token, with ``u = 2^-9`` the
   bf16 unit roundoff and ``g_K = K * 2^-24`` the fp32 summation bound over ``K`` products:
   ``|lg~_j - lg_j| <= eps_j = a |lg~_j| + c ||h|| ||w_j||`` where ``a = 1.25 u / (1 - u)`` (the output
   rounding) and ``c = 1.25 ((2u + u^2) + 2 g_K)`` (input rounding of h and w, the bf16 GEMM's and the
   reference fp32 GEMM's summation; ``sum_i |h_i w_ji| <= ||h|| ||w_j||``), with a 25 % margin.
2. ``lg~ + eps`` bounds every logit from above; the exact logit of each row's top token (one small fp32
   GEMM) gives the score ``L`` that row's best reaches. The screen of ``maths._sample_screened`` with the
   bounds in place of the logits then keeps every token that can reach ``L`` (~4 per row measured).
3. Exact fp32 logits of the candidates' columns: ``h @ W[cols]^T``. MKL computes each output column the
   same way whatever other columns share the call (bitwise equal to the full GEMM's column for M >= 17
   rows and >= 2 columns, measured for N = 2-20000), so these are the reference logits bit for bit.

What is assumed is checked when the head is built (per process and shape): the column invariance above at
three row and column counts, the bound (the largest ``|lg~ - lg| / eps`` on random rows must stay below
0.5), and the speed (bf16 at least 1.5x fp32 here; without AMX/AVX512-BF16 it is not). Any failure, fewer
than ``MIN_ROWS`` rows, a soft-capped/biased head, top-k/top-p or greedy decoding: the exact full path.
At every step the exact logits of each row's top token and of every candidate are also checked against
their bounds; a violation disables the head for the engine (a warning) and that step runs the full path.
A screen that passes too many candidates (near-flat rows) hands back too, with a doubling back-off.

The bf16 copy of the weight is made when the engine is built; like the engine's prefix K/V it assumes the
weights do not change while the engine lives (engines end with each ``verbalize`` call unless
``OPTIONS.keep_state``).
"""

from __future__ import annotations

import time
import warnings
from typing import Optional

import torch

from nlalab.verbalize.fast.maths import (
    _SPLIT,
    SamplerWork,
    _pick,
    _row_max,
    _screen,
    gumbel_scores,
    noise_bits,
)

MIN_ROWS = 32  # column invariance measured from 17 rows; below this the full path
_U = 2.0 ** -9
_CHECKS: dict = {}  # (V, K, threads) -> bool: the build-time checks, once per process


def _coefs(K: int) -> tuple[float, float]:
    a = 1.25 * _U / (1 - _U)
    c = 1.25 * ((2 * _U + _U * _U) + 2 * K * 2.0 ** -24)
    return a, c


class BoundedHead:
    """bf16 copy of the head weight, its row norms, and the sampling step over them (see module doc)."""

    def __init__(self, w: torch.Tensor):
        self.w = w
        self.wb = w.detach().to(torch.bfloat16)
        self.wn = w.detach().double().norm(dim=1).float()
        self.wmax = float(self.wn.max()) * (1 + 1e-6)
        self.a, self.c = _coefs(w.shape[1])
        self.enabled = True
        # near-flat rows (e.g. the blind control's run-to-the-limit rows) pass too many candidates; after
        # such a step the next ``backoff`` steps go straight to the full path (doubling up to 64, reset by
        # a step that works), so the bf16 GEMM and screen are not paid twice on every step
        self.skip = 0
        self.backoff = 1

    @staticmethod
    def build(w: torch.Tensor, force: bool = False) -> Optional["BoundedHead"]:
        """A head for ``w`` [V, K] fp32 on the CPU, or None where the checks fail (see module doc).
        ``force``: skip the speed check (the exactness checks still run)."""
        if w.device.type != "cpu" or w.dtype != torch.float32 or w.dim() != 2:
            return None
        head = BoundedHead(w)
        key = (w.shape[0], w.shape[1], torch.get_num_threads())
        if key not in _CHECKS:
            _CHECKS[key] = (head._exact_ok(), head._faster())
        exact, faster = _CHECKS[key]
        return head if exact and (faster or force) else None

    def _faster(self) -> bool:
        """bf16 at least 1.5x the fp32 GEMM here, at 64 rows (AMX: ~3.5x; without AVX512-BF16: slower)."""
        g = torch.Generator().manual_seed(1)
        h = torch.randn(64, self.w.shape[1], generator=g)
        hb = h.to(torch.bfloat16)
        times = []
        for fn in (lambda: torch.mm(h, self.w.t()), lambda: torch.mm(hb, self.wb.t())):
            fn()
            t = time.perf_counter()
            for _ in range(3):
                fn()
            times.append(time.perf_counter() - t)
        return times[1] * 1.5 <= times[0]

    def _exact_ok(self) -> bool:
        """MKL's column invariance at three row/column counts, and the bound with room (worst ratio < 0.5)."""
        g = torch.Generator().manual_seed(0)
        V, K = self.w.shape
        worst = 0.0
        for M, N in ((MIN_ROWS, 32), (64, 300), (128, 2000)):
            h = torch.randn(M, K, generator=g) * 2.0
            full = torch.mm(h, self.w.t())
            idx = torch.randperm(V, generator=g)[:N].sort().values
            if not torch.equal(torch.mm(h, self.w[idx].t()), full[:, idx]):
                return False
            lgb = torch.mm(h.to(torch.bfloat16), self.wb.t()).float()
            eps = self.a * lgb.abs() + self.c * h.double().norm(dim=1).float()[:, None] * self.wn[None, :]
            worst = max(worst, float(((lgb - full).abs() / eps).max()))
        return worst < 0.5

    def sample(self, h: torch.Tensor, keys: torch.Tensor, step, hv: torch.Tensor, temperature: float,
               work: SamplerWork) -> Optional[torch.Tensor]:
        """The token of every row of ``h`` [B, K] fp32 (final-normed hidden states), exactly as the full fp32
        head + Gumbel-max sampler gives it; None where this path does not apply (the caller runs that one).

        One bound per row, ``e = a max_j |lg~_j| + c ||h|| max_j ||w_j||`` (>= every ``eps_j``), so the bf16
        logits are screened as they are, with the row's reference score lowered by ``e``: no [B, V] pass
        builds per-token bounds (measured: 2-3x their candidates, still ~10 per row)."""
        B, K = h.shape
        V = self.w.shape[0]
        if not self.enabled or B < MIN_ROWS or h.dtype != torch.float32:
            return None
        if self.skip:
            self.skip -= 1
            return None
        dev = h.device
        # lg~ as fp32 (exact: bf16 values are fp32 values), so every screen pass reads one dtype
        ub = work.get("ub", (B, V), torch.float32, dev).copy_(torch.mm(h.to(torch.bfloat16), self.wb.t()))
        t = float(temperature)
        if t != 1.0:  # lg~ / T; the bound e scales with it
            ub.div_(t)
        split = _SPLIT if V % _SPLIT == 0 and V >= 64 * _SPLIT else 1
        mx, top = _row_max(ub, split)
        mn = ub.amin(-1)
        if not bool(torch.isfinite(mx).all() and torch.isfinite(mn).all()):
            return None
        e = (self.a * torch.maximum(mx.abs(), mn.abs()) * t + self.c * h.double().norm(dim=1).float() * self.wmax) / t
        rows = torch.arange(B, device=dev)
        lt = self._exact(h, top)[rows, rows]  # exact logit of each row's top token
        if t != 1.0:
            lt = lt / t
        if not bool((lt <= ub[rows, top] + e).all()):
            return self._failed()
        bits = noise_bits(keys, step, hv, out=work.get("bits", (B, V), torch.int32, dev),
                          tmp=work.get("tmp", (B, V), torch.int32, dev))
        score = gumbel_scores(bits[rows, top], lt) - e.double()  # token j can win only if lg~_j/T + e + g_j >= it
        cand = _screen(ub, mx, score, bits, split, work)
        if cand is None:
            self.skip, self.backoff = self.backoff, min(64, 2 * self.backoff)
            return None
        self.backoff = 1
        r, c = cand
        cols, pos = torch.unique(c, return_inverse=True)
        lc = self._exact(h, cols)[r, pos]
        bound = ub[r, c] + e[r]
        if t != 1.0:
            lc = lc / t
        if not bool((lc <= bound).all()):
            return self._failed()
        return _pick(r, c, bits[r, c], lc, B, V)

    def _failed(self) -> None:
        """An exact logit above its bound: the bf16 arithmetic is not what the proof assumes here, so this
        head is never trusted again (the step, and every later one, runs the full fp32 path)."""
        self.enabled = False
        warnings.warn("fast engine: the bf16 head bound failed on this CPU; sampling from the full fp32 head "
                      "from now on (same tokens, slower).")
        return None

    def _exact(self, h: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``h @ W[cols]^T`` [B, len(cols)], at least 32 columns (column invariance measured from 2)."""
        n = cols.numel()
        if n == 0:
            return h.new_empty(h.shape[0], 0)
        if n < 32:
            cols = torch.cat([cols, cols[:1].expand(32 - n)])
        return torch.mm(h, self.w.index_select(0, cols).t())[:, :n]
