"""``nlalab compare RUN_DIR...``: the seed's scaling table (section 3.2) for any number of runs.

:func:`compare_runs` reads finished run directories (in the order given: that order is the trajectory)
and returns a JSON-serialisable dict; :func:`to_markdown`, :func:`to_csv`, :func:`to_terminal` and
:func:`to_json` render it.

Rows (each cell: mean, 95% interval and n where the quantity is a mean):

- overall ``fve_nrm`` (B_rv denominator), ``fve_nrm_seed`` (per-vector-variance denominator), ``cos``;
- ``fve_nrm`` spread and recall spread (max − min over category means), with a 95% interval from a
  bootstrap that resamples items inside each category (stratified cluster bootstrap);
- overall keyword recall and hit rate;
- permutation floors (within, cross: mean of the permutation distribution [2.5%, 97.5%]) and the gaps
  above them (real − floor) with their permutation p-values: the uncertainty of a gap *is* its null
  distribution, so gaps carry p, not a bootstrap interval;
- random-Gaussian ``cos``, ``fve_nrm`` and ``fve_nrm_seed``;
- per-category recall;
- direction-injection alignment (self) and negation symmetry as k/n;
- for every scorer added to *all* runs with ``nlalab score``: its overall means and gaps above its floors;
- Δ rows: differences between consecutive runs (later − earlier) of fve_nrm, fve_nrm_seed, cos and recall.

**Pairing.** Runs whose config.json carries the same corpus sha256 evaluated the same prompts, so
consecutive runs are paired by ``item_id``: the K samples of an item are averaged to one item-level value
per run and :func:`nlalab.stats.paired_bootstrap_diff` gives the interval and p-value of the mean
difference over the items both runs scored. When the corpora differ (or a digest is missing) the
difference is unpaired (items of each run resampled independently) and a warning says so, in the
returned dict (``warnings``) and in every rendering: such a difference mixes the effect of the model with
the effect of the prompts.

**Pattern column**: ``compare_runs`` labels a row from its *tested* steps (``PATTERN_RULES``,
:mod:`nlalab.report.pattern`): a step counts only when its Δ is significant after Holm across the row's
steps, so runs that differ only in the seed are "flat" except at the α rate. The descriptive rule
below (point estimates, ``tol`` default 0.02, step tolerance ``eps = tol / 4``) is what
:func:`classify_pattern` does without ``steps``; rules tried in this order:

1. ``n/a`` if a value is missing; ``single run`` if m = 1;
2. ``flat`` if max − min ≤ tol (all runs within the tolerance);
3. step signs: s_i = sign(v_{i+1} − v_i), or 0 when |v_{i+1} − v_i| ≤ eps;
4. ``saturating up/down`` if m ≥ 3, all steps but the last have the same nonzero sign σ, the last step has
   sign σ or 0, and |last step| < 1/3 × |previous step|;
5. ``monotonic up`` if no step is negative, ``monotonic down`` if no step is positive;
6. with one change of direction: ``peak at <run>`` (up, then down; the run with the maximum) or
   ``dip at <run>`` (down, then up; the minimum); with more changes ``non-monotonic (max at <run>, min at <run>)``.

On the seed's numbers these rules give its own column: overall fve_nrm 0.880 → 0.992 → 0.982 "peak at
V2"; recall spread 0.490 → 0.649 → 0.654 "saturating up"; overall recall 0.336 → 0.420 → 0.474
"monotonic up"; fve_nrm spread 0.017 → 0.005 → 0.010 "flat".

One module (~610 lines): the comparison's rows, its comparability checks and its four renderings (terminal,
Markdown, CSV, JSON) are one data structure read in several ways; the statistics of the Pattern column live in
nlalab.report.pattern.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from nlalab import stats as ST
from nlalab.report import pattern as PT
from nlalab.rundir.load import Run, item_means, load_runs
from nlalab.errors import UsageError
from nlalab.format import Table, fmt_num, fmt_p
from nlalab.study.sections import FVE_DENOMINATORS

__all__ = [
    "compare_runs",
    "classify_pattern",
    "to_markdown",
    "to_csv",
    "to_terminal",
    "to_json",
    "DEFAULT_TOL",
    "SATURATION_RATIO",
    "PATTERN_RULES",
    "DIFF_METRICS",
]

DEFAULT_TOL = 0.02
STEP_EPS_FRACTION = 0.25
SATURATION_RATIO = 1.0 / 3.0
DIFF_METRICS = ("fve_nrm", "fve_nrm_seed", "cos", "recall")
OVERALL = "OVERALL"

PATTERN_RULES = [
    "n/a when a run lacks the value or a step has no interval; 'single run' with one run",
    "a step (Δ between consecutive runs) counts only when significant at alpha 0.05 after Holm across the "
    "row's steps: paired bootstrap over items for fve_nrm, fve_nrm_seed, cos, recall; otherwise an unpaired "
    "normal approximation from the two runs' intervals",
    "flat: no step counts",
    "saturating up/down: ≥ 3 runs, all steps but the last count in one direction, the last does not",
    "monotonic up/down: the counted steps all go one way",
    "peak at / dip at <run>: one change of direction (the run with the max / min); more changes: non-monotonic",
]


# ----------------------------------------------------------------------------- patterns


def classify_pattern(values: Sequence[Optional[float]], names: Optional[Sequence[str]] = None,
                     tol: float = DEFAULT_TOL, eps: Optional[float] = None,
                     steps: Optional[Sequence[Optional[dict]]] = None, alpha: float = 0.05) -> dict:
    """Classify a trajectory. With ``steps`` (the Δ between consecutive runs with a p or an interval),
    a step counts only when it is significant after Holm across the row's steps
    (:func:`nlalab.report.pattern.classify_steps`): this is what ``compare_runs`` uses. Without
    ``steps``, the descriptive point-estimate rule of the module docstring (shape only, no test; three
    runs differing only in the seed can show a "trend" under it). Returns ``{"kind", "text", "at"}``;
    ``kind`` is one of ``na``, ``single``, ``flat``, ``saturating_up``, ``saturating_down``,
    ``monotonic_up``, ``monotonic_down``, ``peak``, ``dip``, ``non_monotonic``."""
    if steps is not None:
        return PT.classify_steps(values, steps, names, alpha=alpha)
    names = list(names) if names is not None else [f"run {i + 1}" for i in range(len(values))]
    eps = tol * STEP_EPS_FRACTION if eps is None else float(eps)
    trivial = PT.trivial_pattern(values, names)
    if trivial is not None:
        return trivial
    v = [float(x) for x in values]
    m = len(v)
    rng = max(v) - min(v)
    if rng <= tol:
        return {"kind": "flat", "text": f"flat (range {rng:.3f} ≤ {tol:g})", "at": None}
    d = [v[i + 1] - v[i] for i in range(m - 1)]
    s = [0 if abs(x) <= eps else (1 if x > 0 else -1) for x in d]
    if all(x == 0 for x in s):  # many small steps adding up to more than tol
        s = [0 if x == 0 else (1 if x > 0 else -1) for x in d]
    if m >= 3:
        sigma = s[0]
        if sigma != 0 and all(x == sigma for x in s[:-1]) and s[-1] in (0, sigma) \
                and abs(d[-1]) < SATURATION_RATIO * abs(d[-2]):
            word = "up" if sigma > 0 else "down"
            return {"kind": f"saturating_{word}",
                    "text": f"saturating {word} (last step {d[-1]:+.3f} < 1/3 of {d[-2]:+.3f})", "at": None}
    if all(x >= 0 for x in s):
        return {"kind": "monotonic_up", "text": "monotonic up", "at": None}
    if all(x <= 0 for x in s):
        return {"kind": "monotonic_down", "text": "monotonic down", "at": None}
    nz = [x for x in s if x != 0]
    changes = sum(1 for a, b in zip(nz, nz[1:]) if a != b)
    imax, imin = int(np.argmax(v)), int(np.argmin(v))
    if changes == 1 and nz[0] > 0:
        return {"kind": "peak", "text": f"peak at {names[imax]}", "at": imax}
    if changes == 1 and nz[0] < 0:
        return {"kind": "dip", "text": f"dip at {names[imin]}", "at": imin}
    return {"kind": "non_monotonic", "text": f"non-monotonic (max at {names[imax]}, min at {names[imin]})",
            "at": None}


# ----------------------------------------------------------------------------- statistics helpers


def _subseed(seed: int, *parts: object) -> int:
    from nlalab.rowstats import subseed as sub

    return sub(seed, *parts)


def _est(e: Optional[dict]) -> Optional[dict]:
    if not e or e.get("mean") is None:
        return None
    return {"mean": e["mean"], "lo": e.get("lo"), "hi": e.get("hi"), "n": e.get("n")}


def spread_ci(rows: list[dict], metric: str, categories: list[str], n_boot: int, seed: int,
              n_perm: int = 1000) -> Optional[dict]:
    """max − min of the row-weighted category means with a permutation p, a simultaneous interval that
    covers 0 when the categories do not differ, and a verdict (:func:`nlalab.report.pattern.spread_test`).
    None when fewer than two categories have values (a spread needs two means)."""
    return PT.spread_from_rows(rows, metric, categories, n_perm=n_perm, n_boot=n_boot, seed=seed)


def unpaired_bootstrap_diff(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """mean(a) − mean(b) for independent samples (items of two corpora), percentile CI and a two-sided
    p-value by the same shift rule as :func:`nlalab.stats.paired_bootstrap_diff`."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    obs = float(x.mean() - y.mean())
    rng = np.random.default_rng(seed)
    bx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    by = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(1)
    boot = bx - by
    lo, hi = np.quantile(boot, [0.025, 0.975])
    tol = 1e-12 * max(1.0, abs(obs))
    extreme = int(np.sum(np.abs(boot - obs) >= abs(obs) - tol)) if obs != 0 else boot.size
    return {"mean": obs, "lo": float(lo), "hi": float(hi), "n": int(min(x.size, y.size)),
            "p": min(1.0, (1 + extreme) / (1 + boot.size)), "n_a": int(x.size), "n_b": int(y.size)}


