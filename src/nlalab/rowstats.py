"""Row-level statistics shared by the study's analysis and the content scorers: validated sample rows,
cluster-bootstrap estimates, JSON-safe numbers, derived seeds, and the permutation floors of any
[items, explanation sets] score matrix (derangement floors, permutation p-values, per-category Holm).

Pure numpy over plain dict rows, below both ``nlalab.study`` and ``nlalab.scorers``: a scorer added to a
finished run gets exactly the estimator the study's own tables use.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Iterable, Optional

import numpy as np

from nlalab import stats as S

OVERALL = "OVERALL"
REQUIRED = ("item_id", "category", "prompt", "sample", "explanation")


def subseed(seed: int, *parts: object) -> int:
    """A stable derived seed (independent of PYTHONHASHSEED) for one named sub-analysis."""
    words = [int(seed) % (2**32)] + [zlib.crc32(str(p).encode("utf-8")) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def num(v: Any) -> Optional[float]:
    """Row value -> float, or None for missing/None/NaN/inf (left out of means)."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, bool or None; found {v!r}") from None
    return f if math.isfinite(f) else None


def row_value(row: dict, metric: str) -> Optional[float]:
    if metric == "length_words":
        return float(len(str(row.get("explanation") or "").split()))
    return num(row.get(metric))


def est(values: list, clusters: Optional[list], n_boot: int, seed: int) -> Optional[dict]:
    """Cluster (or plain, when ``clusters`` is None) bootstrap Estimate dict; None if no values."""
    keep = [i for i, v in enumerate(values) if v is not None]
    if not keep:
        return None
    vals = np.array([values[i] for i in keep], dtype=np.float64)
    if clusters is None:
        e = S.bootstrap_ci(vals, n_boot=n_boot, seed=seed)
    else:
        e = S.cluster_bootstrap_ci(vals, [clusters[i] for i in keep], n_boot=n_boot, seed=seed)
    return e.to_dict()


def dist_est(null: np.ndarray) -> dict:
    """Mean of a permutation distribution with its 2.5/97.5 percentiles."""
    lo, hi = np.quantile(null, [0.025, 0.975])
    return {"mean": float(null.mean()), "lo": float(lo), "hi": float(hi), "n": int(null.size)}


def clean(x: Any) -> Any:
    """Recursively convert to JSON-safe python types; non-finite floats become None."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.ndarray):
        return clean(x.tolist())
    return x


def mean(vals: Iterable[Optional[float]]) -> Optional[float]:
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else None


# ----------------------------------------------------------------------------- validation


def validate_samples(samples, categories) -> tuple[list[dict], list[str], dict[str, dict]]:
    if samples is None or len(samples) == 0:
        raise ValueError(
            "samples is empty: there are no explanation rows to analyse. Fix: check that `nlalab run` "
            "captured and verbalized at least one corpus item."
        )
    cats = list(categories or [])
    if not cats:
        raise ValueError("categories is empty; expected the corpus categories in corpus order")
    if len(set(cats)) != len(cats):
        dup = sorted({c for c in cats if cats.count(c) > 1})
        raise ValueError(f"categories has duplicates {dup}; expected each category once")
    known = set(cats)
    rows: list[dict] = []
    items: dict[str, dict] = {}
    seen: set[tuple[str, int]] = set()
    for i, r in enumerate(samples):
        if not isinstance(r, dict):
            raise ValueError(f"samples[{i}]: expected a dict row; found {type(r).__name__}")
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"samples[{i}]: missing key(s) {missing}; keys found: {sorted(r)}")
        cat = r["category"]
        if cat not in known:
            raise ValueError(
                f"samples[{i}] (item {r['item_id']!r}): unknown category {cat!r}; expected one of {cats}"
            )
        try:
            k = int(r["sample"])
        except (TypeError, ValueError):
            raise ValueError(f"samples[{i}]: 'sample' must be an int >= 0; found {r['sample']!r}") from None
        if k < 0 or k != r["sample"]:
            raise ValueError(f"samples[{i}]: 'sample' must be an int >= 0; found {r['sample']!r}")
        iid = str(r["item_id"])
        if (iid, k) in seen:
            raise ValueError(f"samples[{i}]: duplicate row for item {iid!r} sample {k}")
        seen.add((iid, k))
        it = items.get(iid)
        if it is None:
            items[iid] = {"category": cat, "prompt": r["prompt"], "rows": []}
            it = items[iid]
        elif it["category"] != cat or it["prompt"] != r["prompt"]:
            raise ValueError(
                f"samples[{i}]: item {iid!r} appears with a different category or prompt than in an "
                "earlier row; every row of one item must carry the same category and prompt"
            )
        rows.append(r)
        it["rows"].append(len(rows) - 1)
    for it in items.values():
        it["rows"].sort(key=lambda j: int(rows[j]["sample"]))
    return rows, cats, items


def collect_perms(n: int, n_perm: int, seed: int, groups) -> np.ndarray:
    perms: list[np.ndarray] = []

    def grab(p: np.ndarray) -> float:
        perms.append(np.asarray(p))
        return 0.0

    S.permutation_test(grab, n, n_perm=n_perm, seed=seed, groups=groups)
    return np.stack(perms)


def item_gaps(S_sum: np.ndarray, W_sum: np.ndarray, mask: np.ndarray,
               same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item i (in ``mask``): own score minus the mean score of the *other* items' sets that ``same``
    allows (``same[i, j]``), and the weight W[i, i]; items with no own or no other score are dropped."""
    n = S_sum.shape[0]
    ar = np.arange(n)
    other = same & ~np.eye(n, dtype=bool)
    own_w = W_sum[ar, ar]
    oth_w = (W_sum * other).sum(1)
    keep = (mask > 0) & (own_w > 0) & (oth_w > 0)
    own = S_sum[ar, ar] / np.where(own_w > 0, own_w, 1.0)
    oth = (S_sum * other).sum(1) / np.where(oth_w > 0, oth_w, 1.0)
    return (own - oth)[keep], own_w[keep]


