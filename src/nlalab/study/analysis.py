"""Turn the per-sample rows of an ``nlalab run`` into the seed paper's tables (sections 3 and 4).

Pure python/numpy, no model code. :func:`analyze` takes plain dict rows and returns a
JSON-serialisable dict (the content of results.json); :mod:`nlalab.study.report` renders it.

Conventions (all deterministic given ``seed``):

- **Uncertainty.** Every per-category mean carries a 95% percentile interval from the *cluster*
  bootstrap over items (:func:`nlalab.stats.cluster_bootstrap_ci`): the K samples of one item share
  the prompt, the activation and the AV state, so they are not independent draws. Rows whose value is
  ``None`` (recall/hit of a prompt without content words) or NaN are left out of that metric.
- **Permutation floor (seed section 4.1).** The unit that is shuffled is the *item's set of K
  explanations*: a permutation ``p`` gives item ``i`` the explanations of item ``p[i]`` (all K of them),
  so the within-item correlation is kept. "Within" permutes only inside a category, "cross" over all
  items. A floor is the mean over ``n_perm`` random *derangements* (no item keeps its own set: "explanations
  of other items") of the row-weighted mean recall; its interval is the 2.5/97.5 percentile of that
  distribution. ``p`` is :func:`nlalab.stats.permutation_pvalue` (alternative "greater") over full
  permutations (the exchangeability null). Each block carries a per-item gap interval, the minimum
  detectable gap and a ``verdict``; per-category verdicts are Holm-corrected across categories.
  Recall under a permutation is not recomputed from text: a ``[n_items, n_explanations]`` recall
  matrix is built once from content-word sets (a 0/1 matrix product over the prompts' vocabulary) and
  every permutation only indexes it.
- **Stability (seed section 3.4).** within-prompt std = pooled std of the samples around their item
  mean, ``sqrt(mean over items of var(ddof=1))`` (items with < 2 values are skipped; unbiased variance,
  so no shrinkage at small K: a mean of ddof=0 stds is ~0.56x the truth at K=2); cross-prompt std = std
  over items of the item means (ddof=1, the sample std, as used by the power calculation).
- **Spread.** max − min of the category means (None with fewer than two categories), and in
  ``spread_test`` its permutation p (category labels shuffled over items), simultaneous interval and
  verdict (:func:`nlalab.stats.spread_test`).
- **Power.** Minimum detectable difference between two categories
  (:func:`nlalab.stats.min_detectable_difference`, alpha 0.05, power 0.8) at the *smallest* number of
  items per category in this run, with the pooled within-category std (ddof=1) of item means.

One module (~570 lines): the core tables of the seed paper (per-category, spread test, stability,
confabulation, power, flags) and the three row-only controls' entry points share one validated-row pipeline;
the statistics themselves live in nlalab.stats and nlalab.rowstats.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Optional

import numpy as np

from nlalab import stats as S
from nlalab.rowstats import (REQUIRED as _REQUIRED, clean as _clean, collect_perms as _collect_perms,  # noqa: F401
                             dist_est as _dist_est, est as _est, gap_verdict, item_gaps as _item_gaps, matrix_permutation,
                             mean as _mean, num as _num, row_value as _row_value, subseed as _subseed,
                             validate_samples as _validate_samples)
from nlalab.scorers.keyword import recall_matrix, lexicon_hits, load_lexicon, top_category

__all__ = [
    "METRICS",
    "FLAGS",
    "STABILITY_METRICS",
    "DIRECTION_KINDS",
    "analyze",
    "recall_matrix",
    "opening_phrases",
]

#: Per-category metrics: the row value (or derived value) each mean is taken over.
METRICS = ("cos", "fve_nrm", "fve_nrm_seed", "mse_nrm", "recall", "hit", "length_words")
#: Failure flags reported as rates (share of rows where the flag is true).
FLAGS = ("truncated", "missing_close_tag", "empty", "cjk_smell")
STABILITY_METRICS = ("cos", "fve_nrm", "recall")
DIRECTION_KINDS = ("self", "neg", "cross")
POWER_METRICS = ("fve_nrm", "recall")
OVERALL = "OVERALL"
CJK_WARN_RATE = 0.2


# ----------------------------------------------------------------------------- small helpers


def _check_b_rv(b_rv) -> float:
    try:
        b = float(b_rv)
    except (TypeError, ValueError):
        raise ValueError(f"b_rv: expected a positive finite number; found {b_rv!r}") from None
    if not math.isfinite(b) or b <= 0:
        raise ValueError(f"b_rv: expected a positive finite number; found {b_rv!r}")
    return b


# ----------------------------------------------------------------------------- 1. per category


def _per_category(rows, cats, items, n_boot, seed) -> tuple[dict, dict]:
    groups: dict[str, list[int]] = {c: [] for c in cats}
    for j, r in enumerate(rows):
        groups[r["category"]].append(j)
    groups[OVERALL] = list(range(len(rows)))
    keys = list(METRICS) + list(FLAGS)
    out: dict[str, dict] = {}
    for g, idx in groups.items():
        clusters = [str(rows[j]["item_id"]) for j in idx]
        entry: dict[str, Any] = {"n": len(idx), "n_items": len(set(clusters))}
        for m in keys:
            vals = [_row_value(rows[j], m) for j in idx]
            entry[m] = _est(vals, clusters, n_boot, _subseed(seed, "per_category", g, m)) if idx else None
        out[g] = entry
    spread: dict[str, Optional[float]] = {}
    for m in keys:
        means = [out[c][m]["mean"] for c in cats if out[c].get(m)]
        spread[m] = float(max(means) - min(means)) if len(means) >= 2 else None
    return out, spread


def _spread_test(rows, cats, metric, n_perm, n_boot, seed) -> Optional[dict]:
    from nlalab.stats import spread_from_rows

    vals = [{"item_id": r["item_id"], "category": r["category"], metric: _row_value(r, metric)} for r in rows]
    return spread_from_rows(vals, metric, cats, n_perm=n_perm, n_boot=n_boot, seed=_subseed(seed, "spread", metric))


# ----------------------------------------------------------------------------- 2. stability


def _item_values(rows, items, iid, metric) -> list[float]:
    return [v for v in (_row_value(rows[j], metric) for j in items[iid]["rows"]) if v is not None]


def _stability(rows, cats, items) -> dict:
    def block(iids: list[str]) -> dict:
        res = {}
        for m in STABILITY_METRICS:
            per_item = [_item_values(rows, items, i, m) for i in iids]
            within = [float(np.var(v, ddof=1)) for v in per_item if len(v) >= 2]
            means = [float(np.mean(v)) for v in per_item if v]
            w = math.sqrt(float(np.mean(within))) if within else None
            c = float(np.std(means, ddof=1)) if len(means) >= 2 else None
            res[m] = {
                "within": w,
                "cross": c,
                "ratio": (w / c) if (w is not None and c) else None,
                "n_items": len(means),
                "ddof": 1,
            }
        return res

    out = {c: block([i for i, it in items.items() if it["category"] == c]) for c in cats}
    out[OVERALL] = block(list(items))
    return out


# ----------------------------------------------------------------------------- 3. permutation


def _permutation(rows, cats, items, stopwords, n_perm, seed) -> tuple[dict, list[str]]:
    iids = list(items)
    n = len(iids)
    pos = {iid: k for k, iid in enumerate(iids)}
    prompts = [items[i]["prompt"] for i in iids]
    expl = [str(r.get("explanation") or "") for r in rows]
    R, valid = recall_matrix(prompts, expl, stopwords)
    M = np.zeros((len(rows), n))
    for j, r in enumerate(rows):
        M[j, pos[str(r["item_id"])]] = 1.0
    item_cat = np.array([items[i]["category"] for i in iids])
    W = valid.astype(np.float64)[:, None] * M.sum(0)[None, :]
    blocks = matrix_permutation(R @ M, W, item_cat, cats, n_perm, seed, tag="perm")
    warnings: list[str] = []
    overall, per_cat = blocks["overall"], blocks["per_category"]
    # Cross-check the text-level recall against the recall the run stored per row.
    row_recall = _mean(_num(r.get("recall")) for r in rows)
    if overall is not None and row_recall is not None and abs(row_recall - overall["real"]) > 1e-6:
        warnings.append(
            f"permutation: real mean recall recomputed from text ({overall['real']:.4f}) differs from the "
            f"rows' stored recall ({row_recall:.4f}); were the rows scored with other stopwords?"
        )
    res = {
        "unit": "item (its K explanations move together)",
        "n_perm": int(n_perm),
        "n_items": n,
        "overall": overall,
        "per_category": per_cat,
    }
    return res, warnings


# ----------------------------------------------------------------------------- 4. random Gaussian


_WORD_STRIP = "\"'`*_()[]{}<>.,;:!?«»“”‘’-#"


def opening_phrases(explanations: Iterable[str], n_words: int, top: int = 5) -> dict:
    """Most frequent opening phrases (first ``n_words`` lower-cased, punctuation-stripped words).

    Explanations with fewer than ``n_words`` words count with what they have; empty ones are skipped.
    Returns ``{"n", "distinct", "top": [{"phrase", "count", "share"}], "top_share"}``; ties in count are
    broken alphabetically so the output is deterministic.
    """
    phrases = []
    for e in explanations:
        words = [w.strip(_WORD_STRIP).lower() for w in str(e or "").split()]
        words = [w for w in words if w]
        if words:
            phrases.append(" ".join(words[:n_words]))
    n = len(phrases)
    cnt = Counter(phrases)
    ranked = sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    tops = [{"phrase": p, "count": c, "share": c / n} for p, c in ranked]
    return {"n": n, "distinct": len(cnt), "top": tops, "top_share": tops[0]["share"] if tops else None}


def _random_gaussian(random_rows, per_cat, real_rows, n_boot, seed) -> tuple[dict, list[str]]:
    vids = [r.get("vector_index") for r in random_rows]
    repeated = any(v is not None for v in vids) and len(set(vids)) < len(vids)
    clusters = [str(v) for v in vids] if repeated else None
    metrics: dict[str, Any] = {}
    for m in ("cos", "fve_nrm", "fve_nrm_seed", "mse_nrm", "recall", "hit"):
        vals = [_num(r.get(m)) for r in random_rows]
        metrics[m] = _est(vals, clusters, n_boot, _subseed(seed, "random", m))
    comparison = []
    for m in ("cos", "fve_nrm", "fve_nrm_seed", "recall"):
        real = per_cat[OVERALL].get(m)
        rnd = metrics.get(m)
        comparison.append(
            {
                "metric": m,
                "real": real,
                "random": rnd,
                "diff": (real["mean"] - rnd["mean"]) if (real and rnd) else None,
            }
        )
    real_expl = [r.get("explanation") for r in real_rows]
    rand_expl = [r.get("explanation") for r in random_rows]
    fmt = {
        side: {"first3": opening_phrases(ex, 3), "first5": opening_phrases(ex, 5)}
        for side, ex in (("real", real_expl), ("random", rand_expl))
    }
    out = {
        "n": len(random_rows),
        "n_vectors": len({v for v in vids if v is not None}) or len(random_rows),
        "ci_method": "cluster bootstrap over vector_index" if repeated else "bootstrap over rows",
        "metrics": metrics,
        "comparison": comparison,
        "format_templates": fmt,
        "flags": _flag_counts(random_rows, "random-Gaussian control"),
    }
    out["verdict"] = random_gaussian_verdict(metrics)
    return out, list(out["flags"]["warnings"])


def random_gaussian_verdict(metrics: dict) -> str:
    """The random-Gaussian control in words, quoting ``fve_nrm_seed`` (the seed's −0.949 is that metric):
    ``fve_nrm`` of an unrelated unit vector sits near 1 − 2/B_rv by construction and says little."""
    parts = []
    for m in ("fve_nrm_seed", "cos", "fve_nrm"):
        e = metrics.get(m)
        if e:
            parts.append(f"{m} {e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]")
    if not parts:
        return "random-Gaussian control: no scores"
    return ("random-Gaussian inputs reconstruct to " + ", ".join(parts)
            + " (fve_nrm of a random direction is ≈ 1 − 2/B_rv by construction; compare fve_nrm_seed)")


# ----------------------------------------------------------------------------- 5. directions


def _directions(direction_rows, cats, lexicon) -> tuple[dict, list[str]]:
    known = set(cats)
    lex_cats = list(lexicon)
    groups: dict[str, dict] = {}
    for i, r in enumerate(direction_rows):
        if not isinstance(r, dict):
            raise ValueError(f"direction_rows[{i}]: expected a dict row; found {type(r).__name__}")
        for k in ("direction", "kind", "category", "explanation"):
            if k not in r:
                raise ValueError(f"direction_rows[{i}]: missing key {k!r}; keys found: {sorted(r)}")
        kind, cat, name = r["kind"], r["category"], str(r["direction"])
        if kind not in DIRECTION_KINDS:
            raise ValueError(f"direction_rows[{i}] ({name}): kind {kind!r}; expected one of {DIRECTION_KINDS}")
        if cat not in known:
            raise ValueError(f"direction_rows[{i}] ({name}): unknown category {cat!r}; expected one of {cats}")
        g = groups.setdefault(name, {"kind": kind, "category": cat, "rows": []})
        if g["kind"] != kind or g["category"] != cat:
            raise ValueError(
                f"direction_rows[{i}]: direction {name!r} appears with kind/category {kind!r}/{cat!r} "
                f"and {g['kind']!r}/{g['category']!r}"
            )
        g["rows"].append(r)
    warnings = []
    missing = [c for c in cats if c not in lexicon]
    if missing:
        warnings.append(
            f"directions: the lexicon has no word list for {missing}; a direction pointing there can never "
            "be called correct"
        )
    table = []
    for name, g in groups.items():
        hits = [lexicon_hits(str(r.get("explanation") or ""), lexicon) for r in g["rows"]]
        mean_hits = {c: float(np.mean([h[c] for h in hits])) for c in lex_cats}
        top = top_category(mean_hits)
        if g["kind"] == "neg":
            ok = top is not None and top != g["category"]
        else:
            ok = top == g["category"]
        entry = {
            "direction": name,
            "kind": g["kind"],
            "category": g["category"],
            "n": len(g["rows"]),
            "mean_hits": mean_hits,
            "top": top,
            "ok": bool(ok),
        }
        for m in ("cos", "fve_nrm"):
            vals = [_num(r.get(m)) for r in g["rows"] if m in r]
            entry[m] = _mean(vals) if vals else None
        table.append(entry)

    n_lex = max(1, len(lex_cats))

    def kn(kind: str) -> dict:
        sel = [e for e in table if e["kind"] == kind]
        k = sum(e["ok"] for e in sel)
        out = {"k": k, "n": len(sel), "text": f"{k}/{len(sel)}", "directions": [e["direction"] for e in sel]}
        out.update(direction_chance(kind, k, len(sel), n_lex))
        return out

    out = {
        "lexicon_categories": lex_cats,
        "rows": table,
        "alignment": kn("self"),
        "negation_symmetry": kn("neg"),
        "cross": kn("cross"),
        "rule": (
            "top = category with the most mean lexicon hits (None on a tie or all zero); self/cross are "
            "correct when top == intended category, neg when top is not None and differs from c"
        ),
        "flags": _flag_counts(direction_rows, "direction-injection control"),
    }
    return out, warnings + list(out["flags"]["warnings"])


def direction_chance(kind: str, k: int, n: int, n_categories: int, alpha: float = 0.05) -> dict:
    """k of n directions correct against the rate a top category picked at random would reach.

    A self/cross direction is correct by chance with rate 1/C (C lexicon categories); a negated one
    passes whenever its top is any *other* category, so its chance rate is (C−1)/C: 3 of 4 with the
    seed's four categories, and 4/4 negations is then p = 0.75^4 = 0.32, no evidence at all.
    ``p`` is the exact binomial tail P(X ≥ k).
    """
    rate = (n_categories - 1) / n_categories if kind == "neg" else 1.0 / n_categories
    if n == 0:
        return {"chance": rate, "chance_k": None, "p": None, "verdict": "not run"}
    p = S.binomial_tail(int(k), int(n), rate)
    what = {"self": "alignment with the injected category", "neg": "negation symmetry",
            "cross": "cross-category alignment"}.get(kind, kind)
    head = f"{k}/{n} vs {rate * n:.1f}/{n} expected by chance (rate {rate:.2f}, binomial p={p:.3g})"
    if p <= alpha:
        verdict = f"evidence of {what}: {head}"
    else:
        need = next((j for j in range(n + 1) if S.binomial_tail(j, n, rate) <= alpha), None)
        lim = (f"{need}/{n} would be needed" if need is not None
               else f"no count out of {n} could reach p ≤ {alpha:g}: add directions or categories")
        verdict = f"no evidence of {what} at this n: {head}; {lim}"
    return {"chance": rate, "chance_k": rate * n, "p": p, "alpha": alpha, "verdict": verdict}


# ----------------------------------------------------------------------------- 6. confabulation


def _confabulation(rows, cats, q, max_recall, per_category) -> dict:
    fves = np.array([v for v in (_num(r.get("fve_nrm")) for r in rows) if v is not None])
    if fves.size == 0:
        return {"fve_threshold": None, "quantile": q, "max_recall": max_recall, "n_candidates": 0,
                "per_category": {c: [] for c in cats}}
    thr = float(np.quantile(fves, q))
    cands = []
    for r in rows:
        f, rec = _num(r.get("fve_nrm")), _num(r.get("recall"))
        if f is None or rec is None or f < thr or rec > max_recall:
            continue
        cands.append(r)
    out = {}
    for c in cats:
        sel = [r for r in cands if r["category"] == c]
        sel.sort(key=lambda r: (-float(r["fve_nrm"]), str(r["item_id"]), int(r["sample"])))
        out[c] = [
            {
                "item_id": str(r["item_id"]),
                "sample": int(r["sample"]),
                "category": c,
                "prompt": r["prompt"],
                "explanation": r.get("explanation"),
                "fve_nrm": _num(r.get("fve_nrm")),
                "cos": _num(r.get("cos")),
                "recall": _num(r.get("recall")),
            }
            for r in sel[:per_category]
        ]
    return {"fve_threshold": thr, "quantile": q, "max_recall": max_recall, "n_candidates": len(cands),
            "per_category": out}


# ----------------------------------------------------------------------------- 7. power


def _power(rows, cats, items, spread, alpha=0.05, power=0.8) -> dict:
    n_items = {c: sum(1 for it in items.values() if it["category"] == c) for c in cats}
    present = [n for n in n_items.values() if n > 0]
    n_min = min(present) if present else 0
    res: dict[str, Any] = {"alpha": alpha, "power": power, "n_per_group": n_min,
                           "n_items_per_category": n_items, "metrics": {}}
    for m in POWER_METRICS:
        ss, dof = 0.0, 0
        for c in cats:
            means = [float(np.mean(v)) for v in (_item_values(rows, items, i, m)
                     for i, it in items.items() if it["category"] == c) if v]
            if len(means) >= 2:
                ss += float(np.var(means, ddof=1)) * (len(means) - 1)
                dof += len(means) - 1
        if dof == 0 or n_min < 1:
            res["metrics"][m] = {"pooled_std": None, "mdd": None, "observed_spread": spread.get(m),
                                 "spread_exceeds_mdd": None}
            continue
        sd = math.sqrt(ss / dof)
        mdd = S.min_detectable_difference(sd, n_min, alpha=alpha, power=power)
        sp = spread.get(m)
        res["metrics"][m] = {"pooled_std": sd, "mdd": mdd, "observed_spread": sp,
                             "spread_exceeds_mdd": (sp > mdd) if sp is not None else None}
    return res


# ----------------------------------------------------------------------------- 8. flags


def flag_counts(rows, what: str = "samples") -> dict:
    """Failure-flag counts and rates of ``rows`` (with the CJK warning)."""
    return _flag_counts(rows, what)


def _flag_counts(rows, what: str = "samples") -> dict:
    n = len(rows)
    counts = {f: int(sum(bool(r.get(f)) for r in rows)) for f in FLAGS}
    rates = {f: (counts[f] / n if n else None) for f in FLAGS}
    warnings = []
    if n and rates["cjk_smell"] > CJK_WARN_RATE:
        warnings.append(
            f"{what}: cjk_smell rate {rates['cjk_smell']:.2f} > {CJK_WARN_RATE}: the AV mostly wrote "
            "CJK-looking text, so the activation injection likely failed (check the injection character, "
            "its token id and the injection scale)"
        )
    return {"n": n, "counts": counts, "rates": rates, "warnings": warnings,
            "warning": "; ".join(warnings) if warnings else None}


# ----------------------------------------------------------------------------- public entry point


def analyze(
    samples: list[dict],
    *,
    categories: list[str],
    b_rv: float,
    b_rv_source: str,
    stopwords: Optional[Iterable[str]] = None,
    n_perm: int = 1000,
    n_boot: int = 2000,
    seed: int = 42,
    confab_fve_quantile: float = 0.5,
    confab_max_recall: float = 0.1,
    confab_per_category: int = 3,
) -> dict:
    """All tables of the seed paper (sections 3-4) from the rows of one run; JSON-serialisable.

    Top-level keys: ``b_rv``, ``b_rv_source``, ``n_samples``, ``n_items``, ``k``, ``categories``,
    ``settings``, ``per_category``, ``spread``, ``spread_test``, ``stability``, ``confabulation``, ``power``, ``flags``,
    ``warnings``. The controls' sections come from :func:`recall_permutation`,
    :func:`random_gaussian_section` and :func:`directions_section` (called by the control plug-ins). See the module docstring for the statistical conventions.

    Raises ValueError on empty ``samples``, a row whose category is not in ``categories``, missing
    keys, duplicate (item_id, sample) rows, or an item with inconsistent category/prompt.
    """
    rows, cats, items = _validate_samples(samples, categories)
    b = _check_b_rv(b_rv)
    if int(n_perm) < 1 or int(n_boot) < 1:
        raise ValueError(f"n_perm and n_boot must be >= 1; found {n_perm}, {n_boot}")
    if not 0.0 <= float(confab_fve_quantile) <= 1.0:
        raise ValueError(f"confab_fve_quantile: expected a value in [0, 1]; found {confab_fve_quantile}")
    warnings: list[str] = []
    empty_cats = [c for c in cats if not any(it["category"] == c for it in items.values())]
    if empty_cats:
        warnings.append(f"categories without rows: {empty_cats}")

    per_cat, spread = _per_category(rows, cats, items, int(n_boot), seed)

    flags = _flag_counts(rows)
    warnings = flags["warnings"] + warnings
    results = {
        "b_rv": b,
        "b_rv_source": str(b_rv_source),
        "n_samples": len(rows),
        "n_items": len(items),
        "k": max(int(r["sample"]) for r in rows) + 1,
        "categories": cats,
        "settings": {
            "seed": seed,
            "n_perm": int(n_perm),
            "n_boot": int(n_boot),
            "ci": "95% percentile, cluster bootstrap over item_id",
            "confab_fve_quantile": confab_fve_quantile,
            "confab_max_recall": confab_max_recall,
            "confab_per_category": confab_per_category,
            "stopwords": "shipped" if stopwords is None else "custom",
        },
        "per_category": per_cat,
        "spread": spread,
        "spread_test": {m: _spread_test(rows, cats, m, int(n_perm), int(n_boot), seed) for m in ("fve_nrm", "recall")},
        "stability": _stability(rows, cats, items),
        "confabulation": _confabulation(rows, cats, float(confab_fve_quantile), float(confab_max_recall),
                                        int(confab_per_category)),
        "power": _power(rows, cats, items, spread),
        "flags": flags,
        "warnings": warnings,
    }
    return _clean(results)


# ----------------------------------------------------------------------------- entry points of the controls


def recall_permutation(samples: list[dict], *, categories: list[str], n_perm: int = 1000, seed: int = 42,
                       stopwords: Optional[Iterable[str]] = None) -> dict:
    """The keyword-recall permutation control's section (seed §4.1); ``warnings`` inside."""
    rows, cats, items = _validate_samples(samples, categories)
    if int(n_perm) < 1:
        raise ValueError(f"n_perm must be >= 1; found {n_perm}")
    perm, w = _permutation(rows, cats, items, stopwords, int(n_perm), seed)
    perm["warnings"] = w
    return _clean(perm)


def random_gaussian_section(random_rows: list[dict], samples: list[dict], *, categories: list[str],
                            n_boot: int = 2000, seed: int = 42, per_category: Optional[dict] = None) -> dict:
    """The random-Gaussian control's section (seed §4.2) against the real rows' overall means."""
    rows, cats, items = _validate_samples(samples, categories)
    if per_category is None:
        per_category, _ = _per_category(rows, cats, items, int(n_boot), seed)
    rg, w = _random_gaussian(list(random_rows), per_category, rows, int(n_boot), seed)
    rg["warnings"] = w
    return _clean(rg)


def directions_section(direction_rows: list[dict], *, categories: list[str],
                       lexicon: Optional[dict[str, list[str]]] = None) -> dict:
    """The direction-injection control's section (seed §4.3)."""
    dirs, w = _directions(list(direction_rows), list(categories), lexicon if lexicon is not None else load_lexicon())
    dirs["warnings"] = w
    return _clean(dirs)


def analyze_rows(samples: list[dict], *, categories: list[str], b_rv: float, b_rv_source: str,
                 random_rows: Optional[list[dict]] = None, direction_rows: Optional[list[dict]] = None,
                 lexicon: Optional[dict[str, list[str]]] = None, n_perm: int = 1000, n_boot: int = 2000,
                 seed: int = 42, **kw) -> dict:
    """:func:`analyze` plus the controls that need only rows (recall permutation, random Gaussian,
    directions) under ``controls``, in the layout of results.json: the study's tables from rows made
    elsewhere, with no model."""
    res = analyze(samples, categories=categories, b_rv=b_rv, b_rv_source=b_rv_source, n_perm=n_perm,
                  n_boot=n_boot, seed=seed, **kw)
    ctl = {"recall_permutation": recall_permutation(samples, categories=categories, n_perm=n_perm, seed=seed,
                                                    stopwords=kw.get("stopwords")),
           "random_gaussian": None, "directions": None}
    if random_rows:
        ctl["random_gaussian"] = random_gaussian_section(random_rows, samples, categories=categories, n_boot=n_boot,
                                                         seed=seed, per_category=res["per_category"])
    if direction_rows:
        ctl["directions"] = directions_section(direction_rows, categories=categories, lexicon=lexicon)
    for sec in ctl.values():
        if sec:
            res["warnings"] += [w for w in sec.get("warnings") or [] if w not in res["warnings"]]
    res["controls"] = ctl
    return res