# ----------------------------------------------------------------------------- rows


def _row(key: str, label: str, section: str, cells: list, kind: str = "est", digits: int = 3,
         signed: bool = False) -> dict:
    return {"key": key, "label": label, "section": section, "kind": kind, "digits": digits, "signed": signed,
            "values": cells}


def _scorer_rows(runs: list[Run]) -> list[dict]:
    common = set.intersection(*[set((r.results_dict().get("scorers") or {}).keys()) for r in runs]) if runs else set()
    rows = []
    for name in sorted(common):
        secs = [r.results_dict()["scorers"][name] for r in runs]
        metrics = [m for m in secs[0].get("metrics") or [] if all(m in (s.get("metrics") or []) for s in secs)]
        for m in metrics:
            label = (secs[0].get("labels") or {}).get(m, f"{name} {m}")
            rows.append(_row(f"scorer.{name}.{m}", f"{label} (overall)", f"Scorer: {name}",
                             [_est(((s.get("per_category") or {}).get(OVERALL) or {}).get(m)) for s in secs]))
            for fld, lab in (("gap_cross", "gap above cross floor"), ("gap_within", "gap above within floor")):
                cells = []
                for s in secs:
                    o = (((s.get("permutation") or {}).get("metrics") or {}).get(m) or {}).get("overall")
                    pk = "p_cross" if fld == "gap_cross" else "p_within"
                    cells.append({"mean": o[fld], "p": o[pk], "n": o.get("n_items")} if o else None)
                rows.append(_row(f"scorer.{name}.{m}.{fld}", f"{label}: {lab}", f"Scorer: {name}", cells, kind="gap",
                                 signed=True))
            chance = [(s.get("chance") or {}).get(m) for s in secs]
            if any(c is not None for c in chance):
                rows.append(_row(f"scorer.{name}.{m}.chance", f"{label}: chance level", f"Scorer: {name}",
                                 [None if c is None else {"mean": c, "n": s.get("n_candidates")}
                                  for c, s in zip(chance, secs)], kind="chance"))
    return rows


