"""Benchmark: the offline default study on the CPU (``nlalab run --out runs/demo``), old engine vs new, one process.

A script, not a test. Runs ``run_study`` with the CLI's offline-demo settings (SmolLM2-135M-Instruct and the
shipped trained NLA, k = 2, 128 new tokens, every control; models must be cached) twice in this process:

- ``old``: ``engine="loop"`` and ``NLALAB_CPU_THREADS=keep`` -- the decode loop the study used on the CPU
  before the CPU fast path (the blind control on ``verbalize.plain``'s loop, every AV job on ``loop``), with
  torch's default thread count;
- ``new``: ``engine="auto"`` and ``NLALAB_CPU_THREADS=auto`` -- today's default: the fast engine on the CPU
  (shared-prefix prefill, static cache, finished rows dropped) for the AV jobs (one plan, one engine
  session) and for the blind control (plain mode), one thread while the machine is oversubscribed.

The order alternates with ``--order`` so that a loaded machine does not always favour one side. Records per
stage timings (``timings_s_this_invocation``), total seconds, whether the two runs wrote identical
``samples.jsonl`` (they must: fp32, same seeds), the device (CPU model, cores, torch threads, load average
before/after: timings on a shared machine are noisy) and versions, in
``bench/results/cpu_demo[_<tag>].json``.

    PYTHONPATH=src python3 bench/bench_cpu_demo.py                       # the full demo, twice
    PYTHONPATH=src python3 bench/bench_cpu_demo.py --limit-per-category 2 --tag small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def device_info() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"kind": "cpu", "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__}


def one(engine: str, out: Path, limit) -> dict:
    from nlalab.cli import OFFLINE_DEMO
    from nlalab.study.config import CONTROLS, RunConfig
    from nlalab.study.pipeline import run_study

    cfg = RunConfig(out=str(out), controls=list(CONTROLS), engine=engine, limit_per_category=limit, progress=False,
                    **OFFLINE_DEMO)
    os.environ["NLALAB_CPU_THREADS"] = "keep" if engine == "loop" else "auto"
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = run_study(cfg)
    total = time.perf_counter() - t0
    return {"engine": engine, "cpu_threads_policy": os.environ["NLALAB_CPU_THREADS"], "total_s": round(total, 2), "timings_s": res.get("timings_s_this_invocation"),
            "load_avg_1min_before": round(load0, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit-per-category", type=int, default=None)
    ap.add_argument("--order", default="old,new", help="old,new or new,old")
    ap.add_argument("--tag", default="")
    ap.add_argument("--keep", default=None, help="keep the run directories under this folder")
    args = ap.parse_args()
    from nlalab.pairs import shipped

    shipped.materialize()  # cached models only: building them is not part of the timing
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cpu_demo_"))
    runs = {}
    for side in args.order.split(","):
        out = root / side
        shutil.rmtree(out, ignore_errors=True)
        runs[side] = one("loop" if side == "old" else "auto", out, args.limit_per_category)
        print(side, json.dumps(runs[side]), flush=True)
    same = (root / "old" / "samples.jsonl").read_bytes() == (root / "new" / "samples.jsonl").read_bytes()
    rec = {"what": "nlalab run --out runs/demo (offline default), old engine vs new, same process",
           "limit_per_category": args.limit_per_category, "order": args.order, "device": device_info(),
           "old": runs["old"], "new": runs["new"], "samples_identical": same,
           "speedup": round(runs["old"]["total_s"] / runs["new"]["total_s"], 3),
           "caveat": "2-core machine shared with other jobs while measured: see load averages"}
    name = "cpu_demo" + (f"_{args.tag}" if args.tag else "") + ".json"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / name).write_text(json.dumps(rec, indent=1) + "\n")
    print("SUMMARY", json.dumps({k: rec[k] for k in ("speedup", "samples_identical")}),
          runs["old"]["total_s"], runs["new"]["total_s"])
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
