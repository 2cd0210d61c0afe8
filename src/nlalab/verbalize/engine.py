"""Fast verbalization engine (``engine="fast"``): shared-prefix prefill, static KV cache, CUDA graphs.

What it does, and why each part is there:

- **Prefix sharing.** Every AV prompt is the same token sequence except the injected marker row, so
  the keys/values of the ``P = marker_pos`` tokens *before* the marker are computed once, at batch 1.
  Each row only computes the suffix from the marker on (``S = len(prompt) - P`` tokens) in prefill.
  Two cache layouts (``EngineOptions.attention``):
  ``shared`` keeps the prefix K/V once; decode attention reads it once per KV head per step (a Triton
  flash-decoding kernel on CUDA in bf16/fp16, reading only the filled cache slots; elsewhere a two-part
  GEMM attention) -- no per-row prefix slots, least memory and traffic. ``copy`` broadcasts the prefix
  K/V into slots ``[0, P)`` of every row's cache once per batch shape, and decode attention is
  ``F.scaled_dot_product_attention`` over the whole static cache with a mask. ``auto``: ``shared``
  when the Triton kernel is available (it passes a self-check at engine build), else ``copy`` unless
  memory fits more rows with ``shared``.
- **Static cache.** Each row's cache holds ``(P +) S + max_new_tokens`` slots, allocated once per batch
  shape and reused; slots beyond the current step are masked (same mask for every row, since all
  rows advance in lockstep and share one prompt length). GQA without repeating K/V: the query heads
  of one KV head are stacked along the query axis.
- **One decode step = one CUDA graph replay.** Embedding, all layers (the projections, norms, RoPE and
  MLP ``torch.compile``'d per layer part, so one compiled graph serves every layer), attention, the
  final norm, the LM head, logit soft-capping and our counter-based sampler run inside the graph; the
  step counter is a device tensor that the graph increments itself. The host only replays, and looks
  at "all rows finished?" every ``check_every`` steps, so there is no per-step host sync; it stops
  early when all rows are done.
- **Sampling semantics are the ``loop`` engine's:** the noise for (seed, vector key, sample, step,
  token) is the same pure hash (``nlalab.verbalize.sampling``), so a row's tokens do not depend on
  batching, padding, micro-batch size or engine, whenever the logits agree (bitwise on CPU fp32).
- **Micro-batching** in equal chunks (the last padded with throw-away rows, so one graph serves all
  chunks), halved and retried on CUDA out-of-memory (the engine remembers the size that fitted).

The math is our own re-implementation of the decoder (RMSNorm, RoPE with the model's own cos/sin
tables read off its forward, GQA attention with sliding windows, gated MLP, final logit soft-capping)
over the model's parameters, for Llama, Qwen2 and Gemma-3 text (also Gemma-3 wrapper checkpoints,
which nlalab loads as text models). Formulas follow transformers' modules operation by operation; on
CPU in fp32 greedy and sampled outputs are token-identical to ``loop``/``hf`` (tests/unit/test_engine.py).
Prefill attention is ``scaled_dot_product_attention`` (fp32 scores), decode attention keeps fp32 scores
too (Triton kernel, sdpa); compiled parts keep eager's bf16 rounding points (inductor
``emulate_precision_casts``). In bf16 two kernel sets still round differently, so a row can leave the
``loop`` row at a near-tie after some tokens (tests/gpu/test_gpu_engine.py compares that rate with the
rate at which ``loop`` disagrees with itself at another batch size).

The engine holds the model's Parameters (not copies), so ``nlalab.pairs.load.release`` frees the
weights; per-batch buffers and graphs are freed at the end of each ``verbalize`` call unless
``OPTIONS.keep_state``. On CPU the engine runs the same prefix-sharing, static-cache and step logic
eagerly (no graphs, no compile), so the CPU tests exercise it.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nlalab.errors import NLALabError
from nlalab.pairs import arch
from nlalab.verbalize.inject import injected_embeds
from nlalab.verbalize.sampling import MASK32, filter_logits, hash32, row_keys

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "gemma3_text")

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


def _attend(q, kp, vp, kr, vr, mask_p, mask_r, scaling: float, softcap: Optional[float] = None):
    """Two-part GQA attention of q [B,H,S,D] over a shared prefix (kp/vp [kvH,P,D], no batch) and per-row
    keys (kr/vr [B,kvH,L,D]); boolean masks [S,P], [S,L] are the same for every row and head. The prefix
    scores come from one GEMM over all rows; one fp32 softmax spans both parts (scores are the matmul in
    the model dtype, as in transformers' eager attention)."""
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
        mask = torch.cat([mask_p, mask_r], dim=-1)
    else:
        P = 0
        s = s_r
        mask = mask_r
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


def uniform_t(keys: torch.Tensor, step, hv: torch.Tensor) -> torch.Tensor:
    """``sampling.uniform`` with the step as a Python int or a device tensor, and the per-token hash
    ``hv = hash32(arange(V) * 0x27D4EB2F & MASK32)`` precomputed; bitwise the same values."""
    k = hash32(keys ^ ((step * 0x85EBCA77 + 0x165667B1) & MASK32)).unsqueeze(1)
    bits = hash32(k ^ hv.unsqueeze(0))
    return (bits.to(torch.float64) + 0.5) / 4294967296.0


def token_hash(vocab: int, device) -> torch.Tensor:
    v = torch.arange(vocab, device=device, dtype=torch.int64)
    return hash32(v * 0x27D4EB2F & MASK32)


def _sample(logits, keys, step, hv, temperature: float, top_k: int, top_p: float, greedy: bool):
    """``sampling.sample_next`` with a tensor step (same Gumbel-max over the filtered fp32 logits)."""
    if greedy:
        return logits.float().argmax(-1)
    lg = filter_logits(logits, top_k, top_p) / float(temperature)
    u = uniform_t(keys, step, hv)
    g = -torch.log(-torch.log(u))
    return (lg.double() + g).argmax(-1)


def _head_sample(x, norm_w, eps: float, gemma: bool, lm_w, lm_b, final_softcap: Optional[float], keys, step, hv,
                 done, eos, pad: int, temperature: float, top_k: int, top_p: float, greedy: bool):
    """Final norm, LM head, soft-capping, sampling, pad-after-end, and the updated finished flags."""
    h = _rms(x, norm_w, eps, gemma)
    logits = F.linear(h, lm_w, lm_b)
    if final_softcap is not None:
        logits = logits / final_softcap
        logits = torch.tanh(logits)
        logits = logits * final_softcap
    nxt = _sample(logits, keys, step, hv, temperature, top_k, top_p, greedy)
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


# ------------------------------------------------------------------------- Triton decode attention

_TRITON: Any = None  # None: not tried; False: unavailable; else the jitted kernel


def _triton_kernel():
    """Flash-decoding over [shared prefix ; row cache up to the current position], one program per
    (row, KV head), all G query heads of that KV head at once; fp32 scores and online softmax."""
    global _TRITON
    if _TRITON is not None:
        return _TRITON
    try:
        import triton
        import triton.language as tl
    except Exception:  # pragma: no cover - CPU-only installs
        _TRITON = False
        return _TRITON

    @triton.jit
    def _decode_attn(Q, KP, VP, KR, VR, O, POS, KN, VN, sq_b, sq_h, skp_h, skp_n, skr_b, skr_h, skr_n, so_b, so_h,
                     skn_b, skn_h, svn_b, svn_h, P, ROW0, WINDOW, scale, G: tl.constexpr, BG: tl.constexpr,
                     BN: tl.constexpr, D: tl.constexpr, HAS_P: tl.constexpr, HAS_NEW: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1).to(tl.int64)
        pos = tl.load(POS)
        lo = tl.where(WINDOW > 0, pos - WINDOW, -1)  # keys at positions > lo are inside the window
        g = tl.arange(0, BG)
        d = tl.arange(0, D)
        n = tl.arange(0, BN)
        gm = g < G
        q = tl.load(Q + b * sq_b + (h * G + g)[:, None] * sq_h + d[None, :], mask=gm[:, None], other=0.0)
        m_i = tl.full([BG], -1.0e30, tl.float32)
        l_i = tl.zeros([BG], tl.float32)
        acc = tl.zeros([BG, D], tl.float32)
        if HAS_P:
            for start in range(0, P, BN):
                kpos = start + n
                valid = (kpos < P) & (kpos > lo)
                off = h * skp_h + kpos[:, None] * skp_n + d[None, :]
                k = tl.load(KP + off, mask=valid[:, None], other=0.0)
                v = tl.load(VP + off, mask=valid[:, None], other=0.0)
                s = tl.dot(q, tl.trans(k)) * scale
                s = tl.where(valid[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp(m_i - m_new)
                p = tl.exp(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                m_i = m_new
        cur = pos - ROW0  # cache slot of the current token
        n_rows = cur if HAS_NEW else cur + 1  # with HAS_NEW its K/V come in KN/VN and are written below
        for start in range(0, n_rows, BN):
            slot = start + n
            valid = (slot < n_rows) & (ROW0 + slot > lo)
            off = b * skr_b + h * skr_h + slot[:, None] * skr_n + d[None, :]
            k = tl.load(KR + off, mask=valid[:, None], other=0.0)
            v = tl.load(VR + off, mask=valid[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        if HAS_NEW:  # the current token: attend to it from registers and write it into the cache
            kn = tl.load(KN + b * skn_b + h * skn_h + d)
            vn = tl.load(VN + b * svn_b + h * svn_h + d)
            tl.store(KR + b * skr_b + h * skr_h + cur * skr_n + d, kn)
            tl.store(VR + b * skr_b + h * skr_h + cur * skr_n + d, vn)
            s_n = tl.sum(q.to(tl.float32) * kn.to(tl.float32)[None, :], 1) * scale
            m_new = tl.maximum(m_i, s_n)
            alpha = tl.exp(m_i - m_new)
            p_n = tl.exp(s_n - m_new)
            l_i = l_i * alpha + p_n
            acc = acc * alpha[:, None] + p_n[:, None] * vn.to(tl.float32)[None, :]
        out = acc / l_i[:, None]
        tl.store(O + b * so_b + (h * G + g)[:, None] * so_h + d[None, :], out.to(O.dtype.element_ty),
                 mask=gm[:, None])

    _TRITON = _decode_attn
    return _TRITON


def attend_decode_triton(q, kp, vp, kr, vr, pos, row0: int, window: Optional[int], scaling: float,
                         k_new=None, v_new=None):
    """q [B,H,1,D]; kp/vp [kvH,P,D] or None; kr/vr [B,kvH,L,D] with slot j at position row0 + j, filled up
    to position ``pos`` (a device int64 tensor [1]); returns [B,H,1,D]. With ``k_new``/``v_new``
    ([B,kvH,1,D], the current token's) the kernel also writes them into slot ``pos - row0``."""
    kern = _triton_kernel()
    B, H, _, D = q.shape
    n_kv = kr.shape[1]
    G = H // n_kv
    q3 = q.reshape(B, H, D)
    if q3.stride(-1) != 1:
        q3 = q3.contiguous()
    out = torch.empty(B, H, D, device=q.device, dtype=q.dtype)
    P = 0 if kp is None else int(kp.shape[1])
    kp_ = kp if kp is not None else kr
    vp_ = vp if vp is not None else vr
    BG = max(16, 1 << (G - 1).bit_length())
    has_new = k_new is not None
    if has_new:
        kn = k_new if k_new.stride(-1) == 1 else k_new.contiguous()
        vn = v_new if v_new.stride(-1) == 1 else v_new.contiguous()
    else:
        kn, vn = q3, q3
    kern[(B, n_kv)](q3, kp_, vp_, kr, vr, out, pos, kn, vn, q3.stride(0), q3.stride(1),
                    kp_.stride(-3) if kp is not None else 0, kp_.stride(-2) if kp is not None else 0,
                    kr.stride(0), kr.stride(1), kr.stride(2), out.stride(0), out.stride(1),
                    kn.stride(0), kn.stride(1), vn.stride(0), vn.stride(1),
                    P, int(row0), int(window or 0), float(scaling),
                    G=G, BG=BG, BN=64 if D <= 128 else 32, D=D, HAS_P=P > 0, HAS_NEW=has_new,
                    num_warps=4, num_stages=2)
    return out.view(B, H, 1, D)


# ------------------------------------------------------------------------------------------- model


@dataclass
class _Layer:
    ln_in: torch.Tensor
    ln_post_attn: torch.Tensor
    ln_pre_ff: Optional[torch.Tensor]
    ln_post_ff: Optional[torch.Tensor]
    wq: torch.Tensor
    bq: Optional[torch.Tensor]
    wk: torch.Tensor
    bk: Optional[torch.Tensor]
    wv: torch.Tensor
    bv: Optional[torch.Tensor]
    wo: torch.Tensor
    bo: Optional[torch.Tensor]
    qn: Optional[torch.Tensor]
    kn: Optional[torch.Tensor]
    wg: torch.Tensor
    wu: torch.Tensor
    wd: torch.Tensor
    window: Optional[int]
    rope: int  # index into the engine's cos/sin tables
    wqkv: Optional[torch.Tensor] = None  # fused weights (fuse_weights), views of which the Parameters are
    bqkv: Optional[torch.Tensor] = None
    wgu: Optional[torch.Tensor] = None


def _eps(norm: nn.Module) -> float:
    for name in ("variance_epsilon", "eps"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise NLALabError(f"fast engine: cannot read the epsilon of {type(norm).__name__}.")


def unsupported_reason(model: nn.Module) -> Optional[str]:
    """None if the fast engine supports ``model``, else why not (the caller falls back to ``loop``)."""
    cfg = arch.text_config(model.config)
    mt = getattr(cfg, "model_type", "")
    if mt not in SUPPORTED_MODEL_TYPES:
        return f"model type {mt!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    devs = {p.device for p in model.parameters()}
    if len(devs) != 1:
        return "weights on several devices (device_map sharding)"
    if next(iter(devs)).type == "meta":
        return "weights released (meta device)"
    if getattr(model, "lm_head", None) is None or not hasattr(model.lm_head, "weight"):
        return "no lm_head"
    try:
        arch.decoder_layers(model)
    except NLALabError as e:
        return str(e)
    if getattr(cfg, "use_bidirectional_attention", False):
        return "bidirectional attention"
    return None


@dataclass
class _State:
    """Static buffers of one batch shape; the CUDA graph reads and writes exactly these tensors."""

    B: int
    S: int
    Lr: int
    max_new: int
    kr: list
    vr: list
    cur: torch.Tensor
    t: torch.Tensor
    keys: torch.Tensor
    done: torch.Tensor
    out: torch.Tensor
    kpos_r: torch.Tensor
    shared: bool  # prefix K/V kept once (True) or copied into slots [0, P) of every row (False)
    off: int  # cache slot of prompt position P (the marker): 0 if shared, else P
    graph: Any = None
    graph_key: Any = None
    sp: Any = None  # the sampling settings (and eos tensor) the graph was captured with


@dataclass
class Stats:
    """What the last ``generate`` did (for tests and the benchmark's profile line)."""

    prefix_len: int = 0
    suffix_len: int = 0
    batch: int = 0
    steps: int = 0
    graphs: bool = False
    compile: str = "none"
    attention: str = ""
    prefill_s: float = 0.0
    decode_s: float = 0.0
    capture_s: float = 0.0
    extra: dict = field(default_factory=dict)


_LAST: list = [Stats()]


def last_stats() -> Stats:
    """Stats of the most recent ``FastEngine.generate`` in this process (engines may be gone by now)."""
    return _LAST[0]


class _EmbedOnly:
    """What ``injected_embeds`` needs of a model, without holding the model itself."""

    def __init__(self, embed: nn.Module):
        self._embed = embed

    def get_input_embeddings(self) -> nn.Module:
        return self._embed


class FastEngine:
    """One AV model + one prompt (prefix K/V cached). Use ``get_engine(av)``.

    Holds the model's Parameters and a weak reference to the model, never copies of the weights."""

    def __init__(self, model: nn.Module, prompt_ids: Sequence[int], marker_pos: int):
        why = unsupported_reason(model)
        if why:
            raise NLALabError(f"The fast engine does not support this AV: {why}. Use engine='loop'.")
        self._model = weakref.ref(model)
        self.cfg = arch.text_config(model.config)
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.P = int(marker_pos)
        self.T = len(self.prompt_ids)
        if not 0 <= self.P < self.T:
            raise NLALabError(f"marker_pos {self.P} outside the prompt of {self.T} tokens.")
        self.embed = model.get_input_embeddings()
        self.device = self.embed.weight.device
        self.dtype = self.embed.weight.dtype
        inner = arch.inner_model(model)
        layers = arch.decoder_layers(model)
        a0 = layers[0].self_attn
        self.gemma = hasattr(layers[0], "pre_feedforward_layernorm")
        self.n_heads = int(self.cfg.num_attention_heads)
        self.n_kv = int(self.cfg.num_key_value_heads)
        self.head_dim = int(getattr(a0, "head_dim", None) or self.cfg.hidden_size // self.n_heads)
        self.scaling = float(getattr(a0, "scaling", self.head_dim ** -0.5))
        # Gemma-3's attention modules do not pass attn_logit_softcapping to the attention function.
        fs = getattr(self.cfg, "final_logit_softcapping", None)
        self.final_softcap = float(fs) if fs is not None else None
        self.eps = _eps(layers[0].input_layernorm)
        self.qk_eps = _eps(a0.q_norm) if getattr(a0, "q_norm", None) is not None else self.eps
        self.act = layers[0].mlp.act_fn
        self.norm_w = inner.norm.weight
        self.norm_eps = _eps(inner.norm)
        self.lm_w = model.lm_head.weight
        self.lm_b = getattr(model.lm_head, "bias", None)
        self.vocab = int(self.lm_w.shape[0])
        self._check_norms(layers[0])
        self.layers: list[_Layer] = []
        for lay in layers:
            at, mlp = lay.self_attn, lay.mlp
            win = getattr(at, "sliding_window", None)
            self.layers.append(_Layer(
                ln_in=lay.input_layernorm.weight, ln_post_attn=lay.post_attention_layernorm.weight,
                ln_pre_ff=lay.pre_feedforward_layernorm.weight if self.gemma else None,
                ln_post_ff=lay.post_feedforward_layernorm.weight if self.gemma else None,
                wq=at.q_proj.weight, bq=at.q_proj.bias, wk=at.k_proj.weight, bk=at.k_proj.bias,
                wv=at.v_proj.weight, bv=at.v_proj.bias, wo=at.o_proj.weight, bo=at.o_proj.bias,
                qn=at.q_norm.weight if getattr(at, "q_norm", None) is not None else None,
                kn=at.k_norm.weight if getattr(at, "k_norm", None) is not None else None,
                wg=mlp.gate_proj.weight, wu=mlp.up_proj.weight, wd=mlp.down_proj.weight,
                window=int(win) if win else None, rope=0,
            ))
        self.windows = sorted({L.window for L in self.layers}, key=lambda w: -1 if w is None else w)
        self._fused: list = []
        fuse = OPTIONS.fuse_weights if OPTIONS.fuse_weights is not None else self.device.type == "cuda"
        if fuse:
            self._fuse(layers)
        self.cos: list[torch.Tensor] = []
        self.sin: list[torch.Tensor] = []
        self.kp: list[torch.Tensor] = []
        self.vp: list[torch.Tensor] = []
        self.hv = token_hash(self.vocab, self.device)
        self.compile_mode = _resolved_compile(self.device)
        self.use_graphs = _resolved_graphs(self.device)
        self.max_rows: Optional[int] = None  # largest micro-batch known to fit (after an OOM)
        self._fns = None
        self._cap_stream = None  # this engine's CUDA graph capture stream (made at the first capture)
        self.states: dict = {}
        self.stats = Stats()
        with torch.no_grad():
            self._rope_tables(self.T + 256)
            self._prefix()
        self.triton = self._triton_ok()

    # ---------------------------------------------------------------------------------- set-up

    def _fuse(self, layers) -> None:
        """q/k/v and gate/up of each layer into one buffer each; the Parameters become views of it."""
        with torch.no_grad():
            for lay, L in zip(layers, self.layers):
                at, mlp = lay.self_attn, lay.mlp
                groups = [[at.q_proj.weight, at.k_proj.weight, at.v_proj.weight],
                          [mlp.gate_proj.weight, mlp.up_proj.weight]]
                bs = [at.q_proj.bias, at.k_proj.bias, at.v_proj.bias]
                if all(b is not None for b in bs):
                    groups.append(bs)
                elif any(b is not None for b in bs):
                    continue
                fused = []
                for ps in groups:
                    buf = torch.cat([p.data for p in ps], 0)
                    o = 0
                    for p in ps:
                        p.data = buf[o:o + p.shape[0]]
                        o += p.shape[0]
                    fused.append(buf)
                    self._fused.extend(ps)
                L.wqkv, L.wgu = fused[0], fused[1]
                L.bqkv = fused[2] if len(fused) > 2 else None
        if self.device.type == "cuda":
            empty_cache()  # the old per-matrix blocks would otherwise stay reserved and fragment

    def unfuse(self) -> None:
        """Give every fused Parameter its own storage again (values unchanged). Needs one fused buffer of
        free memory at a time; if even that is missing, the Parameters stay views (same values)."""
        for L in self.layers:
            L.wqkv = L.bqkv = L.wgu = None
        with torch.no_grad():
            for p in self._fused:
                if p.device.type == "meta":
                    continue
                try:
                    p.data = p.data.clone()
                except torch.cuda.OutOfMemoryError:
                    empty_cache()
                    try:
                        p.data = p.data.clone()
                    except torch.cuda.OutOfMemoryError:
                        warnings.warn("fast engine: no memory to un-fuse the AV's q/k/v and gate/up weights; "
                                      "they stay views of one buffer per layer (same values).")
                        break
        self._fused = []
        for L in self.layers:
            L.wqkv = L.bqkv = L.wgu = None

    def alive(self) -> bool:
        m = self._model()
        return m is not None and self.lm_w.device.type != "meta" and self.lm_w.device == self.device

    def _check_norms(self, layer) -> None:
        """Our RMSNorm must equal the model's module bitwise (guards against an unknown norm variant)."""
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(2, 3, layer.input_layernorm.weight.shape[0], generator=g).to(self.device, self.dtype)
        with torch.no_grad():
            ref = layer.input_layernorm(x)
            ours = _rms(x, layer.input_layernorm.weight, self.eps, self.gemma)
        if not torch.equal(ref, ours):
            raise NLALabError(f"fast engine: {type(layer.input_layernorm).__name__} differs from our RMSNorm.")

    def _triton_ok(self) -> bool:
        """Triton decode attention: CUDA, half precision, and it must match the torch attention here."""
        if OPTIONS.triton is False or self.device.type != "cuda" or self.dtype not in (torch.bfloat16,
                                                                                        torch.float16):
            return False
        if self.head_dim & (self.head_dim - 1) or self.head_dim < 16:
            return False
        if not _triton_kernel():
            return False
        try:
            g = torch.Generator(device=self.device).manual_seed(0)
            B, P, L, D = 3, max(self.P, 1), 70, self.head_dim
            mk = lambda *s: torch.randn(*s, device=self.device, generator=g).to(self.dtype)  # noqa: E731
            q = mk(B, self.n_heads, 1, D)
            kp, vp = mk(self.n_kv, P, D), mk(self.n_kv, P, D)
            kr, vr = mk(B, self.n_kv, L, D), mk(B, self.n_kv, L, D)
            worst = 0.0
            for pos_v, win in ((P + 5, None), (P + L - 1, None), (P + 40, 17)):
                pos = torch.tensor([pos_v], device=self.device)
                got = attend_decode_triton(q, kp, vp, kr, vr, pos, P, win, self.scaling).float()
                kpos_p = torch.arange(P, device=self.device)
                kpos_r = P + torch.arange(L, device=self.device)
                mp, mr = kpos_p <= pos_v, kpos_r <= pos_v
                if win:
                    mp, mr = mp & (kpos_p > pos_v - win), mr & (kpos_r > pos_v - win)
                ref = _attend(q.float(), kp.float(), vp.float(), kr.float(), vr.float(), mp[None], mr[None],
                              self.scaling)
                worst = max(worst, float((got - ref).norm() / ref.norm()))
            if worst > 2e-2 or not math.isfinite(worst):
                warnings.warn(f"fast engine: Triton decode attention failed its self-check (rel. err {worst:.3g}); "
                              "using torch attention.")
                return False
            return True
        except Exception as e:  # pragma: no cover - depends on the GPU stack
            warnings.warn(f"fast engine: Triton decode attention unavailable ({e!r}); using torch attention.")
            return False

    def _rope_tables(self, length: int) -> None:
        """cos/sin per layer exactly as the model computes them: read off its own forward (hooks)."""
        model = self._model()
        layers = arch.decoder_layers(model)
        got: dict[int, tuple] = {}

        def hook(i):
            def fn(_m, args, kwargs):
                pe = kwargs.get("position_embeddings")
                if pe is None:
                    pe = next((a for a in args if isinstance(a, tuple) and len(a) == 2), None)
                got[i] = pe
            return fn

        hs = [lay.register_forward_pre_hook(hook(i), with_kwargs=True) for i, lay in enumerate(layers)]
        try:
            inner = arch.inner_model(model)
            emb = torch.zeros(1, length, self.cfg.hidden_size, device=self.device, dtype=self.dtype)
            inner(inputs_embeds=emb, position_ids=torch.arange(length, device=self.device)[None], use_cache=False)
        finally:
            for h in hs:
                h.remove()
        if len(got) != len(layers) or any(v is None for v in got.values()):
            raise NLALabError("fast engine: could not read the rotary tables from the model's forward.")
        uniq: dict[int, int] = {}
        self.cos, self.sin = [], []
        for i, (c, s) in sorted(got.items()):
            key = id(c)
            if key not in uniq:
                uniq[key] = len(self.cos)
                self.cos.append(c.reshape(length, -1).contiguous())
                self.sin.append(s.reshape(length, -1).contiguous())
            self.layers[i].rope = uniq[key]
        self.rope_len = length

    def _masks(self, pos_q: torch.Tensor, kpos_r: torch.Tensor) -> dict:
        """window -> (mask over the prefix [S,P], mask over the row cache [S,L]) for query positions."""
        kpos_p = torch.arange(self.P, device=pos_q.device)
        out = {}
        for w in self.windows:
            mp = kpos_p[None, :] <= pos_q[:, None]
            mr = kpos_r[None, :] <= pos_q[:, None]
            if w is not None:
                mp = mp & (kpos_p[None, :] > pos_q[:, None] - w)
                mr = mr & (kpos_r[None, :] > pos_q[:, None] - w)
            out[w] = (mp, mr)
        return out

    def _eager_fns(self) -> dict:
        return {"pre": _pre_attn, "post": _post_attn, "head": _head_sample}

    def _decode_fns(self) -> dict:
        if self._fns is None:
            with DEVICE_LOCK:
                self._fns = _compiled_fns(self.compile_mode)
        return self._fns

    def _pre(self, fns, L: _Layer, x, pos):
        cos = self.cos[L.rope].index_select(0, pos)
        sin = self.sin[L.rope].index_select(0, pos)
        if L.wqkv is not None:
            w = (L.wqkv, L.bqkv if L.bqkv is not None else None, None, None, None, None)
        else:
            w = (L.wq, L.bq, L.wk, L.bk, L.wv, L.bv)
        return fns["pre"](x, L.ln_in, *w, L.qn, L.kn, cos, sin, self.eps, self.qk_eps, self.gemma, self.n_heads,
                          self.n_kv, self.head_dim)

    def _post(self, fns, L: _Layer, x, a):
        wg, wu = (L.wgu, None) if L.wgu is not None else (L.wg, L.wu)
        return fns["post"](x, a, L.wo, L.bo, L.ln_post_attn, L.ln_pre_ff, L.ln_post_ff, wg, wu, L.wd, self.act,
                           self.eps, self.gemma)

    def _prefix(self) -> None:
        """K/V of the prompt tokens before the marker, computed once at batch 1 and shared by all rows."""
        self.kp, self.vp = [], []
        if self.P == 0:
            return
        ids = torch.tensor(self.prompt_ids[: self.P], device=self.device)[None]
        x = self.embed(ids)
        pos = torch.arange(self.P, device=self.device)
        fns = self._eager_fns()
        with _sdpa_backends(self.device):
            for L in self.layers:
                q, k, v = self._pre(fns, L, x, pos)
                self.kp.append(k[0].contiguous())
                self.vp.append(v[0].contiguous())
                mr = pos[None, :] <= pos[:, None]
                if L.window is not None:
                    mr = mr & (pos[None, :] > pos[:, None] - L.window)
                x = self._post(fns, L, x, _attend_sdpa(q, k, v, mr, self.scaling))

    def _state(self, B: int, S: int, max_new: int, shared: bool) -> _State:
        key = (B, S, max_new, shared)
        st = self.states.get(key)
        if st is None:
            off = 0 if shared else self.P
            Lr = off + S + max_new
            if self.device.type == "cuda":
                Lr = -(-Lr // 16) * 16  # aligned rows for the attention kernels; extra slots stay masked
            dev = self.device
            shape = (B, self.n_kv, Lr, self.head_dim)
            st = _State(
                B=B, S=S, Lr=Lr, max_new=max_new,
                kr=[torch.zeros(shape, device=dev, dtype=self.dtype) for _ in self.layers],
                vr=[torch.zeros(shape, device=dev, dtype=self.dtype) for _ in self.layers],
                cur=torch.zeros(B, dtype=torch.long, device=dev), t=torch.zeros(1, dtype=torch.long, device=dev),
                keys=torch.zeros(B, dtype=torch.long, device=dev), done=torch.zeros(B, dtype=torch.bool, device=dev),
                out=torch.zeros(B, max_new, dtype=torch.long, device=dev),
                kpos_r=(self.P - off) + torch.arange(Lr, device=dev), shared=shared, off=off,
            )
            if not shared and self.P:  # broadcast the prefix K/V once; these slots are never written again
                for i in range(len(self.layers)):
                    st.kr[i][:, :, :self.P].copy_(self.kp[i][None])
                    st.vr[i][:, :, :self.P].copy_(self.vp[i][None])
            self.states[key] = st
        return st

    def drop_states(self) -> None:
        """Free every per-batch buffer and graph (after an OOM, at the end of a call, or on request)."""
        self.states.clear()

    # -------------------------------------------------------------------------------- running

    def _prefill(self, st: _State, embeds: torch.Tensor, sp: dict, fns: dict) -> None:
        """The suffix rows [marker, end of prompt) of every row, over the shared prefix (sdpa, fp32 scores)."""
        S, a, b = st.S, st.off, st.off + st.S
        pos = self.P + torch.arange(S, device=self.device)
        masks = self._masks(pos, st.kpos_r[:b])
        x = embeds
        eager = self._eager_fns()
        for i, L in enumerate(self.layers):
            q, k, v = self._pre(eager, L, x, pos)
            st.kr[i][:, :, a:b].copy_(k)
            st.vr[i][:, :, a:b].copy_(v)
            mp, mr = masks[L.window]
            if st.shared and self.P:
                B = x.shape[0]
                kk = torch.cat([self.kp[i][None].expand(B, -1, -1, -1), k], dim=2)
                vv = torch.cat([self.vp[i][None].expand(B, -1, -1, -1), v], dim=2)
                att = _attend_sdpa(q, kk, vv, torch.cat([mp, mr], dim=-1), self.scaling)
            else:
                att = _attend_sdpa(q, st.kr[i][:, :, :b], st.vr[i][:, :, :b], mr, self.scaling)
            x = self._post(eager, L, x, att)
        st.done.zero_()
        st.t.zero_()
        nxt, done = fns["head"](x[:, -1], self.norm_w, self.norm_eps, self.gemma, self.lm_w, self.lm_b,
                                self.final_softcap, st.keys, st.t, self.hv, st.done, sp["eos"], sp["pad"],
                                sp["temperature"], sp["top_k"], sp["top_p"], sp["greedy"])
        st.out[:, 0].copy_(nxt)
        st.cur.copy_(nxt)
        st.done.copy_(done)
        st.t.fill_(1)

    def _attend_step(self, st: _State, i: int, L: _Layer, q, k, v, pos, slot, masks):
        if st.shared and self.triton:  # the kernel also writes k/v into the cache
            kp = self.kp[i] if self.P else None
            vp = self.vp[i] if self.P else None
            return attend_decode_triton(q, kp, vp, st.kr[i], st.vr[i], pos, self.P, L.window, self.scaling, k, v)
        st.kr[i].index_copy_(2, slot, k)
        st.vr[i].index_copy_(2, slot, v)
        if st.shared:
            kp = self.kp[i] if self.P else None
            vp = self.vp[i] if self.P else None
            mp, mr = masks[L.window]
            return _attend(q, kp, vp, st.kr[i], st.vr[i], mp, mr, self.scaling)
        return _attend_sdpa(q, st.kr[i], st.vr[i], masks[L.window][1], self.scaling)

    def _step(self, st: _State, sp: dict, fns: dict) -> None:
        """One decode step on the static buffers; the body of the CUDA graph."""
        t = st.t
        pos = (self.P + st.S - 1) + t
        slot = (st.off + st.S - 1) + t
        x = self.embed(st.cur[:, None])
        masks = None if (st.shared and self.triton) else self._masks(pos, st.kpos_r)
        for i, L in enumerate(self.layers):
            q, k, v = self._pre(fns, L, x, pos)
            x = self._post(fns, L, x, self._attend_step(st, i, L, q, k, v, pos, slot, masks))
        nxt, done = fns["head"](x[:, -1], self.norm_w, self.norm_eps, self.gemma, self.lm_w, self.lm_b,
                                self.final_softcap, st.keys, t, self.hv, st.done, sp["eos"], sp["pad"],
                                sp["temperature"], sp["top_k"], sp["top_p"], sp["greedy"])
        st.out.index_copy_(1, t, nxt[:, None])
        st.done.copy_(done)
        st.cur.copy_(nxt)
        st.t.add_(1)

    def _warm(self, st: _State, sp: dict, fns: dict) -> None:
        """Run the step twice on a side stream (compiles), then restore the state."""
        saved = (st.cur.clone(), st.done.clone(), st.t.clone(), st.out[:, 1].clone())
        s = torch.cuda.Stream(device=self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s):
            for _ in range(2):
                self._step(st, sp, fns)
                st.cur.copy_(saved[0]), st.done.copy_(saved[1]), st.t.copy_(saved[2])
        torch.cuda.current_stream(self.device).wait_stream(s)
        st.out[:, 1].copy_(saved[3])

    def _capture(self, st: _State, sp: dict, fns: dict) -> None:
        """Warm up, then capture one decode step as a CUDA graph.

        Thread-safe for one engine per device: one capture at a time in the process (``DEVICE_LOCK``), on
        this engine's own capture stream (``torch.cuda.graph``'s default stream is one per process, made on
        whichever device was current), in ``thread_local`` mode so other threads' work on other GPUs (syncs,
        allocations) does not invalidate the capture."""
        with DEVICE_LOCK, on_device(self.device):
            self._warm(st, sp, fns)
            saved = st.out[:, 1].clone()
            g = torch.cuda.CUDAGraph()
            if self._cap_stream is None:
                self._cap_stream = torch.cuda.Stream(device=self.device)
            with torch.cuda.graph(g, stream=self._cap_stream, capture_error_mode="thread_local"):
                self._step(st, sp, fns)
            st.out[:, 1].copy_(saved)
            st.graph = g

    def generate(self, vectors: torch.Tensor, keys: torch.Tensor, *, injection_scale: float, max_new_tokens: int,
                 eos_ids: Sequence[int], pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 greedy: bool = False, batch: Optional[int] = None, profile: bool = False,
                 shared: Optional[bool] = None):
        """Tokens [n, <=max_new] (pad after the end) and finished flags [n] for ``n`` rows.

        Rows beyond ``n`` up to ``batch`` are throw-away padding (so one graph serves all chunks)."""
        if not self.alive():
            raise NLALabError("fast engine: the AV's weights were released; load the AV again.")
        n = vectors.shape[0]
        B = max(n, int(batch or n))
        max_new = int(max_new_tokens)
        if max_new < 1:
            raise NLALabError("max_new_tokens must be >= 1.")
        greedy = bool(greedy or temperature == 0)
        profile = profile or OPTIONS.profile
        if shared is None:
            shared = self.default_shared()
        S = self.T - self.P
        if self.P + S + max_new + 16 > self.rope_len:
            with torch.no_grad():
                self._rope_tables(self.P + S + max_new + 256)
        sp = dict(eos=torch.tensor(sorted(set(int(e) for e in eos_ids)), device=self.device, dtype=torch.long)
                  if len(eos_ids) else None, pad=int(pad_id), temperature=1.0 if greedy else float(temperature),
                  top_k=0 if greedy else int(top_k or 0), top_p=1.0 if greedy else float(top_p), greedy=greedy)
        gkey = (sp["greedy"], sp["temperature"], sp["top_k"], sp["top_p"], tuple(eos_ids), sp["pad"])
        stats = Stats(prefix_len=self.P, suffix_len=S, batch=B, graphs=self.use_graphs, compile=self.compile_mode,
                      attention=("shared+triton" if self.triton else "shared") if shared else "copy")
        cuda = self.device.type == "cuda"
        sync = (lambda: torch.cuda.synchronize(self.device)) if cuda else (lambda: None)
        with torch.no_grad(), _sdpa_backends(self.device), on_device(self.device):
            if B > n:
                vectors = torch.cat([vectors, vectors[-1:].expand(B - n, -1)], 0)
                keys = torch.cat([keys, keys[-1:].expand(B - n)], 0)
            st = self._state(B, S, max_new, bool(shared))
            if st.graph is not None and st.graph_key == gkey:
                sp = st.sp  # the captured graph reads this eos tensor
            fns = self._decode_fns() if cuda else self._eager_fns()
            if profile:
                sync()
            t0 = time.perf_counter()
            st.keys.copy_(keys.to(self.device))
            emb = injected_embeds(_EmbedOnly(self.embed), self.prompt_ids[self.P:], vectors, 0, injection_scale)
            # torch.compile is not thread safe: every call of compiled code that may (re)compile runs under
            # DEVICE_LOCK (prefill's head here, the warm-up in _capture; graph replays run no Python code)
            compiled = DEVICE_LOCK if cuda and self.compile_mode != "none" else contextlib.nullcontext()
            try:
                with compiled:
                    self._prefill(st, emb, sp, fns)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # pragma: no cover - compile trouble on some stacks
                fns = self._compile_failed(e)
                self._prefill(st, emb, sp, fns)
            del emb
            if profile:
                sync()
            stats.prefill_s = time.perf_counter() - t0
            steps = 1
            if max_new > 1:
                if self.use_graphs and (st.graph is None or st.graph_key != gkey):
                    t1 = time.perf_counter()
                    st.graph = None
                    try:
                        try:
                            self._capture(st, sp, fns)
                        except torch.cuda.OutOfMemoryError:
                            raise
                        except Exception as e:
                            if "out of memory" in str(e).lower() or self.compile_mode == "none":
                                raise
                            fns = self._compile_failed(e)
                            self._capture(st, sp, fns)
                        st.graph_key, st.sp = gkey, sp
                    except torch.cuda.OutOfMemoryError:
                        raise
                    except Exception as e:  # pragma: no cover - depends on the GPU stack
                        if "out of memory" in str(e).lower():
                            raise torch.cuda.OutOfMemoryError(str(e)) from e
                        warnings.warn(f"fast engine: CUDA graph capture failed ({e!r}); running without graphs.")
                        self.use_graphs = False
                        stats.graphs = False
                    stats.capture_s = time.perf_counter() - t1
                t2 = time.perf_counter()
                every = max(1, int(OPTIONS.check_every))
                check = sp["eos"] is not None
                compiled = DEVICE_LOCK if cuda and self.compile_mode != "none" else contextlib.nullcontext()
                for step in range(1, max_new):
                    if st.graph is not None and self.use_graphs:
                        st.graph.replay()
                    else:
                        with compiled:  # no graphs (capture failed or off): compiled step, see prefill
                            self._step(st, sp, fns)
                    steps = step + 1
                    if check and (step % every == 0 or not cuda) and bool(st.done.all()):
                        break
                if profile:
                    sync()
                stats.decode_s = time.perf_counter() - t2
            if profile and cuda:
                stats.extra["peak_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
            stats.steps = steps
            self.stats = stats
            _LAST[0] = stats
            return st.out[:n, :steps].clone(), st.done[:n].clone()

    def _compile_failed(self, e: Exception) -> dict:
        warnings.warn(f"fast engine: torch.compile failed ({type(e).__name__}: {str(e)[:300]}); "
                      "running the decode step uncompiled.")
        self.compile_mode = "none"
        self._fns = None
        for st in self.states.values():
            st.graph = None
        return self._decode_fns()

    def default_shared(self) -> bool:
        return OPTIONS.attention == "shared" or (OPTIONS.attention == "auto" and self.triton)


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


def auto_batch(eng: FastEngine, n_rows: int, max_new: int, fallback: int, shared: bool = False) -> int:
    """Rows per micro-batch: all of them if memory allows (CUDA: from free memory), else as many as fit."""
    cap = int(OPTIONS.max_batch) if eng.max_rows is None else min(int(OPTIONS.max_batch), eng.max_rows)
    if eng.device.type != "cuda":
        return max(1, min(n_rows, fallback, cap))
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
    from nlalab.verbalize.generate import stream_keys

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
        cap_copy = auto_batch(eng, n, settings.max_new_tokens, settings.batch_size, shared=False)
        shared = cap_copy < want and auto_batch(eng, n, settings.max_new_tokens, settings.batch_size,
                                                shared=True) > cap_copy
    cap = int(batch_size) if batch_size else auto_batch(eng, n, settings.max_new_tokens, settings.batch_size, shared)
    if eng.max_rows is not None:
        cap = min(cap, eng.max_rows)
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
