"""Keyword-recall permutation control (seed §4.1): is recall above what explanations of other items get?

Always on: it needs no model call (recall of every prompt against every explanation set is one matrix)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from nlalab.format import p_text, OVERALL, Table, fmt_est, fmt_num, fmt_p
from nlalab.study.controls.base import Control, Figure, StudyContext, register


def _real(results: dict, group: str, block: dict) -> str:
    """Real recall with the cluster-bootstrap CI of the same rows (per_category), when they agree."""
    e = ((results.get("per_category") or {}).get(group) or {}).get("recall")
    real = block.get("real")
    if e and e.get("mean") is not None and real is not None and abs(float(e["mean"]) - float(real)) < 1e-9:
        return fmt_est(e, n=False)
    return fmt_num(real)


@register
class RecallPermutation(Control):
    name = "recall_permutation"
    title = "Permutation control: keyword recall (seed §4.1)"
    help = "keyword recall against explanations of other items (within and across categories); always on"
    origin = "seed §4.1"
    always = True

    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        from nlalab.study.analysis import recall_permutation

        return recall_permutation(ctx.samples, categories=ctx.categories, n_perm=ctx.cfg.n_perm, seed=ctx.seed)

    def verdicts(self, section: dict) -> list[str]:
        o = section.get("overall") or {}
        return [f"{lab}: {o[k]}" for k, lab in (("verdict", "within category"), ("verdict_cross", "across categories"))
                if o.get(k)]

    def tables(self, section: dict, results: dict) -> list[Table]:
        o = section.get("overall")
        if not o:
            return [Table("", ["Recall permutation"], [["no prompt has content words: not computable (n/a)"]])]
        n_perm = section.get("n_perm")
        rows = [
            ["Real", _real(results, OVERALL, o), f"{o.get('n_rows')} rows / {o.get('n_items')} items", ""],
            ["Permuted within-category", fmt_est(o.get("floor_within"), n=False), f"{n_perm} permutations", ""],
            ["Permuted cross-category", fmt_est(o.get("floor_cross"), n=False), f"{n_perm} permutations", ""],
            ["Real − perm-cross", fmt_num(o.get("gap_cross"), signed=True), f"{o.get('n_items')} items",
             fmt_p(o.get("p_cross"), n_perm)],
            ["Real − perm-within", fmt_num(o.get("gap_within"), signed=True), f"{o.get('n_items')} items",
             fmt_p(o.get("p_within"), n_perm)],
        ]
        t1 = Table("Recall against permutation floors", ["Pairing", "Recall", "n", "p"], rows,
                   [f"Unit shuffled: {section.get('unit')}. Floors: mean of the permutation distribution "
                    "[2.5%, 97.5%]; p: permutation p-value, alternative 'greater'."], key="permutation")
        crows = []
        for c in results.get("categories") or []:
            e = (section.get("per_category") or {}).get(c)
            if not e:
                crows.append([c, "n/a", "n/a", "n/a", "n/a", "n/a"])
                continue
            crows.append([c, f"{e['n_rows']} / {e['n_items']}", _real(results, c, e),
                          fmt_est(e.get("floor_within"), n=False), fmt_num(e.get("gap_within"), signed=True),
                          fmt_p(e.get("p_within"), n_perm)])
        t2 = Table("Per category: gap above the within-category floor",
                   ["Category", "n rows / items", "Real recall", "Permuted-within", "Δ", "p"], crows,
                   key="permutation_per_category")
        return [t1, t2]

    def summary(self, section: dict, results: dict) -> list[str]:
        o = section.get("overall")
        if not o:
            return ["Recall permutation: n/a (no prompt has content words)"]
        n = section.get("n_perm")
        return [f"Recall permutation: real {fmt_num(o.get('real'))}, floor within {fmt_num((o.get('floor_within') or {}).get('mean'))} "
                f"(gap {fmt_num(o.get('gap_within'), signed=True)}, {p_text(o.get('p_within'), n)}), floor cross "
                f"{fmt_num((o.get('floor_cross') or {}).get('mean'))} (gap {fmt_num(o.get('gap_cross'), signed=True)}, "
                f"{p_text(o.get('p_cross'), n)})"] + [f"  {v}" for v in self.verdicts(section)]

    def figures(self, section: dict, results: dict, plots_dir: Path, run=None) -> list[Figure]:
        from nlalab import plotting as P

        if not section.get("overall"):
            return []
        cats = list(results.get("categories") or [])
        blocks = [(c, (section.get("per_category") or {}).get(c)) for c in cats] + [(OVERALL, section["overall"])]
        pc = results.get("per_category") or {}

        def real_est(c, b):
            if not b:
                return None
            e = (pc.get(c) or {}).get("recall")
            return e if e and e.get("mean") is not None and b.get("real") is not None \
                and abs(float(e["mean"]) - b.get("real")) < 1e-9 \
                else {"mean": b.get("real")}

        real = [real_est(c, b) for c, b in blocks]
        plt = P.plt()
        fig, ax = plt.subplots(figsize=(8, 3.6))
        P.bars(ax, [c for c, _ in blocks],
               [("real (95% CI)", real, P.PALETTE["real"]),
                ("permuted within-category", [b.get("floor_within") if b else None for _, b in blocks],
                 P.PALETTE["within"]),
                ("permuted cross-category", [b.get("floor_cross") if b else None for _, b in blocks], P.PALETTE["cross"])],
               "keyword recall")
        ax.set_ylim(0, max(0.05, ax.get_ylim()[1] * 1.3))
        for i, (_, b) in enumerate(blocks):
            if b and b.get("gap_within") is not None and b.get("p_within") is not None:
                top = max([b.get("real") or 0.0, 0.0] + [float(e["hi"]) for e in (real[i], b.get("floor_within"),
                                                                                 b.get("floor_cross"))
                                                         if e and e.get("hi") is not None])
                ax.annotate(f"Δw {b['gap_within']:+.3f}\np {b['p_within']:.3f}", (i, top), textcoords="offset points",
                            xytext=(0, 4), ha="center", fontsize=7, color="#555")
        ax.set_title(f"Recall vs permutation floors ({section.get('n_perm')} permutations; bars: 2.5–97.5% of the null)")
        fig.tight_layout()
        return [Figure(P.save(fig, plots_dir, "permutation_floors"), "Real recall against permutation floors",
                       "Real recall vs the within- and cross-category permutation floors, per category; error bars "
                       "on floors: 2.5–97.5% of the permutation distribution.")]

    def compare_rows(self, runs: list, row) -> list[dict]:
        def cells(field: str) -> list:
            out = []
            for r in runs:
                sec = r.section(self.name) or {}
                o = sec.get("overall")
                if not o:
                    out.append(None)
                elif field.startswith("floor"):
                    e = o.get(field) or {}
                    out.append({"mean": e.get("mean"), "lo": e.get("lo"), "hi": e.get("hi"), "n": sec.get("n_perm")})
                else:
                    ci = o.get(f"{field}_ci") or {}  # per-item interval: lets compare's Pattern test the step
                    out.append({"mean": o[field], "p": o["p_cross" if field == "gap_cross" else "p_within"],
                                "n": o.get("n_items"), "lo": ci.get("lo"), "hi": ci.get("hi")})
            return out

        sec = "Permutation"
        return [row("perm.floor_within", "Permuted within-category recall (floor)", sec, cells("floor_within"),
                    kind="floor"),
                row("perm.floor_cross", "Permuted cross-category recall (floor)", sec, cells("floor_cross"), kind="floor"),
                row("perm.gap_cross", "Permutation gap above floor (cross)", sec, cells("gap_cross"), kind="gap",
                    signed=True),
                row("perm.gap_within", "Permutation gap above floor (within)", sec, cells("gap_within"), kind="gap",
                    signed=True)]
