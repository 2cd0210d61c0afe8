"""Claim grounding (nlalab): does appending a true sentence (the item's own prompt) move the reconstruction
toward the activation more than a false one (another item's prompt) or a neutral one?"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from nlalab.format import Table, fmt_est
from nlalab.study.controls.base import Control, Figure, StudyContext, register

# A fixed, content-free sentence.
NEUTRAL_SENTENCE = "The text is written in English."
VARIANTS = ("true", "false", "false_cross", "neutral")


@register
class Grounding(Control):
    name = "grounding"
    title = "Claim grounding (nlalab)"
    help = "reconstruction change when a true / false / neutral sentence is appended to the explanation"

    def texts(self, ctx: StudyContext) -> list[str]:
        from nlalab.study.recon_controls import grounding_texts

        first = [(j, r) for j, r in enumerate(ctx.corpus_rows) if r["sample"] == 0]
        plan, texts, same = [], [], 0
        # false = another item of the same category (item-level claims); false_cross = another category's
        for j, variants, info in grounding_texts(ctx.items, first, ctx.seed, NEUTRAL_SENTENCE):
            idx = {}
            for name in VARIANTS:
                idx[name] = len(texts)
                texts.append(variants[name])
            plan.append((j, idx))
            same += bool(info["false_same_category"])
        ctx.state.setdefault(self.name, {}).update(plan=plan, n_false_same_category=same)
        return texts

    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        from nlalab.study import recon_controls as RC

        plan = ctx.state.get(self.name, {}).get("plan") or []
        if not plan:
            return None
        js = [j for j, _ in plan]
        gi = [ctx.corpus_rows[j]["vector_index"] for j in js]
        base = ctx.score(ctx.recons["corpus"][js], ctx.acts[gi])
        rec = ctx.text_recons[self.name]
        variants = {name: ctx.score(rec[[v[name] for _, v in plan]], ctx.acts[gi]) for name in VARIANTS}
        deltas = RC.grounding(base, variants, ctx.cfg.n_boot, ctx.seed, np.asarray(gi))
        return {"deltas": deltas, "verdict": deltas.pop("verdict", None),
                "n_false_same_category": ctx.state[self.name].get("n_false_same_category")}

    def tables(self, section: dict, results: dict) -> list[Table]:
        d = section.get("deltas") or {}
        return [Table("Change when a sentence is appended to the explanation",
                      ["appended", "Δ cos", "Δ centered cos", "Δ fve_nrm"],
                      [[k, fmt_est(v.get("cos")), fmt_est(v.get("centered_cos")), fmt_est(v.get("fve_nrm"))]
                       for k, v in d.items()],
                      ["true = the item's own prompt, false = another item's prompt of the same category, "
                       "false_cross = another category's, neutral = a fixed sentence."]
                      + ([section["verdict"]] if section.get("verdict") else []),
                      key="grounding", wrap=True)]

    def figures(self, section: dict, results: dict, plots_dir: Path, run=None) -> list[Figure]:
        from nlalab import plotting as P

        d = section.get("deltas") or {}
        if not d:
            return []
        labels = list(d)
        plt = P.plt()
        fig, ax = plt.subplots(figsize=(7, 3.4))
        P.bars(ax, labels, [("Δ fve_nrm", [v.get("fve_nrm") for v in d.values()], P.PALETTE["fve_nrm"]),
                            ("Δ centered cos", [v.get("centered_cos") for v in d.values()], P.PALETTE["within"])],
               "change vs the explanation alone")
        ax.set_title("Claim grounding: change when a sentence is appended (95% CI)")
        fig.tight_layout()
        return [Figure(P.save(fig, plots_dir, "grounding"), "Change of fve_nrm when a sentence is appended",
                       "Mean change (95% cluster-bootstrap interval) of fve_nrm and centered cos per appended sentence.")]
