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
stage timings (``timings_s_this_invocation``), total seconds, whether the runs wrote identical explanations
(they must: fp32, same seeds) and how far their reconstruction metrics moved (the shared-prefix AR forward
changes fp32 summation order: ~1e-6 relative per vector), the device (CPU model, cores, torch threads, load average
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
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", None
    return {"kind": "cpu", "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__}


# side -> (engine, fast.OPTIONS overrides, RunConfig overrides): "r4" is today's default with the fifth round's
# changes off, "r5" with the sixth round's (the shared-prefix AR forward) off; "old" is the loop engine and the
# padded AR forward
SIDES = {"new": ("auto", {}, {}), "old": ("loop", {}, {"ar_share_prefix": "off"}),
         "r4": ("auto", {"dedup_prefill": False, "cpu_bf16_head": False}, {"ar_share_prefix": "off"}),
         "r5": ("auto", {}, {"ar_share_prefix": "off"})}
METRICS = ("cos", "mse_nrm", "fve_nrm_seed", "fve_nrm", "centered_cos", "centered_mse_nrm")


def compare_samples(paths: list[Path]) -> dict:
    """Explanations must be identical on every side (fp32, same seeds); reconstruction metrics may move by the
    AR forward's summation order (shared-prefix vs padded: <= 1e-5 relative per vector), reported here."""
    rows = [[json.loads(x) for x in p.read_text().splitlines()] for p in paths]
    same_text = all([r["raw_output"] for r in rs] == [r["raw_output"] for r in rows[0]] for rs in rows)
    diff = 0.0
    for rs in rows[1:]:
        for a, b in zip(rs, rows[0]):
            for m in METRICS:
                if isinstance(a.get(m), float) and isinstance(b.get(m), float):
                    diff = max(diff, abs(a[m] - b[m]))
    return {"explanations_identical": same_text and len({len(r) for r in rows}) == 1,
            "samples_bytes_identical": len({p.read_bytes() for p in paths}) == 1,
            "max_abs_metric_diff": diff}


def one(engine: str, out: Path, limit, options: dict | None = None, overrides: dict | None = None) -> dict:
    from nlalab.cli import OFFLINE_DEMO
    from nlalab.study.config import RunConfig, control_names
    from nlalab.study.pipeline import run_study
    from nlalab.verbalize import fast

    cfg = RunConfig(out=str(out), controls=control_names(), engine=engine, limit_per_category=limit, progress=False,
                    **{**OFFLINE_DEMO, **(overrides or {})})
    os.environ["NLALAB_CPU_THREADS"] = "keep" if engine == "loop" else "auto"
    saved = {k: getattr(fast.OPTIONS, k) for k in (options or {})}
    for k, v in (options or {}).items():
        setattr(fast.OPTIONS, k, v)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        res = run_study(cfg)
    finally:
        for k, v in saved.items():
            setattr(fast.OPTIONS, k, v)
    total = time.perf_counter() - t0
    return {"engine": engine, "options": options or {}, "config_overrides": overrides or {},
            "ar_forward": (res.get("provenance") or {}).get("ar_forward"), "cpu_threads_policy": os.environ["NLALAB_CPU_THREADS"], "total_s": round(total, 2), "timings_s": res.get("timings_s_this_invocation"),
            "load_avg_1min_before": round(load0, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2)}


def interleaved(reps: int, rows: int) -> dict:
    """The two generation stages alone, old and new alternating in one process with one thread, timed by
    process CPU time (less sensitive than wall time to other jobs on a shared machine): ``rows`` corpus-like
    AV rows (random vectors at the injection scale) and ``rows`` blind-like plain rows (the corpus prompts in
    the AV template), 128 tokens, the demo's sampling settings."""
    import torch

    from nlalab.corpus import load_corpus
    from nlalab.pairs import shipped
    from nlalab.pairs.load import av_eos_ids, load_av, load_target
    from nlalab.pairs.markers import av_prompt_ids
    from nlalab.pairs.sidecar import DEFAULT_AV_TEMPLATE
    from nlalab.verbalize import GenerationSettings, verbalize
    from nlalab.verbalize.plain import generate_texts

    torch.set_num_threads(1)
    os.environ["NLALAB_CPU_THREADS"] = "keep"
    avd, _ard, base = shipped.materialize()
    av = load_av(avd)
    tg = load_target(base, 20, truncate=False)
    items = load_corpus("seed50_v1")[:rows]
    if not items:
        raise SystemExit("no corpus items")
    template = av.sidecar.av_template or DEFAULT_AV_TEMPLATE
    prompts = [av_prompt_ids(tg.tokenizer, it.prompt, template) for it in items]
    eos = av_eos_ids(tg.tokenizer, tg.model)
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(rows, av.d_model, generator=g)
    out: dict = {"verbalize": {"old": [], "new": []}, "blind": {"old": [], "new": []}}
    toks: dict = {}
    for _ in range(reps):
        for side, engine in (("old", "loop"), ("new", "auto")):
            gs = GenerationSettings(max_new_tokens=128, engine=engine, seed=42, batch_size=32)
            c = time.process_time()
            r = verbalize(av, vecs, k=1, settings=gs)
            out["verbalize"][side].append(round(time.process_time() - c, 2))
            toks[("v", side)] = [x.token_ids for x in r]
            c = time.process_time()
            r = generate_texts(tg.model, tg.tokenizer, prompts, eos, 1, list(range(rows)), gs)
            out["blind"][side].append(round(time.process_time() - c, 2))
            toks[("b", side)] = [x.token_ids for x in r]
            print(side, out, flush=True)
    out["rows_identical"] = {"verbalize": toks[("v", "old")] == toks[("v", "new")],
                             "blind": toks[("b", "old")] == toks[("b", "new")]}
    out["tokens"] = {"verbalize": sum(map(len, toks[("v", "new")])), "blind": sum(map(len, toks[("b", "new")]))}
    out["speedup_cpu_time"] = {k: round(min(out[k]["old"]) / min(out[k]["new"]), 3) for k in ("verbalize", "blind")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interleaved", type=int, default=0, help="reps of the interleaved stage bench (0 = off)")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--limit-per-category", type=int, default=None)
    ap.add_argument("--order", default="old,new",
                    help="comma list of sides: new (today's default), old (loop engine), r4 (default without the "
                         "fifth and sixth rounds: dedup_prefill, cpu_bf16_head, ar_share_prefix off), r5 (default "
                         "with the padded AR forward)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--keep", default=None, help="keep the run directories under this folder")
    args = ap.parse_args()
    if args.interleaved:
        rec = {"what": "verbalize and blind-like generation, old (loop) vs new (auto) alternating, one thread, "
                       "process CPU seconds", "rows": args.rows, "load_avg_1min": round(os.getloadavg()[0], 2),
               **interleaved(args.interleaved, args.rows)}
        rec["device"] = device_info()  # after interleaved() set one thread
        name = "cpu_demo_interleaved" + (f"_{args.tag}" if args.tag else "") + ".json"
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / name).write_text(json.dumps(rec, indent=1) + "\n")
        print("SUMMARY", json.dumps(rec["speedup_cpu_time"]), json.dumps(rec["rows_identical"]))
        return
    from nlalab.pairs import shipped

    shipped.materialize()  # cached models only: building them is not part of the timing
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cpu_demo_"))
    runs = {}
    for side in args.order.split(","):
        out = root / side
        shutil.rmtree(out, ignore_errors=True)
        engine, options, overrides = SIDES[side]
        runs[side] = one(engine, out, args.limit_per_category, options, overrides)
        print(side, json.dumps(runs[side]), flush=True)
    same = compare_samples([root / side / "samples.jsonl" for side in runs])
    rec = {"what": "nlalab run --out runs/demo (offline default), old engine vs new, same process",
           "limit_per_category": args.limit_per_category, "order": args.order, "device": device_info(),
           **runs, **same,
           "speedup": (round(runs["old"]["total_s"] / runs["new"]["total_s"], 3)
                       if "old" in runs and "new" in runs else None),
           "caveat": "2-core machine shared with other jobs while measured: see load averages"}
    name = "cpu_demo" + (f"_{args.tag}" if args.tag else "") + ".json"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / name).write_text(json.dumps(rec, indent=1) + "\n")
    print("SUMMARY", json.dumps({k: rec[k] for k in ("speedup", *same)}),
          {side: r["total_s"] for side, r in runs.items()})
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
