"""Record a shipped pack's study figures in its eval.json (issue 20): the headline table of finished
`nlalab run` directories, with fve_nrm both as run (the pack's training-set B_rv) and with the run's own
B_rv, where predicting the mean direction scores -(1-|mu|)/(1+|mu|) < 0 -- the "above the mean direction"
reading. The shipped-pair test asserts what this writes.

    python3 scripts/pack_study_figures.py PACK_DIR seed50_v1=runs/broad_seed heldout4_v1=runs/broad_heldout \
        heldout4_v1_first_pack=runs/v1_heldout
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nlalab.rundir.load import load_run
from nlalab.study.analysis import analyze
from nlalab.study.incomplete import headline_mask


def figures(run_dir: str) -> dict:
    run = load_run(run_dir)
    res, cfg = run.results_dict(), run.config_dict()
    own = res["brv"]["own_value"]
    rows = run.sample_dicts()
    head = [r for r, keep in zip(rows, headline_mask(rows, bool(cfg.get("score_incomplete")))) if keep] or rows
    for r in head:
        if r.get("mse_nrm") is not None:
            r["fve_nrm"] = 1.0 - r["mse_nrm"] / own
    cats = res["categories"]
    st = res.get("settings") or {}
    own_tab = analyze(head, categories=cats, b_rv=own, b_rv_source="own", n_perm=st.get("n_perm", 1000),
                      n_boot=st.get("n_boot", 2000), seed=st.get("seed", 42))["per_category"]
    pc = res["per_category"]
    rp = res["controls"]["recall_permutation"]["overall"]
    sel = lambda e: {k: round(float(e[k]), 4) for k in ("mean", "lo", "hi") if e.get(k) is not None}  # noqa: E731
    return {
        "run": {"k": res.get("k"), "n_items": res.get("n_items"), "max_new_tokens": cfg.get("max_new_tokens"),
                "pair": (cfg.get("pair") or {}).get("name") if isinstance(cfg.get("pair"), dict) else cfg.get("pair"),
                "corpus": (cfg.get("corpus") or {}).get("ref") if isinstance(cfg.get("corpus"), dict) else cfg.get("corpus"),
                "device": "cpu", "elapsed_s": res.get("elapsed_s_this_invocation")},
        "b_rv_training": res["brv"]["training_value"], "b_rv_own": own,
        "fve_nrm_training": {c: sel(pc[c]["fve_nrm"]) for c in pc},
        "fve_nrm_own": {c: sel(own_tab[c]["fve_nrm"]) for c in own_tab},
        "recall": {c: round(float(pc[c]["recall"]["mean"]), 4) for c in pc},
        "recall_overall": round(float(pc["OVERALL"]["recall"]["mean"]), 4),
        "hit": {c: round(float(pc[c]["hit"]["mean"]), 4) for c in pc if c != "OVERALL"},
        "hit_overall": round(float(pc["OVERALL"]["hit"]["mean"]), 4),
        "recall_p_within": rp["p_within"], "recall_gap_within": rp["gap_within"], "recall_verdict": rp["verdict"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pack")
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    a = ap.parse_args()
    ev_path = Path(a.pack) / "eval.json"
    ev = json.loads(ev_path.read_text())
    ev.setdefault("study", {})
    for spec in a.runs:
        name, run_dir = spec.split("=", 1)
        ev["study"][name] = figures(run_dir)
    ev_path.write_text(json.dumps(ev, indent=2) + "\n")
    print(json.dumps({k: {"fve_nrm_own": v["fve_nrm_own"]["OVERALL"], "hit": v["hit"], "recall_p": v["recall_p_within"]}
                      for k, v in ev["study"].items()}, indent=1))


if __name__ == "__main__":
    main()
