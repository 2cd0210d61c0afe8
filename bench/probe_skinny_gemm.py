"""Device probe (a script, not a test): a Triton GEMM for the decode step's small-N projections against
cuBLAS, at the V1 shape's row count. cuBLAS streams the q/k/v and o weights of Qwen2.5-7B at ~1.2 TB/s at
M = 150 (bench/results: 27 and 21 us a call), against ~3.4 TB/s for gate/up.

    PYTHONPATH=src python bench/probe_skinny_gemm.py            # on a CUDA machine
    TRITON_INTERPRET=1 python bench/probe_skinny_gemm.py --check  # the kernel's logic on the CPU (fp32)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import triton
import triton.language as tl


@triton.jit
def _gemm_nt(X, W, B, Y, M, N, K, sx, sw, sy, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
             HAS_B: tl.constexpr):
    """Y[M, N] = X[M, K] @ W[N, K]^T (+ B), fp32 accumulation; program (m tile, n tile), m fastest."""
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mm = rm < M
    mn = rn < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(X + rm[:, None] * sx + (k + rk)[None, :], mask=mm[:, None] & ((k + rk) < K)[None, :], other=0.0)
        b = tl.load(W + rn[None, :] * sw + (k + rk)[:, None], mask=mn[None, :] & ((k + rk) < K)[:, None], other=0.0)
        acc += tl.dot(a, b)
    if HAS_B:
        acc += tl.load(B + rn, mask=mn, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rm[:, None] * sy + rn[None, :], acc.to(Y.dtype.element_ty), mask=mm[:, None] & mn[None, :])


@triton.jit
def _gemm_nt_splitk(X, W, P, M, N, K, sx, sw, KS, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """fp32 partial sums P[s, M, N] over the K slice [s*KS, (s+1)*KS); program (m tile, n tile, s)."""
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    ps = tl.program_id(2)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mm = rm < M
    mn = rn < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    k0 = ps * KS
    for k in range(k0, k0 + KS, BK):
        a = tl.load(X + rm[:, None] * sx + (k + rk)[None, :], mask=mm[:, None] & ((k + rk) < K)[None, :], other=0.0)
        b = tl.load(W + rn[None, :] * sw + (k + rk)[:, None], mask=mn[None, :] & ((k + rk) < K)[:, None], other=0.0)
        acc += tl.dot(a, b)
    tl.store(P + ps * M * N + rm[:, None] * N + rn[None, :], acc, mask=mm[:, None] & mn[None, :])


@triton.jit
def _sum_splits(P, B, Y, MN, N, S: tl.constexpr, BLOCK: tl.constexpr, HAS_B: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < MN
    acc = tl.load(P + i, mask=m, other=0.0)
    for s in tl.static_range(1, S):
        acc += tl.load(P + s * MN + i, mask=m, other=0.0)
    if HAS_B:
        acc += tl.load(B + i % N, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + i, acc.to(Y.dtype.element_ty), mask=m)


def gemm_splitk(x, w, b=None, BM=64, BN=64, BK=64, warps=4, stages=4, S=4):
    M, K = x.shape
    N = w.shape[0]
    KS = triton.cdiv(triton.cdiv(K, S), BK) * BK
    S = triton.cdiv(K, KS)
    part = torch.empty(S, M, N, device=x.device, dtype=torch.float32)
    _gemm_nt_splitk[(triton.cdiv(M, BM), triton.cdiv(N, BN), S)](x, w, part, M, N, K, x.stride(0), w.stride(0), KS,
                                                                 BM=BM, BN=BN, BK=BK, num_warps=warps, num_stages=stages)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    _sum_splits[(triton.cdiv(M * N, 1024),)](part, b if b is not None else w, y, M * N, N, S=S, BLOCK=1024,
                                             HAS_B=b is not None, num_warps=4)
    return y


def gemm_nt(x, w, b=None, BM=64, BN=64, BK=64, warps=4, stages=4):
    M, K = x.shape
    N = w.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    kw = {} if os.environ.get("TRITON_INTERPRET") else dict(num_warps=warps, num_stages=stages)
    _gemm_nt[grid](x, w, b if b is not None else w, y, M, N, K, x.stride(0), w.stride(0), y.stride(0),
                   BM=BM, BN=BN, BK=BK, HAS_B=b is not None, **kw)
    return y


CONFIGS = [(bm, bn, bk, w, s) for bm, bn, bk, w, s in [
    (64, 64, 64, 4, 4), (64, 64, 128, 4, 3), (64, 32, 128, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
    (128, 32, 64, 4, 4), (128, 64, 64, 8, 3), (256, 32, 64, 8, 4), (256, 64, 64, 8, 3), (32, 64, 128, 4, 4),
    (64, 32, 64, 2, 5), (32, 32, 128, 2, 4), (256, 16, 128, 8, 4), (128, 16, 128, 4, 5)]]


SPLIT_CONFIGS = [(bm, bn, bk, w, st, sp) for bm, bn, bk, w, st in [
    (64, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (256, 64, 64, 8, 3), (64, 64, 128, 4, 3),
    (256, 32, 64, 8, 4), (128, 128, 64, 8, 3)] for sp in (2, 4, 8)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--rows", default="150")
    ap.add_argument("--shapes", default="qkv,o,down,gate_up")
    args = ap.parse_args()
    if args.check:
        g = torch.Generator().manual_seed(0)
        for M, N, K, bias in ((7, 40, 96, False), (70, 33, 64, True), (150, 96, 200, True)):
            x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
            b = torch.randn(N, generator=g) if bias else None
            for cfg in ((64, 32, 64), (16, 16, 32)):
                y = gemm_nt(x, w, b, *cfg)
                ref = torch.nn.functional.linear(x, w, b)
                print(M, N, K, bias, cfg, "max err", float((y - ref).abs().max()))
        return
    dev = "cuda"
    shapes = {"qkv": (4608, 3584, True), "o": (3584, 3584, False), "down": (3584, 18944, False),
              "gate_up": (37888, 3584, False)}
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "rows": {}}
    for M in (int(r) for r in args.rows.split(",")):
        out = res["rows"][M] = {}
        for name, (N, K, bias) in shapes.items():
            if name not in args.shapes.split(","):
                continue
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            # 8 weight copies in rotation so that L2 (50 MB) does not hold the weight between calls
            ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(8 if N * K < 2e8 else 2)]
            b = torch.randn(N, device=dev, dtype=torch.bfloat16) if bias else None

            def timeit(f, n=50):
                for i in range(5):
                    f(ws[i % len(ws)])
                st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                st.record()
                for i in range(n):
                    f(ws[i % len(ws)])
                en.record()
                torch.cuda.synchronize()
                return st.elapsed_time(en) / n * 1e3  # us

            gb = N * K * 2 / 1e9
            cub = timeit(lambda w: torch.nn.functional.linear(x, w, b))
            ref = torch.nn.functional.linear(x.float(), ws[0].float(), b.float() if b is not None else None)
            row = {"cublas_us": round(cub, 2), "cublas_tb_s": round(gb / cub * 1e6 / 1e3, 3), "triton": []}
            for cfg in CONFIGS:
                try:
                    y = gemm_nt(x, ws[0], b, *cfg)
                    err = float((y.float() - ref).abs().max() / ref.abs().max())
                    us = timeit(lambda w, cfg=cfg: gemm_nt(x, w, b, *cfg))
                    row["triton"].append({"cfg": cfg, "us": round(us, 2), "tb_s": round(gb / us * 1e6 / 1e3, 3),
                                          "rel_err": round(err, 5)})
                except Exception as e:  # noqa: BLE001 - a config that does not compile on this GPU
                    row["triton"].append({"cfg": cfg, "error": repr(e)[:120]})
            for cfg in SPLIT_CONFIGS:
                try:
                    y = gemm_splitk(x, ws[0], b, *cfg)
                    err = float((y.float() - ref).abs().max() / ref.abs().max())
                    us = timeit(lambda w, cfg=cfg: gemm_splitk(x, w, b, *cfg))
                    row["triton"].append({"cfg": ("splitk",) + cfg, "us": round(us, 2),
                                          "tb_s": round(gb / us * 1e6 / 1e3, 3), "rel_err": round(err, 5)})
                except Exception as e:  # noqa: BLE001
                    row["triton"].append({"cfg": ("splitk",) + cfg, "error": repr(e)[:120]})
            ok = [t for t in row["triton"] if "us" in t]
            row["best"] = min(ok, key=lambda t: t["us"]) if ok else None
            out[name] = row
            print(M, name, "cublas", row["cublas_us"], "us", row["cublas_tb_s"], "TB/s; best triton", row["best"],
                  flush=True)
            if os.environ.get("OUT"):
                Path(os.environ["OUT"], "probe_skinny_gemm.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
