"""Device probe (a script, not a test): does the 7B decode step get faster with the batch padded past 150
rows, or with cuBLASLt / TunableOp choosing the GEMMs? One process, one GPU, the V1 verbalization shape.

    PYTHONPATH=src python bench/probe_decode_rows.py --batches 150,160,192,256 --blas --tunable

Prints and writes ``$OUT/probe_decode_rows.json``: per variant, wall seconds of the 150-row call and decode
ms per step (profile syncs on), with the GEMM kernels of one eager step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_verbalize import build_model, copy_bandwidth, kernel_profile  # noqa: E402
from nlalab.verbalize import fast  # noqa: E402
from nlalab.verbalize.sampling import row_keys  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-7b")
    ap.add_argument("--rows", type=int, default=150)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--batches", default="150,160,192,256")
    ap.add_argument("--blas", action="store_true", help="also preferred_blas_library('cublaslt') at each batch")
    ap.add_argument("--tunable", action="store_true", help="last: TunableOp on, at the best batch")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": args.shape,
                 "rows": args.rows, "new": args.new, "variants": []}
    bw = copy_bandwidth()
    model, cfg = build_model(args.shape)
    streamed = sum(p.numel() * p.element_size() for p in model.parameters()
                   if p is not model.get_input_embeddings().weight)
    res["floor_ms"] = round(streamed / bw * 1e3, 3)
    g = torch.Generator(device="cpu").manual_seed(1)
    prompt = torch.randint(10, cfg.vocab_size - 10, (118,), generator=g).tolist()
    vecs = torch.randn(args.rows, cfg.hidden_size, generator=g).cuda()
    scale = float(cfg.hidden_size) ** 0.5 * 4
    fast.OPTIONS.compile = "all"
    fast.OPTIONS.profile = True
    fast.OPTIONS.keep_state = True
    eng = fast.FastEngine(model, prompt, 100)
    keys = row_keys(42, torch.arange(args.rows, device="cuda"), torch.zeros(args.rows, dtype=torch.long, device="cuda"))
    kw = dict(injection_scale=scale, max_new_tokens=args.new, eos_ids=[], pad_id=0, temperature=1.0)

    def run(B: int, label: str) -> dict:
        eng.generate(vecs, keys, batch=B, **kw)  # compile / capture for this shape
        walls, steps = [], []
        for _ in range(args.reps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            eng.generate(vecs, keys, batch=B, **kw)
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - t)
            steps.append(eng.stats.decode_s / max(1, eng.stats.steps - 1) * 1e3)
        st = eng.states[(B, eng.T - eng.P, args.new, True)]
        prof = kernel_profile(eng, st, st.sp, eng._decode_fns())
        rec = {"variant": label, "batch": B, "wall_s": round(min(walls), 4), "walls": [round(w, 4) for w in walls],
               "decode_ms_per_step": round(min(steps), 3), "gemm_ms": prof.get("gemm"), "top": prof.get("top", [])[:6]}
        print(json.dumps(rec), flush=True)
        res["variants"].append(rec)
        out = os.environ.get("OUT")
        if out:
            Path(out, "probe_decode_rows.json").write_text(json.dumps(res, indent=1))
        return rec

    batches = [int(b) for b in args.batches.split(",")]
    for B in batches:
        run(B, "cublas")
    if args.blas:
        torch.backends.cuda.preferred_blas_library("cublaslt")
        eng.drop_states()
        for B in batches:
            run(B, "cublaslt")
        torch.backends.cuda.preferred_blas_library("cublas")
        eng.drop_states()
    if args.tunable:
        best = min((v for v in res["variants"] if v["variant"] == "cublas"), key=lambda v: v["wall_s"])["batch"]
        torch.cuda.tunable.enable(True)
        torch.cuda.tunable.tuning_enable(True)
        torch.cuda.tunable.set_max_tuning_iterations(30)
        torch.cuda.tunable.set_filename(os.path.join(os.environ.get("OUT", "/tmp"), "tunableop.csv"))
        eng.drop_states()
        for B in sorted({args.rows, best}):
            run(B, "tunableop")
        res["tunable_results"] = [list(map(str, r)) for r in torch.cuda.tunable.get_results()][:40]
        torch.cuda.tunable.write_file()
    out = os.environ.get("OUT")
    if out:
        Path(out, "probe_decode_rows.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