# ----------------------------------------------------------------------------- differences


def _differences(runs: list[Run], pairing: list[dict], n_boot: int, seed: int) -> list[dict]:
    out = []
    for i, pr in enumerate(pairing):
        a, b = runs[i], runs[i + 1]
        entry = {"from": a.name, "to": b.name, "paired": pr["paired"], "metrics": {}}
        for m in DIFF_METRICS:
            ma, mb = item_means(a.sample_dicts(), m), item_means(b.sample_dicts(), m)
            s = _subseed(seed, "compare_diff", i, m)
            if not ma or not mb:
                entry["metrics"][m] = None
                continue
            if pr["paired"]:
                common = [iid for iid in ma if iid in mb]
                if not common:
                    entry["metrics"][m] = None
                    continue
                e = ST.paired_bootstrap_diff([mb[c] for c in common], [ma[c] for c in common], n_boot=n_boot,
                                             seed=s)
                entry["metrics"][m] = {"mean": e.mean, "lo": e.lo, "hi": e.hi, "n": e.n, "p": e.p,
                                       "method": "paired bootstrap over items (item means of K samples)"}
            else:
                d = unpaired_bootstrap_diff(list(mb.values()), list(ma.values()), n_boot=n_boot, seed=s)
                d["method"] = "UNPAIRED bootstrap (different corpora): items of each run resampled independently"
                entry["metrics"][m] = d
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- public entry point


