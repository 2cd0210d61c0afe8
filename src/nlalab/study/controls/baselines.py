"""Baseline ladder (nlalab): the same metrics for predictions that carry no item-specific explanation —
the mean direction, an empty explanation, the prompt's own text, and (with the blind control) blind
explanations — beside the real pair, each with its gap to the real pair."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from nlalab.format import Table, fmt_est, fmt_num
from nlalab.study.controls.base import Control, Figure, StudyContext, estimate_cell, register

RUNGS = {"real_pair": "the real pair", "untrained_pair": "the untrained NLA of the same base model", "mean_direction": "predict the mean direction",
         "empty_explanation": "empty explanation", "source_text": "source text as explanation",
         "blind_explanation": "blind explanation (no activation)"}


def _item_means(rows: list[dict], metric: str = "fve_nrm") -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            acc.setdefault(str(r["item_id"]), []).append(float(r[metric]))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _untrained_rung(ctx: StudyContext) -> dict:
    """The untrained pair's rung from its own run (same corpus): its fve_nrm and the paired item-level gap
    real − untrained, with a verdict; refused when the runs measured different things."""
    from nlalab.errors import UsageError
    from nlalab.rundir.load import load_run
    from nlalab.study import recon_controls as RC

    run = load_run(ctx.cfg.untrained_run)
    mine = {it.id for it in ctx.items}
    theirs = {str(r["item_id"]) for r in run.sample_dicts()}
    if not mine & theirs:
        raise UsageError(f"--untrained-run {ctx.cfg.untrained_run}: no item in common with this run's corpus. Fix: "
                         "run --untrained-baseline on the same corpus and position.")
    b_theirs, b_mine = run.results_dict().get("b_rv"), ctx.b_rv
    if b_theirs is not None and b_mine is not None and abs(float(b_theirs) - float(b_mine)) > 1e-6 * float(b_mine):
        raise UsageError(f"--untrained-run {ctx.cfg.untrained_run}: its fve_nrm divides by B_rv {b_theirs:.6g}, this "
                         f"run by {b_mine:.6g}. Fix: the same --brv (and position and corpus) for both runs.")
    other = _item_means(run.sample_dicts())
    gap = RC.paired_item_gap(_item_means(ctx.samples), other, n_boot=ctx.cfg.n_boot, seed=ctx.seed)
    vals = list(other.values())
    rung = {"fve_nrm": {"mean": sum(vals) / len(vals), "n": len(vals)}, "source": str(run.dir)}
    if gap is not None:
        rung["fve_nrm"]["gap_ci"] = gap
        rung["fve_nrm"]["gap_real_minus_this"] = gap["mean"]
        rung["verdict"] = RC.ladder_verdict("untrained_pair", gap)
    return rung


@register
class Baselines(Control):
    name = "baselines"
    title = "Baseline ladder (nlalab)"
    help = "mean direction, empty explanation and source text reconstructed like the real pair (+ blind rung)"

    def texts(self, ctx: StudyContext) -> list[str]:
        return [""] + [it.prompt for it in ctx.items]

    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        import numpy as np

        from nlalab import metrics as M
        from nlalab.study import recon_controls as RC

        tr = ctx.text_recons[self.name]
        n = len(ctx.items)
        rows = ctx.corpus_rows
        preds = {"real_pair": (ctx.recons["corpus"], [r["vector_index"] for r in rows]),
                 "mean_direction": (M.mean_direction(ctx.acts)[None].float(), list(range(n))),
                 "empty_explanation": (tr[[0]], list(range(n))),
                 "source_text": (tr[1:1 + n], list(range(n)))}
        extra = {"real_pair": {"recall": [np.nan if s["recall"] is None else s["recall"] for s in ctx.samples]}}
        out = RC.baseline_ladder(ctx.acts, preds, ctx.mse_scale, ctx.b_rv_for_stats, ctx.center, n_boot=ctx.cfg.n_boot,
                                 seed=ctx.seed, extra=extra)
        blind = ctx.section("blind")
        if blind and blind.get("rung"):
            out["blind_explanation"] = blind["rung"]
        if ctx.cfg.untrained_run:
            out["untrained_pair"] = _untrained_rung(ctx)
        return {"rungs": out}

    def verdicts(self, section: dict) -> list[str]:
        return [f"{RUNGS.get(k, k)}: {r['verdict']}" for k, r in (section.get("rungs") or {}).items() if r.get("verdict")]

    def tables(self, section: dict, results: dict) -> list[Table]:
        rows = []
        for name, r in (section.get("rungs") or {}).items():
            rows.append([RUNGS.get(name, name), fmt_est(r.get("cos")), fmt_est(r.get("centered_cos")),
                         fmt_est(r.get("fve_nrm")), fmt_num((r.get("fve_nrm") or {}).get("gap_real_minus_this"),
                                                            signed=True),
                         fmt_est(r.get("recall")), r.get("note", "")])
        return [Table("Each rung scored like the real pair (gap = real − rung)",
                      ["rung", "cos", "centered cos", "fve_nrm", "real − rung (fve_nrm)", "recall", "note"], rows,
                      key="baselines", wrap=True)]

    def summary(self, section: dict, results: dict) -> list[str]:
        rungs = [f"{k} {fmt_num((v.get('fve_nrm') or {}).get('mean'))}" for k, v in (section.get("rungs") or {}).items()]
        return ["fve_nrm ladder: " + ", ".join(rungs)] + [f"  {v}" for v in self.verdicts(section)]

    def figures(self, section: dict, results: dict, plots_dir: Path, run=None) -> list[Figure]:
        from nlalab import plotting as P

        rungs = section.get("rungs") or {}
        if not rungs:
            return []
        labels = [RUNGS.get(k, k) for k in rungs]
        plt = P.plt()
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
        P.bars(a1, labels, [("fve_nrm (÷ B_rv)", [r.get("fve_nrm") for r in rungs.values()], P.PALETTE["fve_nrm"])],
               "fve_nrm", rotation=20)
        a1.set_title("fve_nrm by rung (95% CI)")
        P.bars(a2, labels, [("cos", [r.get("cos") for r in rungs.values()], P.PALETTE["cos"]),
                            ("centered cos", [r.get("centered_cos") for r in rungs.values()], P.PALETTE["within"])],
               "cosine", rotation=20)
        a2.set_title("cos and centered cos by rung (95% CI)")
        fig.tight_layout()
        return [Figure(P.save(fig, plots_dir, "baselines"), "Baseline ladder",
                       "Each rung reconstructed and scored like the real pair; error bars: 95% cluster-bootstrap "
                       "intervals over items.")]

    def compare_rows(self, runs: list, row) -> list[dict]:
        def est(r, rung):
            return estimate_cell((((r.section(self.name) or {}).get("rungs") or {}).get(rung) or {}).get("fve_nrm"))

        return [row(f"baseline.{rung}", f"fve_nrm, baseline: {label}", "Reconstruction controls",
                    [est(r, rung) for r in runs]) for rung, label in RUNGS.items() if rung != "real_pair"]
