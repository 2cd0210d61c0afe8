"""Seed noise floor (nlalab): how much do the headline numbers move when only the sampling seed changes?
Differences between runs smaller than this spread are noise."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from nlalab.format import Table, fmt_num
from nlalab.study.controls.base import Control, Figure, GenJob, StudyContext, register


def _seeds(ctx: StudyContext) -> list[int]:
    return [ctx.seed + 1000 * (j + 1) for j in range(ctx.cfg.n_seeds)]


def _headline(rows: list[dict], items, cats: list[str]) -> dict:
    from nlalab.scorers.keyword import keyword_recall

    out = {"cos": float(np.mean([r["cos"] for r in rows])), "fve_nrm": float(np.mean([r["fve_nrm"] for r in rows]))}
    rec = [(items[r["vector_index"]].category, keyword_recall(items[r["vector_index"]].prompt, r["explanation"]))
           for r in rows]
    vals = [v for _, v in rec if v is not None]
    out["recall"] = float(np.mean(vals)) if vals else float("nan")
    for c in cats:
        cv = [v for cc, v in rec if cc == c and v is not None]
        out[f"recall[{c}]"] = float(np.mean(cv)) if cv else float("nan")
        fv = [r["fve_nrm"] for r in rows if items[r["vector_index"]].category == c]
        out[f"fve_nrm[{c}]"] = float(np.mean(fv)) if fv else float("nan")
    return out


@register
class Seeds(Control):
    name = "seeds"
    title = "Seed noise floor (nlalab)"
    help = "the headline numbers re-run with --n-seeds other sampling seeds"

    def generation(self, ctx: StudyContext) -> list[GenJob]:
        return [GenJob(f"seed{sd}", ctx.acts, sd, 0) for sd in _seeds(ctx)]

    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        from nlalab.study import recon_controls as RC

        heads = [_headline(ctx.samples, ctx.items, ctx.categories)]
        for sd in _seeds(ctx):
            heads.append(_headline(ctx.scored_rows(f"seed{sd}", ctx.acts), ctx.items, ctx.categories))
        return {"seeds": [ctx.seed] + _seeds(ctx), "spread": RC.seed_spread(heads)}

    def verdicts(self, section: dict) -> list[str]:
        sp = section.get("spread") or {}
        return [sp[k]["verdict"] for k in ("cos", "fve_nrm", "recall") if (sp.get(k) or {}).get("verdict")]

    def tables(self, section: dict, results: dict) -> list[Table]:
        return [Table(f"Headline numbers over seeds {section.get('seeds')} (std = seed-to-seed spread)",
                      ["number", "mean", "std", "min", "max"],
                      [[k] + [fmt_num((v or {}).get(f)) for f in ("mean", "std", "min", "max")]
                       for k, v in (section.get("spread") or {}).items()], key="seeds")]

    def summary(self, section: dict, results: dict) -> list[str]:
        sp = section.get("spread") or {}
        parts = [f"{k} ±{fmt_num((sp[k] or {}).get('std'))}" for k in ("cos", "fve_nrm", "recall") if k in sp]
        return [f"Seed noise floor (std over {len(section.get('seeds') or [])} seeds): " + ", ".join(parts)]

    def figures(self, section: dict, results: dict, plots_dir: Path, run=None) -> list[Figure]:
        from nlalab import plotting as P

        sp = section.get("spread") or {}
        keys = [k for k in sp if (k.startswith("fve_nrm") or k.startswith("recall")) and sp[k]]
        if not keys:
            return []
        plt = P.plt()
        fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(keys)), 3.6))
        for i, k in enumerate(keys):
            vals = sp[k]["values"]
            ax.plot([i] * len(vals), vals, "o", color=P.PALETTE["recall" if k.startswith("recall") else "fve_nrm"],
                    alpha=0.8)
            ax.plot([i - 0.3, i + 0.3], [sp[k]["mean"]] * 2, "-", color="#333")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"Headline numbers per seed ({len(section.get('seeds') or [])} seeds; dash: mean)")
        fig.tight_layout()
        return [Figure(P.save(fig, plots_dir, "seeds"), "Headline numbers per sampling seed",
                       "Each dot is one seed's value; the spread is the noise floor for differences between runs.")]