#: Settings that must agree for two runs' items to be compared: what each one measures. A difference in
#: position or layer/hook means the activations are different vectors, so items are not paired across it
#: unless ``allow_mismatch``; every other difference is stated.
COMPARABILITY = (
    ("position", "capture position", True),
    ("layer", "layer", True),
    ("hook", "hook point", True),
    ("b_rv", "B_rv value", False),
    ("b_rv_source", "B_rv source", False),
    ("mse_scale", "mse_scale", False),
    ("corpus", "corpus (sha256)", False),
    ("k", "K samples per item", False),
    ("max_new_tokens", "max_new_tokens", False),
    ("sampling", "sampling settings (temperature, top_p, greedy)", False),
)


def comparability(run) -> dict:
    """The values of :data:`COMPARABILITY` for one run (None where the run did not record one)."""
    res, cfg = run.results_dict(), (run.config_dict().get("config") or {})
    cap = res.get("capture") or {}
    b = res.get("b_rv")
    return {
        "position": cap.get("positions", cfg.get("positions")),
        "layer": cap.get("layer", run.layer),
        "hook": cap.get("hook"),
        "b_rv": None if b is None else round(float(b), 6),
        "b_rv_source": res.get("b_rv_source"),
        "mse_scale": None if res.get("mse_scale") is None else round(float(res["mse_scale"]), 6),
        "corpus": run.corpus_sha256,
        "k": res.get("k"),
        "max_new_tokens": cfg.get("max_new_tokens"),
        "sampling": None if not cfg else {"temperature": cfg.get("temperature"), "top_p": cfg.get("top_p"),
                                          "greedy": cfg.get("greedy")},
    }


def mismatches(runs: list) -> list[dict]:
    """Every setting of :data:`COMPARABILITY` that differs between the runs, with each run's value."""
    vals = [comparability(r) for r in runs]
    out = []
    for key, label, blocking in COMPARABILITY:
        seen = [v[key] for v in vals]
        if len({json.dumps(x, sort_keys=True, default=str) for x in seen}) > 1:
            out.append({"key": key, "label": label, "blocking": blocking,
                        "values": {r.name: v for r, v in zip(runs, seen)}})
    return out


