"""Prefix curve (nlalab): where in the explanation does the reconstruction come from? The AR reads the first
1, 2, ... sentences of each item's first explanation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from nlalab.format import Table, fmt_num
from nlalab.study.controls.base import Control, Figure, StudyContext, register


@register
class Prefix(Control):
    name = "prefix"
    title = "Prefix curve: fve_nrm by explanation prefix (nlalab)"
    help = "fve_nrm of the first 1..N sentences of each explanation (--max-prefix-sentences)"

    def texts(self, ctx: StudyContext) -> list[str]:
        from nlalab.study.recon_controls import prefix_texts

        plan, texts, index = [], [], {}
        for j, r in enumerate(ctx.corpus_rows):
            if r["sample"] != 0:
                continue
            # every L for every explanation (shorter ones carried at full length; is_full = the scored text)
            for L, full, t in prefix_texts(r["explanation"], ctx.cfg.max_prefix_sentences):
                if t not in index:  # one AR call per distinct text
                    index[t] = len(texts)
                    texts.append(t)
                plan.append((j, L, full, index[t]))
        ctx.state.setdefault(self.name, {})["plan"] = plan
        return texts

    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        from nlalab.study import recon_controls as RC

        plan = ctx.state.get(self.name, {}).get("plan") or []
        if not plan:
            return None
        rec = ctx.text_recons[self.name]
        gold = ctx.acts[[ctx.corpus_rows[j]["vector_index"] for j, _, _, _ in plan]]
        s = ctx.score(rec[[t for _, _, _, t in plan]], gold, centered=False)
        rows = [{"row": j, "n_sentences": L, "is_full": full, "cos": float(s["cos"][i]),
                 "fve_nrm": float(s["fve_nrm"][i])} for i, (j, L, full, _) in enumerate(plan)]
        curve = RC.prefix_curve(rows, n_boot=ctx.cfg.n_boot, seed=ctx.seed)
        extra = {k: curve.pop(k) for k in ("full_minus_first", "verdict", "method", "warning") if k in curve}
        return {"curve": curve, **extra}

    def tables(self, section: dict, results: dict) -> list[Table]:
        curve = section.get("curve") or {}
        return [Table("fve_nrm by explanation prefix (first n sentences; first sample of each item)",
                      ["sentences", "n", "cos", "fve_nrm"],
                      [[k, v.get("n"), fmt_num(v.get("cos")), fmt_num(v.get("fve_nrm"))] for k, v in curve.items()],
                      key="prefix")]

    def summary(self, section: dict, results: dict) -> list[str]:
        curve = section.get("curve") or {}
        return (["Prefix curve (fve_nrm): " + ", ".join(f"{k}: {fmt_num(v.get('fve_nrm'))}" for k, v in curve.items()
                                                     if isinstance(v, dict))] + [f"  {v}" for v in self.verdicts(section)])

    def figures(self, section: dict, results: dict, plots_dir: Path, run=None) -> list[Figure]:
        from nlalab import plotting as P

        curve = section.get("curve") or {}
        pts = [(int(k), v) for k, v in curve.items() if k.isdigit()]
        if not pts:
            return []
        plt = P.plt()
        fig, ax = plt.subplots(figsize=(6, 3.4))
        xs = [k for k, _ in pts]
        for m, c in (("fve_nrm", P.PALETTE["fve_nrm"]), ("cos", P.PALETTE["cos"])):
            e = [P.err(v.get(m) if isinstance(v.get(m), dict) else {"mean": v.get(m), "lo": v.get(f"{m}_lo"),
                                                                      "hi": v.get(f"{m}_hi")}) for _, v in pts]
            ax.errorbar(xs, [x[0] for x in e], yerr=[[x[1] for x in e], [x[2] for x in e]], marker="o", capsize=3,
                        color=c, label=m)
            full = curve.get("full")
            if full and full.get(m) is not None:
                fv = full[m]["mean"] if isinstance(full[m], dict) else full[m]
                ax.axhline(fv, color=c, linestyle="--", linewidth=1, label=f"{m}, full explanation")
        ax.set_xticks(xs)
        ax.set_xlabel("sentences read by the AR")
        P.legend_below(ax, ncol=2)
        ax.set_title("Reconstruction from explanation prefixes")
        fig.tight_layout()
        return [Figure(P.save(fig, plots_dir, "prefix_curve"), "fve_nrm and cos by explanation prefix",
                       "Mean fve_nrm and cos when the AR reads only the first n sentences (dashed: the full text).")]
