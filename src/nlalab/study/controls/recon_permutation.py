"""Reconstruction permutation floor (nlalab): is fve_nrm specific to the item, or would explanations of other
items of the same category reconstruct the activation just as well? No new model call: every
reconstruction is scored against every activation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from nlalab.format import p_text, OVERALL, Table, fmt_est, fmt_num, fmt_p
from nlalab.study.controls.base import Control, Figure, StudyContext, register


@register
class ReconPermutation(Control):
    name = "recon_permutation"
    title = "Item-specific reconstruction: permutation floor (nlalab)"
    help = "fve_nrm against reconstructions from other items' explanations (within and across categories)"

    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        from nlalab.study import recon_controls as RC

        rows = ctx.corpus_rows
        return RC.recon_permutation(ctx.acts, ctx.recons["corpus"], [r["vector_index"] for r in rows],
                                    [it.category for it in ctx.items], ctx.categories, ctx.mse_scale, ctx.b_rv_for_stats,
                                    ctx.center, ctx.cfg.n_perm, ctx.seed)

    def tables(self, section: dict, results: dict) -> list[Table]:
        n = section.get("n_perm")
        rows = []
        for m, blk in (section.get("metrics") or {}).items():
            o = (blk or {}).get("overall")
            if o:
                rows.append([m, fmt_num(o.get("real")), fmt_est(o.get("floor_within"), n=False),
                             fmt_est(o.get("floor_cross"), n=False), fmt_num(o.get("gap_within"), signed=True),
                             fmt_p(o.get("p_within"), n), fmt_num(o.get("gap_cross"), signed=True), fmt_p(o.get("p_cross"), n)])
        t1 = Table("Real pairing against permutation floors",
                   ["metric", "real", "floor within-category", "floor cross-category", "real − within", "p",
                    "real − cross", "p"], rows,
                   [f"Each activation reconstructed from the explanations of other items ({n} permutations; an "
                    "item's K explanations move together). Real − floor > 0 with a small p means the reconstruction "
                    "is specific to the item, not just to its category."], key="recon_permutation")
        fv = ((section.get("metrics") or {}).get("fve_nrm") or {}).get("per_category") or {}
        crow = [[c, fmt_num(b.get("real")), fmt_est(b.get("floor_within"), n=False), fmt_num(b.get("gap_within"), signed=True),
                 fmt_p(b.get("p_within"), n)] if b else [c, "n/a", "n/a", "n/a", "n/a"]
                for c, b in fv.items()]
        t2 = Table("fve_nrm per category", ["Category", "real", "floor within", "gap", "p"], crow,
                   [v for v in (section.get("verdicts") or {}).values()], key="recon_permutation_per_category",
                   wrap=True)
        return [t1, t2]

    def summary(self, section: dict, results: dict) -> list[str]:
        o = (((section.get("metrics") or {}).get("fve_nrm") or {}).get("overall"))
        if not o:
            return ["Item-specific fve_nrm: n/a"]
        return [f"Item-specific fve_nrm: real {fmt_num(o.get('real'))} vs within-category floor "
                f"{fmt_num((o.get('floor_within') or {}).get('mean'))} (gap {fmt_num(o.get('gap_within'), signed=True)}, "
                f"{p_text(o.get('p_within'), section.get('n_perm'))})"] + [f"  {v}" for v in self.verdicts(section)]

    def figures(self, section: dict, results: dict, plots_dir: Path, run=None) -> list[Figure]:
        from nlalab import plotting as P

        blk = (section.get("metrics") or {}).get("fve_nrm") or {}
        if not blk.get("overall"):
            return []
        cats = list(results.get("categories") or [])
        blocks = [(c, (blk.get("per_category") or {}).get(c)) for c in cats] + [(OVERALL, blk["overall"])]
        plt = P.plt()
        fig, ax = plt.subplots(figsize=(8, 3.6))
        P.bars(ax, [c for c, _ in blocks],
               [("real pairing", [{"mean": b.get("real")} if b else None for _, b in blocks], P.PALETTE["real"]),
                ("other items, same category", [b.get("floor_within") if b else None for _, b in blocks],
                 P.PALETTE["within"]),
                ("other items, any category", [b.get("floor_cross") if b else None for _, b in blocks],
                 P.PALETTE["cross"])], "fve_nrm")
        ax.set_title("fve_nrm of the real pairing vs reconstructions from other items' explanations")
        fig.tight_layout()
        return [Figure(P.save(fig, plots_dir, "recon_permutation"), "fve_nrm against permutation floors by category",
                       "fve_nrm of the real (activation, explanation) pairing vs the within- and cross-category "
                       "permutation floors; error bars: 2.5–97.5% of the permutation distribution.")]

    def compare_rows(self, runs: list, row) -> list[dict]:
        def cell(r, field: str) -> Optional[dict]:
            o = ((((r.section(self.name) or {}).get("metrics") or {}).get("fve_nrm") or {}).get("overall"))
            if not o:
                return None
            if field == "floor_within":
                e = o.get(field) or {}
                return {"mean": e.get("mean"), "lo": e.get("lo"), "hi": e.get("hi"), "n": e.get("n")}
            ci = o.get(f"{field}_ci") or {}  # per-item interval: lets compare's Pattern test the step
            return {"mean": o[field], "p": o["p_within" if field == "gap_within" else "p_cross"], "n": o.get("n_items"),
                    "lo": ci.get("lo"), "hi": ci.get("hi")}

        sec = "Reconstruction controls"
        return [row("recon.floor_within", "fve_nrm from other items' explanations (within-category floor)", sec,
                    [cell(r, "floor_within") for r in runs], kind="floor"),
                row("recon.gap_within", "fve_nrm item-specific gap above the within-category floor", sec,
                    [cell(r, "gap_within") for r in runs], kind="gap", signed=True)]
