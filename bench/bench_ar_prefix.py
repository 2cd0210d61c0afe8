"""Benchmark: the AR forward, padded vs shared-prefix (``nlalab.reconstruct``, ``share_prefix``), one process.

A script, not a test. Texts: ``bench/data/ar_texts_demo.json.gz``, the AR inputs of the offline demo study
(``nlalab run --out runs/demo``, seed 42): ``corpus`` (100 explanations, k = 2) and ``extras`` (567 control
texts: the prefix control's sentence prefixes, the baselines' and grounding texts, blind explanations).

- CPU (default): the shipped SmolLM2-135M AR (L20, fp32), cached models only.
- ``--shape qwen2.5-7b`` (CUDA): a random fp32 replica of the shape truncated at its layer (``ar_view`` of
  bench_study.py) with an identity value head, tokenizer from ``--tokenizer-dir`` (bench_study.py
  ``--save-tokenizers``); what a real study's AR forward costs when its fp32 weights fit (``--ar-dtype auto``).

Padded and shared alternate ``--reps`` times; each side's best time, the number of token positions each
forward computes, and the largest relative change of a reconstruction (shared vs padded; and, for
``--noise-rows`` rows, each batched forward vs the same row alone: the padded forward's own batch effect) go to
``bench/results/ar_prefix_<device>.json`` (and $OUT when set).

    PYTHONPATH=src python3 bench/bench_ar_prefix.py
    PYTHONPATH=src python3 bench/bench_ar_prefix.py --shape qwen2.5-7b --tokenizer-dir .models/tokenizers
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))


def load_ar_for(args):
    from nlalab.pairs.load import AR, LoadOptions, load_ar

    if not args.shape:
        from nlalab.pairs import shipped

        _avd, ard, _base = shipped.materialize()
        return load_ar(ard, LoadOptions(device="cpu", dtype="fp32"), layer=20), "shipped smollm2-135m-L20 AR, fp32"
    import bench_study as bs
    import bench_verbalize as bv
    from nlalab.pairs.sidecar import parse_sidecar, sidecar_dict
    from torch import nn

    layer = args.layer or bs.LAYERS[args.shape]
    model, cfg = bv.build_model(args.shape, dtype=torch.float32)
    tok, _ = bs.load_bench_tokenizer("gemma3" if "gemma" in args.shape else "llama3", args.tokenizer_dir)
    view = bs.ar_view(model, layer)
    d = int(cfg.hidden_size)
    head = nn.Linear(d, d, bias=False, device="cuda", dtype=torch.float32)
    with torch.no_grad():
        head.weight.copy_(torch.eye(d))
    sc = parse_sidecar(sidecar_dict(role="ar", injection_scale=None, d_model=d, layer=layer, mse_scale=math.sqrt(d),
                                    injection_char="x", injection_token_id=0, left_id=0, right_id=0,
                                    base_checkpoint=f"random replica {args.shape}", stage="init"))
    ar = AR(model=view, value_head=head, tokenizer=tok, sidecar=sc, template=sc.ar_template, mse_scale=math.sqrt(d),
            layer=layer, path=Path(f"random:{args.shape}"))
    return ar, f"random fp32 {args.shape} replica truncated at L{layer}, identity value head"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default=None, help="a bench_verbalize.py shape (CUDA); default: the shipped CPU AR")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--tokenizer-dir", default=None)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--ar-batch-size", type=int, default=16, help="rows per forward (the study's --ar-batch-size)")
    ap.add_argument("--noise-rows", type=int, default=32,
                    help="rows of each set also run one at a time (padded): the batch-composition change of the "
                         "padded forward itself, the yardstick for the shared forward's change")
    ap.add_argument("--skip-check", action="store_true",
                    help="mark the AR as checked (nlalab.reconstruct._checked), so the shared side runs even where "
                         "the once-per-AR check would send it to the padded forward: measures the raw change")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    from nlalab.reconstruct import ar_input_ids, max_rel_change, reconstruct, trie

    texts = json.loads(gzip.open(HERE / "data" / "ar_texts_demo.json.gz").read())
    ar, what = load_ar_for(args)
    import warnings

    warnings.simplefilter("always")
    if args.skip_check:
        from nlalab import reconstruct as R

        R._checked[ar.model] = True
    rec: dict = {"what": "AR forward over the offline demo's AR inputs: padded vs shared-prefix, alternating",
                 "ar": what, "ar_batch_size": args.ar_batch_size,
                 "check_skipped": args.skip_check, "sets": {}}
    for name, tx in texts.items():
        ids = ar_input_ids(ar, tx)
        chunks = trie.plan(ids)
        row = {"rows": len(tx), "tokens": sum(map(len, ids)), "nodes": sum(len(c.tokens) for c in chunks),
               "padded_s": [], "shared_s": []}
        outs, info = {}, {}
        for _ in range(args.reps):
            for side in ("padded", "shared"):
                sync()
                t = time.perf_counter()
                outs[side] = reconstruct(ar, tx, batch_size=args.ar_batch_size,
                                         share_prefix="off" if side == "padded" else "on", info=info)
                sync()
                row[f"{side}_s"].append(round(time.perf_counter() - t, 3))
        row["shared_side_forward"] = info.get("forward")
        row["max_rel_change"] = max_rel_change(outs["shared"], outs["padded"])
        n = min(args.noise_rows, len(tx))
        if n:
            single = torch.cat([reconstruct(ar, [t], share_prefix="off") for t in tx[:n]])
            row["noise_rows"] = n
            row["padded_vs_single_max_rel"] = max_rel_change(outs["padded"][:n], single)
            row["shared_vs_single_max_rel"] = max_rel_change(outs["shared"][:n], single)
        row["speedup"] = round(min(row["padded_s"]) / min(row["shared_s"]), 3)
        rec["sets"][name] = row
        print(name, json.dumps(row), flush=True)
    tot_p = sum(min(r["padded_s"]) for r in rec["sets"].values())
    tot_s = sum(min(r["shared_s"]) for r in rec["sets"].values())
    rec["total"] = {"padded_s": round(tot_p, 3), "shared_s": round(tot_s, 3), "speedup": round(tot_p / tot_s, 3)}
    if torch.cuda.is_available() and args.shape:
        dev = {"kind": "cuda", "gpu": torch.cuda.get_device_name(0)}
        slug = "h200" if "H200" in dev["gpu"] else dev["gpu"].split()[-1].lower()
    else:
        from bench_cpu_demo import device_info

        dev, slug = device_info(), "cpu"
    rec["device"] = {**dev, "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "torch_threads": torch.get_num_threads()}
    name = f"ar_prefix_{args.shape or 'demo'}_{slug}" + (f"_{args.tag}" if args.tag else "") + ".json"
    for d in [HERE / "results"] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else []):
        d.mkdir(exist_ok=True, parents=True)
        (d / name).write_text(json.dumps(rec, indent=1) + "\n")
    print("SUMMARY", json.dumps(rec["total"]), flush=True)


if __name__ == "__main__":
    main()