def compare_runs(run_dirs: Iterable[Union[str, Path]], names: Optional[Sequence[str]] = None, *,
                 n_boot: int = 2000, seed: int = 0, tol: float = DEFAULT_TOL, allow_mismatch: bool = False) -> dict:
    """The seed's table 3.2 for the given runs (in trajectory order). See the module docstring.

    Runs captured at different positions, layers or hook points measure different vectors: that is refused
    (one line naming each difference) unless ``allow_mismatch``; then they are compared unpaired and every
    difference is stated in ``warnings`` and ``mismatches``."""
    runs = load_runs(run_dirs, list(names) if names is not None else None)
    run_names = [r.name for r in runs]
    warnings: list[str] = []
    mism = mismatches(runs)
    blocking = [m for m in mism if m["blocking"]]
    if blocking and not allow_mismatch:
        desc = "; ".join(f"{m['label']}: " + ", ".join(f"{n}={v}" for n, v in m["values"].items()) for m in blocking)
        raise UsageError(f"the runs measure different activations ({desc}); their items cannot be paired. Fix: "
                         "compare runs captured at the same position and layer, or pass --allow-mismatch to compare "
                         "them unpaired with the differences stated.")
    for m in mism:
        warnings.append(f"runs differ in {m['label']}: " + ", ".join(f"{n}={v}" for n, v in m["values"].items())
                        + (" (compared unpaired: --allow-mismatch)" if m["blocking"] else ""))

    # ---- corpus pairing (never across positions or layers)
    pairing = []
    for i in range(len(runs) - 1):
        a, b = runs[i], runs[i + 1]
        ha, hb = a.corpus_sha256, b.corpus_sha256
        ca, cb = comparability(a), comparability(b)
        diff_vec = [lab for key, lab, blk in COMPARABILITY if blk and ca[key] != cb[key]]
        if diff_vec:
            pr = {"from": a.name, "to": b.name, "paired": False,
                  "reason": "different activations (" + ", ".join(diff_vec) + ")"}
        elif ha is None or hb is None:
            pr = {"from": a.name, "to": b.name, "paired": False, "reason": "corpus sha256 missing from config.json"}
        elif ha != hb:
            pr = {"from": a.name, "to": b.name, "paired": False,
                  "reason": f"different corpora (sha256 {ha[:12]}… vs {hb[:12]}…)"}
        else:
            common = set(item_means(a.sample_dicts(), "cos")) & set(item_means(b.sample_dicts(), "cos"))
            pr = {"from": a.name, "to": b.name, "paired": True, "reason": "same corpus sha256, position and layer",
                  "n_common_items": len(common)}
        pairing.append(pr)
    hashes = {r.corpus_sha256 for r in runs}
    same_corpus = len(hashes) == 1 and None not in hashes
    if len(runs) > 1 and not same_corpus:
        groups: dict[Any, list[str]] = {}
        for r in runs:
            groups.setdefault(r.corpus_sha256, []).append(f"{r.name} ({r.corpus.get('ref')})")
        desc = "; ".join(f"sha256 {str(h)[:12]}…: {', '.join(v)}" for h, v in groups.items())
        refs = {r.corpus.get("ref") for r in runs}
        if len(refs) == 1 and None not in hashes:
            desc += "; same corpus name but different items, e.g. another --limit-per-category"
        warnings.append(
            "CORPORA DIFFER: the runs did not evaluate the same prompts (" + desc + "). Differences between "
            "runs on different corpora are UNPAIRED and mix the model effect with the prompt effect; "
            "per-category and permutation numbers are not directly comparable."
        )
    srcs = [str(r.results_dict().get("b_rv_source") or "") for r in runs]
    ref_kinds = {s.startswith("reference vectors") for s in srcs}
    if len(ref_kinds) > 1:
        warnings.append("fve_nrm denominators differ in kind: some runs use a reference vector file for B_rv, "
                        "others their own activations (" + "; ".join(f"{n}: {s}" for n, s in zip(run_names, srcs))
                        + "). fve_nrm_seed does not depend on B_rv.")
    for key in ("n_perm",):
        vals = {r.info()[key] for r in runs}
        if len(vals) > 1:
            warnings.append(f"runs differ in {key}: " + ", ".join(f"{r.name}={r.info()[key]}" for r in runs))
    for r in runs:
        warnings += r.score_warnings()

    # ---- rows
    rows: list[dict] = []

    def overall(metric: str) -> list:
        return [_est(((r.results_dict().get("per_category") or {}).get(OVERALL) or {}).get(metric)) for r in runs]

    rows.append(_row("fve_nrm", "Overall fve_nrm (÷ B_rv)", "Reconstruction", overall("fve_nrm")))
    rows.append(_row("fve_nrm_seed", "Overall fve_nrm_seed (÷ per-vector variance)", "Reconstruction",
                     overall("fve_nrm_seed")))
    rows.append(_row("cos", "Overall cos", "Reconstruction", overall("cos"), signed=True))
    rows.append(_row("spread.fve_nrm", "fve_nrm spread (max − min over categories)", "Reconstruction",
                     [spread_ci(r.sample_dicts(), "fve_nrm", r.categories, n_boot, _subseed(seed, "spread", i, "fve_nrm"))
                      for i, r in enumerate(runs)]))
    rows.append(_row("recall", "Overall recall", "Content", overall("recall")))
    rows.append(_row("spread.recall", "Recall spread (max − min over categories)", "Content",
                     [spread_ci(r.sample_dicts(), "recall", r.categories, n_boot, _subseed(seed, "spread", i, "recall"))
                      for i, r in enumerate(runs)]))
    rows.append(_row("hit", "Overall recall (≥1 hit)", "Content", overall("hit")))
    cats: list[str] = []
    for r in runs:
        cats += [c for c in r.categories if c not in cats]
    for c in cats:
        rows.append(_row(f"recall.{c}", f"{c} recall", "Per-category recall",
                         [_est(((r.results_dict().get("per_category") or {}).get(c) or {}).get("recall")) for r in runs]))
    from nlalab.study.controls import registry

    for ctl in registry().values():
        rows += ctl.compare_rows(runs, _row)
    rows += _scorer_rows(runs)
    diffs = _differences(runs, pairing, int(n_boot), seed)
    paired_steps = {m: [d["metrics"].get(m) for d in diffs] for m in DIFF_METRICS}
    for row in rows:
        vals = [None if c is None else c.get("mean") for c in row["values"]]
        # a step counts only when its Δ is significant (Holm over the row's steps): paired item-level Δ
        # where there is one, else the two runs' intervals (unpaired, conservative on one corpus)
        steps = paired_steps.get(row["key"]) or [PT.step_from_estimates(a, b)
                                                 for a, b in zip(row["values"], row["values"][1:])]
        row["pattern"] = classify_pattern(vals, run_names, steps=steps)

    for m in DIFF_METRICS:
        cells = [None] + [d["metrics"].get(m) for d in diffs]
        paired_txt = "paired" if all(p["paired"] for p in pairing) else "UNPAIRED where corpora differ"
        row = _row(f"diff.{m}", f"Δ {m} vs previous run ({paired_txt})", "Differences", cells, kind="diff",
                   signed=True)
        row["pattern"] = {"kind": "na", "text": "", "at": None}
        rows.append(row)

    return {
        "kind": "nlalab.compare",
        "version": 1,
        "runs": [r.info() for r in runs],
        "names": run_names,
        "same_corpus": same_corpus,
        "pairing": pairing,
        "mismatches": mism,
        "warnings": warnings,
        "rows": rows,
        "differences": diffs,
        "settings": {
            "n_boot": int(n_boot),
            "seed": int(seed),
            "tol": float(tol),
            "step_eps": float(tol) * STEP_EPS_FRACTION,
            "saturation_ratio": SATURATION_RATIO,
            "pattern_correction": PT.CORRECTION,
            "ci": "95% percentile intervals: cluster bootstrap over items (from each run's results.json) for "
                  "means; stratified cluster bootstrap for spreads; paired bootstrap over item means for Δ",
        },
        "pattern_rules": PATTERN_RULES,
        "denominators": FVE_DENOMINATORS,
    }


