"""Calibration of every verdict by simulation: false-positive rate under its null, power at the seed's design.

Each entry of :data:`VERDICTS` runs the real analysis code on data from :mod:`nlalab.testing.simulate`
and returns whether the verdict said "evidence". :func:`measure` repeats it over seeds.
``scripts/gen_verdicts_doc.py`` writes docs/verdicts.md from these numbers and tests/unit/test_verdicts_*.py
assert that every false-positive rate is at most α plus Monte-Carlo error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from nlalab.testing.simulate import (SEED_DESIGN, simulate_direction_tops, simulate_paired, simulate_rows,
                                     simulate_vectors)

__all__ = ["Verdict", "VERDICTS", "measure", "ALPHA"]

ALPHA = 0.05


@dataclass(frozen=True)
class Verdict:
    key: str
    where: str  # the results.json field holding the verdict
    question: str
    statistic: str
    null: str
    effect: str  # the effect at which power is reported
    read: str
    fires: Callable[[int, bool, int], bool]  # (seed, with_effect, n_perm) -> said "evidence"


def _recall_section(rows, n_perm: int, seed: int) -> dict:
    """controls.recall_permutation exactly as the control plug-in computes it."""
    from nlalab.study.analysis import recall_permutation

    return recall_permutation(rows, categories=SEED_DESIGN.categories, n_perm=n_perm, seed=seed)


def _recall_within(seed: int, effect: bool, n_perm: int) -> bool:
    rows = simulate_rows(seed=seed, corpus_seed=seed, item_content=0.08 if effect else 0.0,
                         category_content=0.35 if effect else 0.5)
    return _recall_section(rows, n_perm, seed)["overall"]["verdict"].startswith("evidence")


def _recall_within_cat(seed: int, effect: bool, n_perm: int) -> bool:
    rows = simulate_rows(seed=seed, corpus_seed=seed, item_content=0.08 if effect else 0.0,
                         category_content=0.35 if effect else 0.5)
    pc = _recall_section(rows, n_perm, seed)["per_category"]
    return any(b and b["verdict"].startswith("evidence") for b in pc.values())


def _recall_cross(seed: int, effect: bool, n_perm: int) -> bool:
    rows = simulate_rows(seed=seed, corpus_seed=seed, category_content=0.1 if effect else 0.0)
    return _recall_section(rows, n_perm, seed)["overall"]["verdict_cross"].startswith("evidence")


def _recon(seed: int, effect: bool, n_perm: int, per_category: bool) -> bool:
    from nlalab import metrics
    from nlalab.rowstats import matrix_permutation
    from nlalab.study.recon_controls import score_matrix

    acts, rec, ri, ic, cats = simulate_vectors(seed=seed, truth="item" if effect else "category", effect=0.15)
    d = acts.shape[1]
    mats = score_matrix(rec, acts, d ** 0.5, metrics.brv(acts, d ** 0.5), acts.mean(0))
    M = np.zeros((len(ri), acts.shape[0]))
    M[np.arange(len(ri)), np.asarray(ri)] = 1.0
    S_sum = mats["fve_nrm"].T @ M
    W_sum = np.broadcast_to(M.sum(0)[None, :], S_sum.shape)
    blk = matrix_permutation(S_sum, W_sum, np.asarray(ic), cats, n_perm, seed, tag="recon-fve_nrm")
    if per_category:
        return any(b and b["verdict"].startswith("evidence") for b in blk["per_category"].values())
    return blk["overall"]["verdict"].startswith("evidence")


def _spread(seed: int, effect: bool, n_perm: int) -> bool:
    from nlalab.stats import spread_from_rows

    rows = simulate_rows(seed=seed, corpus_seed=seed, category_shift=0.08 if effect else 0.0, with_text=False)
    return spread_from_rows(rows, "fve_nrm", SEED_DESIGN.categories, n_perm=n_perm, n_boot=200,
                            seed=seed)["verdict"].startswith("evidence")


def _spread_interval(seed: int, effect: bool, n_perm: int) -> bool:
    """'fires' when the interval excludes 0: under the null that is a non-coverage of the true spread 0."""
    from nlalab.stats import spread_from_rows

    rows = simulate_rows(seed=seed, corpus_seed=seed, category_shift=0.08 if effect else 0.0, with_text=False)
    return spread_from_rows(rows, "fve_nrm", SEED_DESIGN.categories, n_perm=50, n_boot=200, seed=seed)["lo"] > 0


def _pattern(seed: int, effect: bool, n_perm: int) -> bool:
    from nlalab import stats
    from nlalab.report.pattern import classify_steps

    runs = [simulate_rows(seed=1000 * seed + r, corpus_seed=seed, run_shift=(0.03 * r if effect else 0.0),
                          with_text=False)
            for r in range(3)]
    means = []
    for rows in runs:
        acc: dict = {}
        for row in rows:
            acc.setdefault(row["item_id"], []).append(row["fve_nrm"])
        means.append({k: float(np.mean(v)) for k, v in acc.items()})
    ids = list(means[0])
    steps = []
    for a, b in zip(means, means[1:]):
        e = stats.paired_bootstrap_diff([b[i] for i in ids], [a[i] for i in ids], n_boot=max(200, n_perm), seed=seed)
        steps.append({"mean": e.mean, "lo": e.lo, "hi": e.hi, "p": e.p})
    return classify_steps([float(np.mean(list(m.values()))) for m in means], steps)["kind"] != "flat"


def _ladder(seed: int, effect: bool, n_perm: int) -> bool:
    from nlalab.study.recon_controls import ladder_verdict, paired_item_gap

    a, b = simulate_paired(50, seed, diff=0.02 if effect else 0.0)
    g = paired_item_gap(dict(enumerate(a)), dict(enumerate(b)), n_boot=max(200, n_perm), seed=seed)
    return ladder_verdict("rung", g).startswith("evidence")


def _grounding(seed: int, effect: bool, n_perm: int) -> bool:
    from nlalab.study.recon_controls import grounding

    t, f = simulate_paired(50, seed, diff=0.02 if effect else 0.0)
    base = {m: np.zeros(50) for m in ("cos", "fve_nrm", "centered_cos")}
    var = {"true": {m: t for m in base}, "false": {m: f for m in base}}
    return grounding(base, var, max(200, n_perm), seed, np.arange(50))["verdict"].startswith("evidence")


def _prefix(seed: int, effect: bool, n_perm: int) -> bool:
    from nlalab.study.recon_controls import prefix_curve

    full, first = simulate_paired(50, seed, diff=0.02 if effect else 0.0)
    rows = []
    for i in range(50):
        rows.append({"row": i, "n_sentences": 1, "is_full": False, "cos": 0.0, "fve_nrm": float(first[i])})
        rows.append({"row": i, "n_sentences": 2, "is_full": True, "cos": 0.0, "fve_nrm": float(full[i])})
    return prefix_curve(rows, n_boot=max(200, n_perm), seed=seed)["verdict"].startswith("evidence")


def _directions(kind: str) -> Callable[[int, bool, int], bool]:
    def fires(seed: int, effect: bool, n_perm: int) -> bool:
        from nlalab.study.analysis import direction_chance

        cats = SEED_DESIGN.categories
        tops = simulate_direction_tops(4, cats, seed, p_target=0.9 if effect else None, targets=cats)
        ok = sum((t != c) if kind == "neg" else (t == c) for t, c in zip(tops, cats))
        if kind == "neg" and effect:
            ok = 4  # a perfectly negation-symmetric NLA
        return direction_chance(kind, ok, 4, len(cats))["verdict"].startswith("evidence")

    return fires


VERDICTS: list[Verdict] = [
    Verdict("recall_item_specific", "controls.recall_permutation.overall.verdict",
            "Do explanations name the words of their own prompt more than those of other prompts of the same category?",
            "real recall − within-category derangement floor; p over within-category permutations of whole K-sets",
            "category-level vocabulary only (explanations exchangeable within a category)",
            "8% of explanation words from the item's own prompt", "evidence = item-specific keywords; "
            "no evidence = a gap as large as the stated minimum detectable gap would likely (80%) have been found; "
            "a smaller one is not ruled out",
            _recall_within),
    Verdict("recall_item_specific_per_category", "controls.recall_permutation.per_category.<c>.verdict",
            "Same, per category (any category called)", "as above, per category, Holm across categories",
            "as above", "as above", "family-wise: at most α chance that any category is wrongly called",
            _recall_within_cat),
    Verdict("recall_beyond_chance", "controls.recall_permutation.overall.verdict_cross",
            "Do explanations carry any prompt content (category-level included)?",
            "real recall − cross-category derangement floor; p over permutations of all items",
            "no content (random words)", "10% of words from the category vocabulary",
            "evidence here with no within evidence = category-level content only", _recall_cross),
    Verdict("recon_item_specific", "controls.recon_permutation.metrics.fve_nrm.overall.verdict",
            "Is the reconstruction of an activation closer to it than reconstructions of other same-category items?",
            "real fve_nrm − within-category derangement floor (score matrix, no new AR calls)",
            "reconstructions depend on the category only", "item term 0.15 × the item's own deviation",
            "evidence = item-specific reconstruction; no evidence states the minimum detectable gap",
            lambda s, e, n: _recon(s, e, n, False)),
    Verdict("recon_item_specific_per_category", "controls.recon_permutation.verdicts.<c>",
            "Same, per category (any category called)", "as above, Holm across categories", "as above", "as above",
            "family-wise α across categories", lambda s, e, n: _recon(s, e, n, True)),
    Verdict("spread", "spread_test.<metric>.verdict (also compare's spread rows)",
            "Does the metric differ between categories (is fve_nrm 'uniform')?",
            "max − min of category means; p from category labels shuffled over items",
            "equal category means", "one category shifted by 0.08 fve_nrm (item sd 0.05, sample sd 0.05)",
            "no evidence: a difference as large as the stated minimum detectable difference would have been found "
            "with 80% power; smaller ones are not ruled out", _spread),
    Verdict("spread_interval", "spread_test.<metric>.lo / hi",
            "Does the spread interval exclude 0 (non-coverage when the true spread is 0)?",
            "simultaneous Bonferroni-Welch interval over the pairwise differences",
            "equal category means", "as above", "an interval reaching 0 is compatible with uniform categories",
            _spread_interval),
    Verdict("pattern", "compare rows[].pattern",
            "Does a row of `nlalab compare` change across runs (any label other than flat)?",
            "paired bootstrap Δ between consecutive runs over items; Holm across the row's steps",
            "three runs of one pair on one corpus differing only in the seed", "+0.03 fve_nrm per run",
            "a label other than flat names only steps that survive Holm", _pattern),
    Verdict("ladder_gap", "controls.baselines.<rung>.verdict",
            "Does the real pair beat a baseline rung?", "paired bootstrap of real − rung over items; Holm across rungs",
            "rung equal to the real pair", "gap 0.02 (item sd 0.1, noise sd 0.05)",
            "no evidence states the minimum detectable gap", _ladder),
    Verdict("grounding", "controls.grounding.verdict",
            "Does appending the item's true sentence beat a false one from the same category?",
            "paired bootstrap of fve_nrm(true) − fve_nrm(same-category false) over items",
            "no difference", "0.02", "same-category false isolates item-level claims", _grounding),
    Verdict("prefix", "controls.prefix.verdict",
            "Do the sentences after the first change the reconstruction?",
            "paired bootstrap of full − first-sentence fve_nrm over the same explanations",
            "no difference", "0.02", "every point of the curve averages the same explanations", _prefix),
    Verdict("direction_alignment", "controls.directions.alignment.verdict",
            "Do injected category directions make the AV name their category?",
            "k of n directions whose top lexicon category is the target; exact binomial vs chance 1/C",
            "top category uniformly random", "each direction on target with probability 0.9",
            "with 4 directions and 4 categories only 4/4 is evidence (3/4 is p = 0.051)", _directions("self")),
    Verdict("negation_symmetry", "controls.directions.negation_symmetry.verdict",
            "Do negated directions move the AV away from their category?",
            "k of n negated directions whose top is another category; exact binomial vs chance (C−1)/C",
            "top category uniformly random (passes 3 times in 4)", "every negation passes (4/4)",
            "with 4 categories even 4/4 is p = 0.32: this control cannot give evidence at n = 4",
            _directions("neg")),
]


def measure(verdict: Verdict, reps: int, effect: bool = False, n_perm: int = 199, seed0: int = 0) -> dict:
    """Share of ``reps`` simulated studies where the verdict fired, with its Monte-Carlo standard error."""
    fired = sum(bool(verdict.fires(seed0 + r, effect, n_perm)) for r in range(int(reps)))
    rate = fired / int(reps)
    return {"rate": rate, "fired": fired, "reps": int(reps),
            "mc_se": math.sqrt(max(rate * (1 - rate), ALPHA * (1 - ALPHA)) / int(reps))}
