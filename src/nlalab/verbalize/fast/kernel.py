"""Triton flash-decoding kernel over [shared prefix ; filled row-cache slots] (CUDA, bf16/fp16)."""

from __future__ import annotations

from typing import Any, Optional

import torch

# ------------------------------------------------------------------------- Triton decode attention

_TRITON: Any = None  # None: not tried; False: unavailable; else the jitted kernel
#: Launch parameters of the decode kernel: keys per block (None: 64 for head dims <= 128, else 32), warps and
#: pipeline stages. ``bench/tune_decode_attn.py`` swept 27 settings on one H200 at the Qwen2.5-7B,
#: Gemma-3-27B and Gemma-3-12B head layouts (150 rows, 100-token prefix, 18-218 row slots): 32 keys, 2 warps,
#: 2 stages was fastest at all three (7B: 19.7 vs 24.6 us per call with 64 keys and 4 warps; 27B: 69.8 vs
#: 78.1; 12B: 71.9 vs 77.1), same outputs (bench/results/decode_attn_*_h200.json).
LAUNCH: dict[str, Any] = {"bn": 32, "num_warps": 2, "num_stages": 2}


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
                    G=G, BG=BG, BN=LAUNCH["bn"] or (64 if D <= 128 else 32), D=D, HAS_P=P > 0, HAS_NEW=has_new,
                    num_warps=LAUNCH["num_warps"], num_stages=LAUNCH["num_stages"])
    return out.view(B, H, 1, D)