# ----------------------------------------------------------------------------- rendering


def cell_text(cell: Optional[dict], row: dict) -> str:
    """One table cell: ``mean [lo, hi] n=…`` (means), ``+gap p=… n=… items`` (gaps), ``k/n`` (counts)."""
    if cell is None or cell.get("mean") is None:
        return "n/a"
    kind, d, signed = row.get("kind", "est"), int(row.get("digits", 3)), bool(row.get("signed"))
    m = fmt_num(cell["mean"], d, signed)
    if kind == "count":
        return cell.get("text") or m
    if kind == "gap":
        return f"{m} p={fmt_p(cell.get('p'))} n={cell.get('n')} items"
    if kind == "chance":
        return f"{m} (n={cell.get('n')} candidates)"
    ci = ""
    if cell.get("lo") is not None and cell.get("hi") is not None:
        ci = f" [{fmt_num(cell['lo'], d, signed)}, {fmt_num(cell['hi'], d, signed)}]"
    if kind == "floor":
        return f"{m}{ci} ({cell.get('n')} perms)"
    if kind == "diff":
        p = f" p={fmt_p(cell.get('p'))}" if cell.get("p") is not None else ""
        return f"{m}{ci}{p} n={cell.get('n')} items"
    return f"{m}{ci} n={cell.get('n')}"


