"""Random-Gaussian control (seed §4.2): what does the pair write and reconstruct for vectors with no meaning?

L2-matched Gaussian vectors are verbalized and reconstructed like real activations; each is paired with a
random corpus prompt so recall has a chance level."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from nlalab.format import Table, fmt_est, fmt_num
from nlalab.study.controls.base import Control, Figure, GenJob, StudyContext, estimate_cell, register

KEY_BASE = 1_000_000


def random_gaussian_vectors(n: int, d: int, norm: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (v / v.norm(dim=-1, keepdim=True) * norm).float()


@register
class RandomGaussian(Control):
    name = "random_gaussian"
    title = "Random-Gaussian control (seed §4.2)"
    help = "explanations and reconstructions of L2-matched random vectors (--n-random)"
    origin = "seed §4.2"
    writes_rows = True

    def generation(self, ctx: StudyContext) -> list[GenJob]:
        norm = float(ctx.acts.norm(dim=-1).mean())
        v = random_gaussian_vectors(ctx.cfg.n_random, ctx.acts.shape[1], norm, ctx.seed)
        return [GenJob(self.name, v, ctx.seed, KEY_BASE)]

    def rows(self, ctx: StudyContext) -> Optional[list[dict]]:
        if "rows" in ctx.state.get(self.name, {}):
            return ctx.state[self.name]["rows"]
        from nlalab.scorers.keyword import keyword_hit, keyword_recall

        rng = np.random.default_rng(ctx.seed)
        paired = rng.integers(0, len(ctx.items), size=ctx.cfg.n_random)
        out = []
        for r in ctx.scored_rows(self.name, ctx.vectors[self.name]):
            it = ctx.items[int(paired[r["vector_index"]])]
            r.update(paired_item_id=it.id, recall=keyword_recall(it.prompt, r["explanation"]),
                     hit=keyword_hit(it.prompt, r["explanation"]))
            out.append(r)
        ctx.state.setdefault(self.name, {})["rows"] = out
        return out

    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        from nlalab.study.analysis import random_gaussian_section

        return random_gaussian_section(self.rows(ctx), ctx.samples, categories=ctx.categories,
                                       n_boot=ctx.cfg.n_boot, seed=ctx.seed,
                                       per_category=ctx.results.get("per_category"))

    def tables(self, section: dict, results: dict) -> list[Table]:
        rows = []
        for c in section.get("comparison") or []:
            label = "recall vs random real prompt" if c["metric"] == "recall" else c["metric"]
            rows.append([label, fmt_est(c.get("real")), fmt_est(c.get("random")), fmt_num(c.get("diff"), signed=True)])
        out = [Table("Real activations vs random vectors", ["Metric", "Real", "Random Gaussian", "Real − random"], rows,
                     [f"{section.get('n')} explanations of {section.get('n_vectors')} L2-matched random vectors; "
                      f"CIs: {section.get('ci_method')}. fve_nrm of a random vector is ≈ 1 − 2/B_rv (÷ the run's "
                      "B_rv); the seed's figure (−0.949) is fve_nrm_seed."], key="random_gaussian")]
        ft = section.get("format_templates") or {}
        for n_words in (3, 5):
            trows = []
            for side in ("real", "random"):
                block = (ft.get(side) or {}).get(f"first{n_words}") or {}
                for t in block.get("top") or []:
                    trows.append([side, f"\"{t['phrase']}\"", f"{t['count']}/{block.get('n')}", fmt_num(t["share"])])
            if trows:
                out.append(Table(f"Top opening phrases (first {n_words} words)", ["Inputs", "Phrase", "Count", "Share"],
                                 trows, key=f"openings{n_words}", wrap=True))
        return out

    def summary(self, section: dict, results: dict) -> list[str]:
        m = section.get("metrics") or {}
        top = ((section.get("format_templates") or {}).get("random") or {}).get("first3") or {}
        t0 = (top.get("top") or [{}])[0]
        return [f"Random Gaussian: cos {fmt_num((m.get('cos') or {}).get('mean'))}, fve_nrm_seed "
                f"{fmt_num((m.get('fve_nrm_seed') or {}).get('mean'))} (seed's definition), fve_nrm "
                f"{fmt_num((m.get('fve_nrm') or {}).get('mean'))} (÷ B_rv), recall "
                f"{fmt_num((m.get('recall') or {}).get('mean'))}; top opening \"{t0.get('phrase', '')}\" "
                f"{fmt_num(t0.get('share'))}"] + [f"  {v}" for v in self.verdicts(section)]

    def figures(self, section: dict, results: dict, plots_dir: Path, run=None) -> list[Figure]:
        from nlalab import plotting as P

        rnd_rows = run.control_rows(self.name) if run is not None else []
        if not rnd_rows:
            return []
        plt = P.plt()
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        for ax, m in zip(axes, ("cos", "fve_nrm_seed")):
            real = np.array([r[m] for r in run.sample_dicts() if r.get(m) is not None], dtype=float)
            rnd = np.array([r[m] for r in rnd_rows if r.get(m) is not None], dtype=float)
            both = np.concatenate([real, rnd]) if real.size + rnd.size else np.zeros(1)
            lo, hi = float(np.min(both)), float(np.max(both))
            if hi - lo < 1e-9:
                lo, hi = lo - 0.5, hi + 0.5
            bins = np.linspace(lo, hi, 25)
            ax.hist(real, bins=bins, alpha=0.65, color=P.PALETTE["fve_nrm"], label=f"real (n={real.size})",
                    density=True)
            ax.hist(rnd, bins=bins, alpha=0.65, color=P.PALETTE["random"], label=f"random Gaussian (n={rnd.size})",
                    density=True)
            for arr, c in ((real, P.PALETTE["fve_nrm"]), (rnd, P.PALETTE["random"])):
                if arr.size:
                    ax.axvline(arr.mean(), color=c, linestyle="--", linewidth=1)
            ax.set_ylabel("density")
            ax.set_xlabel(m)
            P.legend_below(ax, ncol=2)
            ax.set_title(f"{m}: real vs random Gaussian (dashed: means)")
        fig.tight_layout()
        return [Figure(P.save(fig, plots_dir, "real_vs_random"), "Histograms of cos and fve_nrm_seed, real vs random",
                       "Distributions of cos and of the seed's per-vector fve (fve_nrm_seed) for real activations and "
                       "L2-matched random vectors.")]

    def compare_rows(self, runs: list, row) -> list[dict]:
        def est(r, m):
            return estimate_cell(((r.section(self.name) or {}).get("metrics") or {}).get(m))

        return [row(f"random.{m}", lab, "Random Gaussian", [est(r, m) for r in runs], signed=(m == "cos"))
                for m, lab in (("fve_nrm", "Random Gaussian fve_nrm (÷ B_rv)"),
                               ("fve_nrm_seed", "Random Gaussian fve_nrm_seed"), ("cos", "Random Gaussian cos"))]
