"""Add a scorer to a finished run directory, without regenerating anything (``nlalab score RUN_DIR --scorer NAME``).

:func:`score_run` reads ``samples.jsonl``, scores every (prompt, explanation) row, writes
``scores/<name>.jsonl`` (one line per row: item_id, sample, category and the scorer's metrics) and merges
a ``scorers.<name>`` section into ``results.json``. Both writes are atomic (temp file + rename), and the
read-modify-write of results.json holds an exclusive lock (``.results.lock``), so two ``nlalab score``
processes on one run directory do not lose each other's sections. Nothing else is touched: no model of
the NLA pair is loaded, ``report.md``, ``vectors.safetensors`` and ``samples.jsonl`` stay as they are.

Statistics of a ``scorers.<name>`` section, per metric of the scorer (e.g. retrieval: top1, top5, mrr):

- **per category and OVERALL**: row mean with the 95% cluster-bootstrap interval over items, with the
  same derived seeds as the run's own tables (``_subseed(seed, "per_category", category, metric)``), so
  ``keyword`` re-scored here reproduces results.json's ``per_category.*.recall`` exactly; ``None`` values
  (e.g. quote fidelity of an explanation without quotes) are left out, and ``n`` says how many remain;
- **permutation floors**: the *same estimator* as the keyword permutation control of
  :mod:`nlalab.study.analysis` (seed section 4.1), generalised from the keyword recall matrix to any score
  matrix ``S[i, j]`` = score of explanation row ``j`` against the prompt of item ``i``, with a validity mask
  ``W[i, j]``. A permutation ``p`` gives item ``i`` the explanation set of item ``p[i]``; the statistic is
  ``sum_i sum_{j in set(p[i])} W[i,j] S[i,j] / sum_i sum_{j in set(p[i])} W[i,j]`` over the items of the
  group. The permutations are literally the ones analysis draws (same helper, same derived seeds), so all
  scorers of one run are compared against the same shuffles. For keyword recall ``W[i, j]`` is 1 when
  prompt ``i`` has content words, which makes this exactly analysis' statistic (checked in the tests);
- **chance levels** where one exists analytically (retrieval: 1/n, 5/n, H_n/n for n candidates).

Both use :func:`nlalab.rowstats.matrix_permutation` (below study/ and scorers/), so the floors are
identical by construction.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from nlalab.errors import NLALabError
from nlalab.scorers import KeywordScorer, Scorer, get_scorer

__all__ = [
    "SCORES_DIR",
    "score_run",
    "score_samples",
    "score_matrices",
    "permutation_floors",
    "load_samples",
    "scorer_metrics",
    "scorer_is_stale",
    "summary_text",
]

SCORES_DIR = "scores"
OVERALL = "OVERALL"


# ----------------------------------------------------------------------------- scorer plumbing


def scorer_metrics(scorer: Scorer) -> tuple[str, ...]:
    """The names of a scorer's per-row values (``recall`` for keyword, its ``metrics`` otherwise)."""
    if isinstance(scorer, KeywordScorer):
        return ("recall",)
    return tuple(getattr(scorer, "metrics", None) or (scorer.name,))