def _table_rows(cmp: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Metric"] + list(cmp["names"]) + ["Pattern"]
    body = [[row["label"]] + [cell_text(c, row) for c in row["values"]] + [row["pattern"]["text"]]
            for row in cmp["rows"]]
    return header, body


def _runs_table(cmp: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Run", "Pair", "Layer", "Position", "Corpus (sha256)", "N (items × K)", "Seed", "B_rv (source)", "Dir"]
    body = []
    for r in cmp["runs"]:
        sha = (r.get("corpus_sha256") or "?")[:12]
        body.append([r["name"], str(r["pair"]), str(r["layer"]), str(r.get("position")), f"{r.get('corpus')} ({sha}…)",
                     f"{r.get('n_samples')} ({r.get('n_items')} × {r.get('k')})", str(r.get("seed")),
                     f"{fmt_num(r.get('b_rv'), 5)} ({r.get('b_rv_source')})", r["dir"]])
    return header, body


def _footer(cmp: dict) -> list[str]:
    s = cmp["settings"]
    pair_txt = "; ".join(f"{p['from']} → {p['to']}: {'paired by item_id' if p['paired'] else 'UNPAIRED'} "
                         f"({p['reason']})" for p in cmp["pairing"]) or "one run"
    return [
        f"Cells: mean [95% interval] n=rows (per-category and overall means: cluster bootstrap over items); "
        f"floors: permutation mean [2.5%, 97.5%]; gaps: real − floor with permutation p; Δ: later − earlier, "
        f"{s['n_boot']} bootstrap resamples, seed {s['seed']}.",
        f"Pairing: {pair_txt}.",
        f"Denominators: {cmp['denominators']}",
        f"Pattern rules ({PT.CORRECTION}): "
        + " | ".join(cmp["pattern_rules"]),
    ]


def comparison_tables(cmp: dict) -> list[Table]:
    """The comparison as Tables: runs, differences in what they measure, the scaling table."""
    rh, rb = _runs_table(cmp)
    out = [Table("Runs", rh, rb, key="compare_runs", wrap=True)]
    if cmp.get("mismatches"):
        out.append(Table("What differs between the runs", ["Setting"] + list(cmp["names"]),
                         [[m["label"]] + [str(m["values"].get(n)) for n in cmp["names"]] for m in cmp["mismatches"]],
                         key="compare_mismatches", wrap=True))
    th, tb = _table_rows(cmp)
    out.append(Table("Scaling table (seed §3.2)", th, tb, _footer(cmp), key="compare", wrap=True))
    return out


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    def c(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    return (["| " + " | ".join(c(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(c(x) for x in r) + " |" for r in body])


def to_markdown(cmp: dict, title: str = "Cross-run comparison (seed §3.2)") -> str:
    lines = [f"## {title}", ""]
    for w in cmp["warnings"]:
        lines += [f"> **WARNING:** {w}", ""]
    lines += _md_table(*_runs_table(cmp)) + [""]
    if cmp.get("mismatches"):
        lines += ["What differs between the runs:", ""]
        lines += _md_table(["Setting"] + list(cmp["names"]),
                           [[m["label"]] + [str(m["values"].get(n)) for n in cmp["names"]] for m in cmp["mismatches"]])
        lines += [""]
    lines += _md_table(*_table_rows(cmp)) + [""]
    lines += [f"- {x}" for x in _footer(cmp)]
    return "\n".join(lines) + "\n"


def to_csv(cmp: dict) -> str:
    """One line per row: section, key, metric, then mean/lo/hi/n/p per run, then the pattern. Warnings come
    first as rows with section ``WARNING``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["section", "key", "metric"]
    for n in cmp["names"]:
        header += [f"{n} mean", f"{n} lo", f"{n} hi", f"{n} n", f"{n} p", f"{n} text"]
    header += ["pattern", "pattern_kind"]
    w.writerow(header)
    for msg in cmp["warnings"]:
        w.writerow(["WARNING", "warning", msg] + [""] * (6 * len(cmp["names"]) + 2))
    for row in cmp["rows"]:
        out = [row["section"], row["key"], row["label"]]
        for c in row["values"]:
            if c is None:
                out += ["", "", "", "", "", "n/a"]
            else:
                out += [c.get("mean"), c.get("lo", ""), c.get("hi", ""), c.get("n", ""), c.get("p", ""),
                        cell_text(c, row)]
        out += [row["pattern"]["text"], row["pattern"]["kind"]]
        w.writerow(["" if x is None else x for x in out])
    return buf.getvalue()


def to_terminal(cmp: dict, rich: bool = False) -> str:
    """Plain fixed-width text (``rich=True`` renders a rich Table to text instead)."""
    header, body = _table_rows(cmp)
    rh, rb = _runs_table(cmp)
    if rich:
        try:
            from rich.console import Console
            from rich.table import Table as RTable

            console = Console(record=True, width=max(120, sum(max(len(x) for x in col) for col in zip(header, *body))
                                                     + 3 * len(header)))
            for wmsg in cmp["warnings"]:
                console.print(f"[bold red]WARNING:[/] {wmsg}")
            t = RTable(title="Cross-run comparison (seed §3.2)")
            for h in header:
                t.add_column(h)
            for r in body:
                t.add_row(*r)
            with console.capture() as cap:
                console.print(t)
            return "\n".join(f"WARNING: {x}" for x in cmp["warnings"]) + ("\n" if cmp["warnings"] else "") \
                + cap.get() + "\n".join(_footer(cmp)) + "\n"
        except ImportError:  # pragma: no cover - rich is a dependency
            pass

    def fixed(h: list[str], b: list[list[str]]) -> list[str]:
        widths = [max(len(x[i]) for x in [h] + b) for i in range(len(h))]
        line = lambda r: "  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip()  # noqa: E731
        return [line(h), "  ".join("-" * w for w in widths)] + [line(r) for r in b]

    out = [f"WARNING: {x}" for x in cmp["warnings"]]
    out += fixed(rh[:-1], [r[:-1] for r in rb]) + [""]
    section = None
    sec_rows: list[list[str]] = []
    for row, cells in zip(cmp["rows"], body):
        if row["section"] != section:
            section = row["section"]
            sec_rows.append([f"[{section}]"] + [""] * (len(header) - 1))
        sec_rows.append(cells)
    out += fixed(header, sec_rows) + [""] + _footer(cmp)
    return "\n".join(out) + "\n"


def to_json(cmp: dict) -> str:
    return json.dumps(cmp, indent=2, ensure_ascii=False, default=str) + "\n"
