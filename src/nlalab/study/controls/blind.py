"""Blind explanations (nlalab): the AV's base model writes an explanation in the AV's format from the prompt
*text*, with no activation. If the AR reconstructs these as well as the real pair's, the real
explanations carry nothing the prompt's text does not."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from nlalab.format import OVERALL, Table, fmt_est, fmt_num
from nlalab.study.controls.base import Control, Figure, PlainJob, StudyContext, register

KEY_BASE = 3_000_000


@register
class Blind(Control):
    name = "blind"
    title = "Blind explanations: the prompt's text, no activation (nlalab)"
    help = "explanations the base model writes from the prompt text alone, in the AV's format"
    writes_rows = True

    def plain(self, ctx: StudyContext) -> list[PlainJob]:
        return [PlainJob(self.name, [it.prompt for it in ctx.items], KEY_BASE)]

    def texts(self, ctx: StudyContext) -> list[str]:
        return [r["explanation"] for r in ctx.plain_rows.get(self.name, [])]

    def rows(self, ctx: StudyContext) -> Optional[list[dict]]:
        from nlalab.scorers.keyword import keyword_hit, keyword_recall

        rows = ctx.plain_rows.get(self.name) or []
        if not rows:
            return None
        s = ctx.score(ctx.text_recons[self.name], ctx.acts[[r["vector_index"] for r in rows]])
        out = []
        for i, r in enumerate(rows):
            it = ctx.items[r["vector_index"]]
            out.append({**r, "item_id": it.id, "category": it.category, **{k: float(v[i]) for k, v in s.items()},
                        "recall": keyword_recall(it.prompt, r["explanation"]),
                        "hit": keyword_hit(it.prompt, r["explanation"])})
        return out

    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        from nlalab.study import recon_controls as RC

        rows = self.rows(ctx)
        if not rows:
            return None
        corpus = ctx.corpus_rows
        preds = {"real_pair": (ctx.recons["corpus"], [r["vector_index"] for r in corpus]),
                 "blind_explanation": (ctx.text_recons[self.name], [r["vector_index"] for r in rows])}
        nan = float("nan")
        extra = {"real_pair": {"recall": [nan if s["recall"] is None else s["recall"] for s in ctx.samples]},
                 "blind_explanation": {"recall": [nan if r["recall"] is None else r["recall"] for r in rows]}}
        ladder = RC.baseline_ladder(ctx.acts, preds, ctx.mse_scale, ctx.b_rv_for_stats, ctx.center, n_boot=ctx.cfg.n_boot,
                                    seed=ctx.seed, extra=extra)
        per_cat = {}
        for c in ctx.categories:
            sel = [r for r in rows if r["category"] == c]
            per_cat[c] = {m: (float(np.mean(v)) if (v := [r[m] for r in sel if r.get(m) is not None]) else None)
                          for m in ("cos", "fve_nrm", "recall")} | {"n": len(sel)}
        rung = ladder["blind_explanation"]
        gap = (rung.get("fve_nrm") or {}).get("gap_real_minus_this")
        verdict = (None if gap is None else
                   f"the real pair's fve_nrm is {fmt_num(gap, signed=True)} above blind explanations of the prompt "
                   f"text (real {fmt_num(ladder['real_pair']['fve_nrm']['mean'])}, blind "
                   f"{fmt_num(rung['fve_nrm']['mean'])}); see the baseline ladder for its interval")
        return {"n": len(rows), "rung": rung, "per_category": per_cat, "verdict": verdict,
                "generator": "the target (base) model, prompted in the AV's format with the prompt text"}

    def verdicts(self, section: dict) -> list[str]:
        v = (section.get("rung") or {}).get("verdict")
        return [v] if v else super().verdicts(section)

    def tables(self, section: dict, results: dict) -> list[Table]:
        pc = results.get("per_category") or {}
        rows = []
        for c, b in (section.get("per_category") or {}).items():
            real = pc.get(c) or {}
            rows.append([c, str(b.get("n")), fmt_num(b.get("fve_nrm")), fmt_est(real.get("fve_nrm"), n=False),
                         fmt_num(b.get("recall")), fmt_est(real.get("recall"), n=False)])
        r = section.get("rung") or {}
        rows.append([OVERALL, str(section.get("n")), fmt_est(r.get("fve_nrm"), n=False),
                     fmt_est((pc.get(OVERALL) or {}).get("fve_nrm"), n=False), fmt_est(r.get("recall"), n=False),
                     fmt_est((pc.get(OVERALL) or {}).get("recall"), n=False)])
        return [Table("Blind vs real explanations", ["Category", "n", "fve_nrm blind", "fve_nrm real", "recall blind",
                                                       "recall real"], rows,
                      [f"Blind explanations written by {section.get('generator')}."], key="blind")]

    def figures(self, section: dict, results: dict, plots_dir: Path, run=None) -> list[Figure]:
        from nlalab import plotting as P

        cats = list((section.get("per_category") or {}))
        pc = results.get("per_category") or {}
        if not cats:
            return []
        plt = P.plt()
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
        for ax, m in ((a1, "fve_nrm"), (a2, "recall")):
            P.bars(ax, cats, [("real pair", [(pc.get(c) or {}).get(m) for c in cats], P.PALETTE["real"]),
                              ("blind (no activation)", [{"mean": section["per_category"][c].get(m)} for c in cats],
                               P.PALETTE["random"])], m)
            ax.set_title(f"{m}: real vs blind explanations")
        fig.tight_layout()
        return [Figure(P.save(fig, plots_dir, "blind"), "fve_nrm and recall of blind vs real explanations",
                       "Per category: the real pair (95% CI) vs explanations written from the prompt text alone.")]
