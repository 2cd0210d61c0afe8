"""Time the Triton decode-attention kernel's launch parameters at a study shape (a script, not a test).

The V1-shape verbalization (Qwen2.5-7B shape: 28 query / 4 KV heads of 128, a 100-token shared prefix,
18 + up to 200 row tokens, 150 rows) spends ~0.49 ms of its ~6.4 ms decode step in this kernel, about twice
the time its keys and values take to stream. This sweeps keys per block, warps and stages (the engine's
call: the current token's K/V passed in and written) at the first, middle and last decode positions, checks
every variant against the engine's own attention on float64 inputs, and writes the timings
(CUDA events, median of many replays) to JSON with the device:

    PYTHONPATH=src python bench/tune_decode_attn.py --out bench/results/decode_attn_qwen2.5-7b_h200.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nlalab.verbalize import fast  # noqa: E402
from nlalab.verbalize.fast import kernel  # noqa: E402


def reference(q, kp, vp, kr, vr, pos, row0, scaling):
    """The engine's own two-part attention (``fast._attend``) on float64 inputs (its softmax in fp32), keys up
    to ``pos``, as the GPU test checks the kernel."""
    mp = torch.ones(1, kp.shape[1], dtype=torch.bool, device=q.device)
    mr = (row0 + torch.arange(kr.shape[2], device=q.device) <= pos)[None]
    return fast._attend(q.double(), kp.double(), vp.double(), kr.double(), vr.double(), mp, mr, scaling)


def time_kernel(fn, reps: int = 200) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(20):
            fn()
    times = []
    for _ in range(reps // 20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 20)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=150)
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--prefix", type=int, default=100)
    ap.add_argument("--suffix", type=int, default=18)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "decode_attn.json"))
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    B, H, KV, D, P = a.rows, a.heads, a.kv_heads, a.head_dim, a.prefix
    L = a.suffix + a.new
    dt = torch.bfloat16
    q = torch.randn(B, H, 1, D, device=dev, dtype=dt)
    kp, vp = (torch.randn(KV, P, D, device=dev, dtype=dt) for _ in range(2))
    kr, vr = (torch.randn(B, KV, L, D, device=dev, dtype=dt) for _ in range(2))
    kn, vn = (torch.randn(B, KV, 1, D, device=dev, dtype=dt) for _ in range(2))  # the current token, as decode
    scaling = D ** -0.5
    positions = [P + a.suffix, P + a.suffix + a.new // 2, P + L - 1]
    default = dict(kernel.LAUNCH)
    results = []
    for bn, warps, stages in itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3)):
        kernel.LAUNCH.update(bn=bn, num_warps=warps, num_stages=stages)
        row = {"bn": bn, "num_warps": warps, "num_stages": stages, "us": {}, "max_err": 0.0}
        try:
            for p in positions:
                pos = torch.tensor([p], device=dev)
                out = kernel.attend_decode_triton(q, kp, vp, kr, vr, pos, P, None, scaling, kn, vn)
                ref = reference(q, kp, vp, kr, vr, p, P, scaling)  # slot p - P now holds kn/vn
                row["max_err"] = max(row["max_err"], float((out.float() - ref).abs().max()))
                row["us"][str(p)] = round(1000 * time_kernel(
                    lambda: kernel.attend_decode_triton(q, kp, vp, kr, vr, pos, P, None, scaling, kn, vn)), 2)
        except Exception as e:  # a configuration Triton cannot build (shared memory, ...)
            row["error"] = f"{type(e).__name__}: {str(e)[:120]}"
        if "error" not in row:
            row["mean_us"] = round(sum(row["us"].values()) / len(row["us"]), 2)
        results.append(row)
        print(json.dumps(row), flush=True)
    kernel.LAUNCH.update(default)
    ok = [r for r in results if "mean_us" in r and r["max_err"] < 2e-2]
    best = min(ok, key=lambda r: r["mean_us"])
    cur = next(r for r in ok if r["bn"] == (default["bn"] or 64) and r["num_warps"] == default["num_warps"]
               and r["num_stages"] == default["num_stages"])
    kv_bytes = {str(p): 2 * B * KV * (p - P + 1) * D * 2 for p in positions}
    rec = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "shape": {"rows": B, "heads": H, "kv_heads": KV, "head_dim": D, "prefix": P, "row_slots": L},
           "positions": positions, "row_kv_bytes": kv_bytes, "default": cur, "best": best,
           "speedup_best_vs_default": round(cur["mean_us"] / best["mean_us"], 3), "all": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rec, indent=1))
    print("default", cur, "\nbest", best)


if __name__ == "__main__":
    main()
