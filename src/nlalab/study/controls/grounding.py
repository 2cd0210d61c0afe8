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
VARIANTS = ("true", "false", "neutral")


@register
class Grounding(Control):
    name = "grounding"
    title = "Claim grounding (nlalab)"
    help = "reconstruction change when a true / false / neutral sentence is appended to the explanation"

    def texts(self, ctx: StudyContext) -> list[str]:
        rng = np.random.default_rng(ctx.seed)
        items = ctx.items
        plan, texts = [], []
        for j, r in enumerate(ctx.corpus_rows):
            if r["sample"] != 0:
                continue
            it = items[r["vector_index"]]
            others = [o for o in items if o.category != it.category] or [o for o in items if o.id != it.id] or [it]
            false = others[int(rng.integers(len(others)))].prompt
            base = r["explanation"].rstrip()
            idx = {}
            for name, sentence in (("true", it.prompt), ("false", false), ("neutral", NEUTRAL_SENTENCE)):
                idx[name] = len(texts)
                texts.append(f"{base} {sentence}")
            plan.append((j, idx))
        ctx.state.setdefault(self.name, {})["plan"] = plan
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
        return {"deltas": RC.grounding(base, variants, ctx.cfg.n_boot, ctx.seed, np.asarray(gi))}

    def tables(self, section: dict, results: dict) -> list[Table]:
        d = section.get("deltas") or {}
        return [Table("Change when a sentence is appended to the explanation",
                      ["appended", "Δ cos", "Δ centered cos", "Δ fve_nrm"],
                      [[k, fmt_est(v.get("cos")), fmt_est(v.get("centered_cos")), fmt_est(v.get("fve_nrm"))]
                       for k, v in d.items()],
                      ["true = the item's own prompt, false = another item's prompt, neutral = a fixed sentence."],
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