def score_matrices(scorer: Scorer, prompts: list[str], explanations: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{metric: (S, W)}`` over all (prompt ``i``, explanation ``j``) pairs; ``W`` is the 0/1 mask of defined
    entries. Uses the scorer's own ``score_matrices`` if it has one, analysis' recall matrix for keyword,
    and otherwise calls ``scorer.score`` on every pair (any third-party scorer gets a floor this way)."""
    n_p, n_e = len(prompts), len(explanations)
    if isinstance(scorer, KeywordScorer):
        from nlalab.scorers.keyword import recall_matrix

        R, valid = recall_matrix(list(prompts), list(explanations), scorer.stopwords)
        return {"recall": (R, np.repeat(valid.astype(np.float64)[:, None], n_e, axis=1))}
    fn = getattr(scorer, "score_matrices", None)
    if callable(fn):
        out = {}
        for m, (S, W) in fn(list(prompts), list(explanations)).items():
            S = np.asarray(S, dtype=np.float64)
            if S.shape != (n_p, n_e):
                raise NLALabError(f"scorer {scorer.name!r}: score matrix {m!r} has shape {S.shape}, "
                                  f"expected {(n_p, n_e)}")
            W = np.ones_like(S) if W is None else np.asarray(W, dtype=np.float64)
            out[m] = (np.where(W > 0, S, 0.0), (W > 0).astype(np.float64))
        return out
    S = np.zeros((n_p, n_e))
    W = np.zeros_like(S)
    for i, p in enumerate(prompts):
        vals = scorer.score([p] * n_e, list(explanations))
        for j, v in enumerate(vals):
            if v is not None and np.isfinite(float(v)):
                S[i, j], W[i, j] = float(v), 1.0
    return {scorer_metrics(scorer)[0]: (S, W)}


# ----------------------------------------------------------------------------- the permutation estimator


def permutation_floors(S: np.ndarray, W: Optional[np.ndarray], row_item: np.ndarray, item_cats: list[str],
                       categories: list[str], n_perm: int, seed: int) -> dict:
    """Within- and cross-category permutation floors of any ``[n_items, n_rows]`` score matrix.

    ``row_item[j]`` is the item index (0..n_items-1, in the order of ``item_cats``) that row ``j`` belongs
    to. Returns ``{"overall": block, "per_category": {c: block | None}}`` with blocks shaped exactly like
    analysis' (``real``, ``n_rows``, ``n_items``, ``floor_within``, ``floor_cross``, ``gap_within``,
    ``gap_cross``, ``p_within``, ``p_cross``); a block is None when no entry of the group is defined.
    """
    from nlalab.rowstats import matrix_permutation

    S = np.asarray(S, dtype=np.float64)
    n = len(item_cats)
    W = np.ones_like(S) if W is None else np.asarray(W, dtype=np.float64)
    row_item = np.asarray(row_item, dtype=np.int64)
    M = np.zeros((S.shape[1], n))
    M[np.arange(S.shape[1]), row_item] = 1.0
    Ssum = np.where(W > 0, S, 0.0) @ M  # [item (prompt), item (explanation set)]: summed defined scores
    Wsum = W @ M  # ... and how many of them are defined
    return matrix_permutation(Ssum, Wsum, np.array(item_cats), categories, n_perm, seed, tag="perm")


# ----------------------------------------------------------------------------- scoring a list of rows


def score_samples(samples: list[dict], scorer: Union[str, Scorer], *, categories: list[str], n_perm: int = 1000,
                  n_boot: int = 2000, seed: int = 42) -> tuple[dict, list[dict]]:
    """Score run rows (dicts with item_id, category, prompt, sample, explanation) with one scorer.

    Returns ``(section, per_row)``: the ``scorers.<name>`` section for results.json and one record per
    row for ``scores/<name>.jsonl``. Pure: no files are read or written.
    """
    from nlalab.rowstats import clean as _clean, est as _est, subseed as _subseed, validate_samples as _validate_samples

    sc = get_scorer(scorer) if isinstance(scorer, str) else scorer
    rows, cats, items = _validate_samples(samples, categories)
    iids = list(items)
    pos = {iid: k for k, iid in enumerate(iids)}
    prompts = [items[i]["prompt"] for i in iids]
    expl = [str(r.get("explanation") or "") for r in rows]
    row_item = np.array([pos[str(r["item_id"])] for r in rows], dtype=np.int64)
    item_cats = [items[i]["category"] for i in iids]
    t0 = time.time()
    mats = score_matrices(sc, prompts, expl)
    metrics = list(mats)
    cols = np.arange(len(rows))
    values: dict[str, list[Optional[float]]] = {}
    for m, (S, W) in mats.items():
        d, w = S[row_item, cols], W[row_item, cols]
        values[m] = [float(d[j]) if w[j] > 0 else None for j in range(len(rows))]

    per_row = []
    for j, r in enumerate(rows):
        rec: dict[str, Any] = {"item_id": str(r["item_id"]), "sample": int(r["sample"]), "category": r["category"]}
        for m in metrics:
            rec[m] = values[m][j]
        if sc.name == "retrieval" and values.get("mrr", [None])[j]:
            rec["rank"] = int(round(1.0 / values["mrr"][j]))
        per_row.append(rec)

    groups: dict[str, list[int]] = {c: [] for c in cats}
    for j, r in enumerate(rows):
        groups[r["category"]].append(j)
    groups[OVERALL] = list(range(len(rows)))
    per_cat: dict[str, dict] = {}
    for g, idx in groups.items():
        clusters = [str(rows[j]["item_id"]) for j in idx]
        entry: dict[str, Any] = {"n": len(idx), "n_items": len(set(clusters))}
        for m in metrics:
            vals = [values[m][j] for j in idx]
            entry[m] = _est(vals, clusters, int(n_boot), _subseed(seed, "per_category", g, m)) if idx else None
        per_cat[g] = entry
    spread = {}
    for m in metrics:
        means = [per_cat[c][m]["mean"] for c in cats if per_cat[c].get(m)]
        spread[m] = float(max(means) - min(means)) if means else None
    perm = {m: permutation_floors(S, W, row_item, item_cats, cats, int(n_perm), seed) for m, (S, W) in mats.items()}
    n_cand = len(dict.fromkeys(prompts))
    chance_fn = getattr(sc, "chance", None)
    chance = chance_fn(n_cand) if callable(chance_fn) else {m: None for m in metrics}
    describe = getattr(sc, "describe", None)
    if isinstance(sc, KeywordScorer) and not callable(describe):
        describe = lambda: {"definition": "seed §2.3 keyword recall |P ∩ E| / |P| over content words (ASCII "  # noqa: E731
                            "alphanumeric, length >= 4, not a stopword)",
                            "undefined": "prompts without content words (None, left out of means)"}
    labels = getattr(sc, "labels", None) or {}
    section = {
        "scorer": sc.name,
        "metrics": metrics,
        "labels": {m: labels.get(m, f"{sc.name} {m}") for m in metrics},
        "description": describe() if callable(describe) else {},
        "n_rows": len(rows),
        "n_items": len(iids),
        "n_candidates": n_cand,
        "n_defined": {m: sum(v is not None for v in values[m]) for m in metrics},
        "settings": {
            "seed": seed,
            "n_perm": int(n_perm),
            "n_boot": int(n_boot),
            "ci": "95% percentile, cluster bootstrap over item_id",
            "floor": "seed §4.1 permutation estimator on the score matrix (item's K explanations move "
                     "together; within = inside a category, cross = over all items), same permutations as "
                     "the keyword control",
        },
        "per_category": per_cat,
        "spread": spread,
        "permutation": {"unit": "item (its K explanations move together)", "n_perm": int(n_perm),
                        "n_items": len(iids), "metrics": perm},
        "chance": chance,
        "elapsed_s": round(time.time() - t0, 3),
    }
    return _clean(section), per_row


# ----------------------------------------------------------------------------- run directories


def load_samples(run_dir: Union[str, Path]) -> list[dict]:
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise NLALabError(f"{path}: not found. Fix: point at a finished `nlalab run` directory (it has samples.jsonl).")
    from nlalab.rundir.io import read_jsonl

    return read_jsonl(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def score_run(run_dir: Union[str, Path], scorer_name: str, *, n_perm: Optional[int] = None,
              n_boot: Optional[int] = None, seed: Optional[int] = None,
              scorer: Optional[Scorer] = None) -> dict:
    """Score an existing run with ``scorer_name`` (see :data:`nlalab.scorers.SCORERS`) and record it.

    ``n_perm``, ``n_boot`` and ``seed`` default to the run's own settings (results.json), so floors and
    intervals are comparable with the keyword ones. Writes ``scores/<name>.jsonl`` and merges
    ``results.json["scorers"][name]``; returns that section. ``scorer`` overrides the registry (a
    configured instance; its ``name`` is then used for the file and the section).
    """
    from nlalab.rundir.io import atomic_write_json, write_jsonl

    run = Path(run_dir)
    res_path = run / "results.json"
    if not res_path.is_file():
        raise NLALabError(f"{res_path}: not found. Fix: finish the run first (`nlalab run --out {run}`).")
    sc = scorer if scorer is not None else get_scorer(scorer_name)
    name = sc.name
    results = json.loads(res_path.read_text(encoding="utf-8"))
    settings = results.get("settings") or {}
    cats = list(results.get("categories") or [])
    if not cats:
        cfg = json.loads((run / "config.json").read_text(encoding="utf-8")) if (run / "config.json").is_file() else {}
        cats = list((cfg.get("corpus") or {}).get("categories") or [])
    samples = load_samples(run)
    digest = _sha256(run / "samples.jsonl")
    section, per_row = score_samples(
        samples, sc, categories=cats,
        n_perm=int(n_perm if n_perm is not None else settings.get("n_perm", 1000)),
        n_boot=int(n_boot if n_boot is not None else settings.get("n_boot", 2000)),
        seed=int(seed if seed is not None else settings.get("seed", 42)),
    )
    rel = f"{SCORES_DIR}/{name}.jsonl"
    write_jsonl(run / rel, per_row)
    section.update(file=rel, samples_sha256=digest, computed_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    from nlalab.rundir.io import dir_lock

    with dir_lock(run, wait=None, what="nlalab score"):
        current = json.loads(res_path.read_text(encoding="utf-8"))
        current.setdefault("scorers", {})[name] = section
        atomic_write_json(res_path, current)
    return section


def scorer_is_stale(run_dir: Union[str, Path], name: str) -> Optional[bool]:
    """True when results.json's ``scorers.<name>`` was computed from another samples.jsonl than the one now
    in the run directory (e.g. after a re-run); None when the scorer was never run there."""
    run = Path(run_dir)
    try:
        sec = json.loads((run / "results.json").read_text(encoding="utf-8")).get("scorers", {}).get(name)
    except (OSError, ValueError):
        return None
    if not sec:
        return None
    return sec.get("samples_sha256") != _sha256(run / "samples.jsonl")



def summary_text(section: dict) -> str:
    """A few terminal lines for one ``scorers.<name>`` section (what ``nlalab score`` prints)."""

    def est(e: Optional[dict]) -> str:
        if not e or e.get("mean") is None:
            return "n/a"
        return f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}] n={e['n']}"

    lines = [f"scorer {section.get('scorer')}: {section.get('n_rows')} rows, {section.get('n_items')} items "
             f"(seed {section.get('settings', {}).get('seed')}, {section.get('settings', {}).get('n_perm')} "
             f"permutations) -> {section.get('file')}"]
    perm = (section.get("permutation") or {}).get("metrics") or {}
    for m in section.get("metrics") or []:
        o = (perm.get(m) or {}).get("overall")
        ch = (section.get("chance") or {}).get(m)
        line = f"  {m}: {est(((section.get('per_category') or {}).get(OVERALL) or {}).get(m))}"
        if ch is not None:
            line += f" (chance {ch:.3f})"
        if o:
            line += (f"; floor within {o['floor_within']['mean']:.3f}, cross {o['floor_cross']['mean']:.3f}; "
                     f"gap cross {o['gap_cross']:+.3f} (p={o['p_cross']:.3g})")
        lines.append(line)
    return "\n".join(lines) + "\n"