def gap_verdict(gap: float, ci: Optional[dict], p: float, p_adj: Optional[float], n_perm: int, mdd: Optional[float],
                alpha: float, family: str, what: str = "item-specific content", floor: str = "within-category") -> str:
    """The one sentence a researcher may cite: evidence (gap, CI, p) or no evidence at this n (MDD).

    ``p_adj`` is the family-corrected p (Holm) that decides; ``p`` is shown beside it. Absence of a
    significant gap is never worded as absence of the effect: the minimum detectable gap says how
    large an effect this design would have caught with 80% power.
    """
    ci_txt = f" [{ci['lo']:+.3f}, {ci['hi']:+.3f}]" if ci else ""
    p_dec = p if p_adj is None else p_adj
    p_txt = S.format_p(p, n_perm) + ("" if p_adj is None else f", Holm-adjusted {S.format_p(p_adj, n_perm)} {family}")
    if p_dec <= alpha:
        return f"evidence of {what} (gap {gap:+.3f}{ci_txt} above the {floor} floor, {p_txt})"
    mdd_txt = f"minimum detectable gap {mdd:.3f}" if mdd is not None else "minimum detectable gap n/a"
    return f"no evidence of {what} at this n (gap {gap:+.3f}{ci_txt}, {p_txt}; {mdd_txt})"


