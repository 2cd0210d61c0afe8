"""Direction-injection control (seed §4.3): inject category directions (and their negations and cross-axis
differences) and ask whether the explanation names the category the direction points to."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from nlalab.format import Table, fmt_num
from nlalab.study.controls.base import Control, Figure, GenJob, StudyContext, register

KEY_BASE = 2_000_000


def direction_verdict(e: dict) -> str:
    """The top category of a direction and whether it is the expected one (away from c for a negation)."""
    top = e.get("top") or "none"
    if e["kind"] == "neg":
        return f"{top} (away from {e['category']}) ✓" if e["ok"] else f"{top} ✗ (not away from {e['category']})"
    return f"{top} ✓" if e["ok"] else f"{top} ✗ (should be {e['category']})"


@register
class Directions(Control):
    name = "directions"
    title = "Direction-injection control (seed §4.3)"
    help = "category mean directions, their negations and cross-axis differences, scored with a lexicon (--lexicon)"
    origin = "seed §4.3"
    writes_rows = True
    heatmap = "direction_heatmap"

    def generation(self, ctx: StudyContext) -> list[GenJob]:
        from nlalab.study.directions import category_directions

        dirs = category_directions(ctx.acts, [it.category for it in ctx.items], ctx.categories)
        ctx.state.setdefault(self.name, {})["directions"] = dirs
        if not dirs:
            return []
        import torch

        return [GenJob(self.name, torch.stack([d["vector"] for d in dirs]), ctx.seed, KEY_BASE)]

    def rows(self, ctx: StudyContext) -> Optional[list[dict]]:
        st = ctx.state.get(self.name, {})
        if "rows" in st:
            return st["rows"]
        if self.name not in ctx.gen_rows:
            return None
        out = []
        for r in ctx.scored_rows(self.name, ctx.vectors[self.name]):
            d = st["directions"][r["vector_index"]]
            r.update(direction=d["name"], kind=d["kind"], category=d["category"])
            out.append(r)
        st["rows"] = out
        return out

    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        from nlalab.scorers.keyword import load_lexicon
        from nlalab.study.analysis import directions_section

        rows = self.rows(ctx)
        if not rows:
            return None
        return directions_section(rows, categories=ctx.categories, lexicon=load_lexicon(ctx.cfg.lexicon))

    def verdicts(self, section: dict) -> list[str]:
        return [(section.get(k) or {}).get("verdict") for k in ("alignment", "negation_symmetry", "cross")
                if (section.get(k) or {}).get("verdict")]

    def tables(self, section: dict, results: dict) -> list[Table]:
        lc = list(section.get("lexicon_categories") or [])
        rows = [[e["direction"], e["kind"], str(e.get("n"))] + [fmt_num(e["mean_hits"].get(c), 2) for c in lc]
                + [direction_verdict(e)] for e in section.get("rows") or []]
        notes = [f"Mean lexicon hits per explanation. Rule: {section.get('rule')}."]
        for key, label in (("alignment", "Alignment (self)"), ("negation_symmetry", "Negation symmetry"),
                           ("cross", "Cross-axis")):
            b = section.get(key) or {}
            chance = b.get("chance")
            notes.append(f"{label}: {b.get('text', 'n/a')}" + (f" (chance rate {fmt_num(chance)})" if chance is not None
                                                                else ""))
        return [Table("Lexicon hits per direction", ["Direction", "kind", "n"] + lc + ["top"], rows, notes,
                      key="directions")]

    def summary(self, section: dict, results: dict) -> list[str]:
        return [f"Directions: alignment {section['alignment']['text']}, negation symmetry "
                f"{section['negation_symmetry']['text']}, cross {section['cross']['text']}"] + [
            f"  {v}" for v in self.verdicts(section)]

    def figures(self, section: dict, results: dict, plots_dir: Path, run=None) -> list[Figure]:
        from nlalab import plotting as P

        rows = section.get("rows") or []
        if not rows:
            return []
        # the lexicon's categories that this corpus has (a 3-category corpus gets a 3-column map)
        cats = list(results.get("categories") or [])
        lc = [c for c in (section.get("lexicon_categories") or []) if c in cats] or list(
            section.get("lexicon_categories") or [])
        M = np.array([[e["mean_hits"].get(c, 0.0) for c in lc] for e in rows], dtype=float)
        plt = P.plt()
        fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(lc), 0.9 + 0.38 * len(rows)))
        vmax = max(1.0, float(M.max()) if M.size else 1.0)
        im = ax.imshow(M, cmap="Blues", aspect="auto", vmin=0, vmax=vmax)
        ax.set_xticks(range(len(lc)))
        ax.set_xticklabels(lc)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{e['direction']} {'✓' if e['ok'] else '✗'}" for e in rows], fontsize=8)
        for i, e in enumerate(rows):
            for j in range(len(lc)):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if M[i, j] > 0.6 * vmax else "#222")
            if e["category"] in lc and e["kind"] != "neg":
                j = lc.index(e["category"])
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=1.5))
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="mean hits / explanation")
        ax.set_title(f"Direction × category keyword hits (alignment {section['alignment']['text']}, "
                     f"negation {section['negation_symmetry']['text']})")
        fig.tight_layout()
        return [Figure(P.save(fig, plots_dir, self.heatmap), "Heatmap of keyword hits per direction and category",
                       "Mean lexicon hits per explanation over the corpus's categories; red outline: the category the "
                       "direction points to.")]

    def compare_rows(self, runs: list, row) -> list[dict]:
        def cells(key: str) -> list:
            out = []
            for r in runs:
                d = r.section(self.name)
                if not d or not d.get(key) or not d[key].get("n"):
                    out.append(None)
                    continue
                k, n = d[key]["k"], d[key]["n"]
                out.append({"mean": k / n, "k": k, "n": n, "text": f"{k}/{n}"})
            return out

        return [row("directions.alignment", "Direction-injection self-category alignment", "Directions",
                    cells("alignment"), kind="count"),
                row("directions.negation", "Direction-injection negation symmetry", "Directions",
                    cells("negation_symmetry"), kind="count")]