def matrix_permutation(S_sum: np.ndarray, W_sum: np.ndarray, item_cat: np.ndarray, cats: list[str], n_perm: int,
                       seed: int, tag: str = "perm", alternative: str = "greater", alpha: float = 0.05,
                       what: str = "item-specific content") -> dict:
    """Real score vs within- and cross-category floors, from one score matrix.

    ``S_sum[i, j]`` is the summed score of item j's explanation set (its K rows) against item i's
    reference (prompt for recall and content scorers, activation for reconstruction); ``W_sum[i, j]``
    how many of those scores are defined. A permutation P gives set P[i] to item i; sets move whole,
    within category for the within floor and over all items for the cross floor. Every content
    scorer and the reconstruction control use this one estimator.

    Floors (mean, 2.5/97.5 percentiles) are over random *derangements*: no item keeps its own set, so a
    floor is what explanations of other items score. p-values use full permutations (the exchangeability
    null, whose set contains the observed arrangement). Each block also carries a per-item gap interval
    (cluster bootstrap over items of own minus mean-of-others), the minimum detectable gap (80% power,
    one-sided), Holm-adjusted within p across categories, and a ``verdict`` sentence.
    """
    n = S_sum.shape[0]
    ar = np.arange(n)
    item_cat = np.asarray(item_cat)

    def stat(P: np.ndarray, mask: np.ndarray) -> np.ndarray:
        num = (S_sum[ar[None, :], P] * mask).sum(1)
        den = (W_sum[ar[None, :], P] * mask).sum(1)
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    ident = ar[None, :]
    P_within = collect_perms(n, n_perm, subseed(seed, tag, "within"), list(item_cat))
    P_cross = collect_perms(n, n_perm, subseed(seed, tag, "cross"), None)
    D_within = S.random_derangements(list(item_cat), n_perm, subseed(seed, tag, "within-derange"))
    D_cross = S.random_derangements([0] * n, n_perm, subseed(seed, tag, "cross-derange"))
    own = W_sum[ar, ar]
    same_cat = item_cat[:, None] == item_cat[None, :]
    cat_size = same_cat.sum(1)
    everyone = np.ones((n, n), dtype=bool)

    def floor_block(mask, m_family: int) -> Optional[dict]:
        real = float(stat(ident, mask)[0])
        if not math.isfinite(real):
            return None
        # Derangement floors: items alone in their category have no other item, so leave them out.
        wmask = mask * (cat_size >= 2)
        nw, nc = stat(P_within, mask), stat(P_cross, mask)
        fw_d, fc_d = stat(D_within, wmask), stat(D_cross, mask)
        nw, nc = nw[np.isfinite(nw)], nc[np.isfinite(nc)]
        fw_d, fc_d = fw_d[np.isfinite(fw_d)], fc_d[np.isfinite(fc_d)]
        if nw.size == 0 or nc.size == 0 or fc_d.size == 0:
            return None
        real_w = float(stat(ident, wmask)[0]) if wmask.sum() > 0 else float("nan")
        fw = dist_est(fw_d) if fw_d.size else None
        fc = dist_est(fc_d)
        gap_w = (real_w - fw["mean"]) if fw else None
        out = {
            "real": real,
            "n_rows": int((own * mask).sum()),
            "n_items": int(((own > 0) * mask).sum()),
            "floor_within": fw,
            "floor_cross": fc,
            "floor_kind": "derangements (no item keeps its own explanations)",
            "gap_within": gap_w,
            "gap_cross": real - fc["mean"],
            "p_within": S.permutation_pvalue(real, nw, alternative=alternative),
            "p_cross": S.permutation_pvalue(real, nc, alternative=alternative),
            "p_kind": f"full permutations ({alternative}); smallest possible p = 1/(n_perm+1)",
        }
        for key, same in (("within", same_cat), ("cross", everyone)):
            d, w = item_gaps(S_sum, W_sum, mask, same)
            if d.size >= 2:
                e = S.weighted_bootstrap_ci(d, w, n_boot=2000, seed=subseed(seed, tag, key, "gap-ci"))
                sd = float(np.std(d, ddof=1))
                out[f"gap_{key}_ci"] = {"mean": e.mean, "lo": e.lo, "hi": e.hi, "n": e.n,
                                        "method": "bootstrap over items of own score minus mean of other items'"}
                a_mdd = alpha / max(1, m_family)
                out[f"mdd_{key}"] = S.min_detectable_shift(sd, int(d.size), alpha=a_mdd, power=0.8)
            else:
                out[f"gap_{key}_ci"] = None
                out[f"mdd_{key}"] = None
        return out

    overall = floor_block(np.ones(n), 1)
    per_cat = {c: floor_block((item_cat == c).astype(np.float64), len(cats)) for c in cats}
    adj = S.holm([(b or {}).get("p_within") if (b and b.get("gap_within") is not None) else None
                  for b in per_cat.values()])
    fam = f"over {sum(a is not None for a in adj)} categories"
    for (c, b), pa in zip(per_cat.items(), adj):
        if b is None:
            continue
        b["p_within_holm"] = pa
        b["alpha"] = alpha
        b["verdict"] = ("a single item: no other item in its category to compare with" if b["gap_within"] is None
                        else gap_verdict(b["gap_within"], b["gap_within_ci"], b["p_within"], pa, n_perm,
                                         b["mdd_within"], alpha, fam, what))
    if overall is not None:
        overall["alpha"] = alpha
        overall["verdict"] = ("no category has two items: no within-category floor" if overall["gap_within"] is None
                              else gap_verdict(overall["gap_within"], overall["gap_within_ci"], overall["p_within"],
                                               None, n_perm, overall["mdd_within"], alpha, "", what))
        overall["verdict_cross"] = gap_verdict(overall["gap_cross"], overall["gap_cross_ci"], overall["p_cross"], None,
                                               n_perm, overall["mdd_cross"], alpha, "", "content beyond chance",
                                               "cross-category")
    return {"overall": overall, "per_category": per_cat,
            "correction": "Holm across categories for the per-category within verdicts", "alpha": alpha}
