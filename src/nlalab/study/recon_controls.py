"""Reconstruction-side controls: is fve_nrm item-specific, or does the category (Tier 1) explain it?

- ``recon_permutation``: reconstruct item i's activation from item j's explanations (no new AR calls:
  every reconstruction is scored against every activation) and compare the real pairing with
  within- and across-category permutation floors, with the same estimator as the recall control.
- ``baseline_ladder``: the same metrics for predictions that carry no item-specific explanation
  (mean direction, empty explanation, source text, blind explanation) and their gap to the real pair.
- ``prefix_curve``, ``grounding``, ``seed_spread``: where in the explanation the reconstruction
  comes from, whether true/false claims move it, and how much the headline numbers move with the seed.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import numpy as np
import torch

from nlalab import metrics, stats
from nlalab.study.analysis import matrix_permutation

RECON_METRICS = ("cos", "fve_nrm", "fve_nrm_seed", "centered_cos")
_SENT_RE = re.compile(r"(?<=[.!?])\s+|\n+")


def score_matrix(recon: torch.Tensor, acts: torch.Tensor, mse_scale: float, b_rv: float,
                 center: torch.Tensor) -> dict[str, np.ndarray]:
    """metric[r, i] for reconstruction row r against activation i, for every metric, as float64 arrays."""
    R = recon.double()
    G = acts.double()
    d = G.shape[1]
    Rn = R / R.norm(dim=1, keepdim=True).clamp_min(1e-12)
    Gn = G / G.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = Rn @ Gn.T
    mse = (mse_scale ** 2 / d) * (2.0 - 2.0 * cos)
    g_unit = Gn * mse_scale
    var_g = g_unit.var(dim=1, unbiased=False)  # per gold vector: fve_nrm_seed's denominator
    Rc, Gc = R - center.double(), G - center.double()
    ccos = (Rc / Rc.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (Gc / Gc.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
    return {
        "cos": cos.numpy(),
        "mse_nrm": mse.numpy(),
        "fve_nrm": (1.0 - mse / b_rv).numpy(),
        "fve_nrm_seed": (1.0 - mse / var_g[None, :]).numpy(),
        "centered_cos": ccos.numpy(),
    }


def recon_permutation(acts: torch.Tensor, recon: torch.Tensor, row_items: Sequence[int], item_cats: Sequence[str],
                      cats: list[str], mse_scale: float, b_rv: float, center: torch.Tensor, n_perm: int = 1000,
                      seed: int = 42) -> dict:
    """Per metric: real vs within/cross-category floors, gaps, p-values, and a verdict per category."""
    mats = score_matrix(recon, acts, mse_scale, b_rv, center)
    n = acts.shape[0]
    M = np.zeros((len(row_items), n))
    M[np.arange(len(row_items)), np.asarray(row_items)] = 1.0
    item_cat = np.asarray(item_cats)
    out: dict = {"unit": "item (its K reconstructions move together)", "n_perm": int(n_perm), "metrics": {}}
    for m in RECON_METRICS:
        S_sum = mats[m].T @ M  # [gold item i, explanation set j]
        W_sum = np.broadcast_to(M.sum(0)[None, :], S_sum.shape)
        out["metrics"][m] = matrix_permutation(S_sum, W_sum, item_cat, cats, n_perm, seed, tag=f"recon-{m}")
    out["verdicts"] = verdicts(out["metrics"]["fve_nrm"], cats)
    return out


def verdicts(block: dict, cats: list[str], alpha: float = 0.05) -> dict[str, str]:
    """One sentence per category: is fve_nrm item-specific beyond its category on this run?"""
    out = {}
    for c in cats:
        b = block["per_category"].get(c)
        if b is None:
            out[c] = f"{c}: not enough items to tell."
            continue
        fw = b["floor_within"]["mean"]
        if b["n_items"] < 2:
            out[c] = f"{c}: a single item; the within-category floor is undefined."
        elif b["p_within"] <= alpha:
            out[c] = (f"{c}: fve_nrm is item-specific beyond its category (real {b['real']:.3f} vs "
                      f"within-category floor {fw:.3f}, gap {b['gap_within']:+.3f}, p={b['p_within']:.3g}).")
        else:
            out[c] = (f"{c}: fve_nrm is NOT distinguishable from explanations of other {c} items (real "
                      f"{b['real']:.3f} vs within-category floor {fw:.3f}, gap {b['gap_within']:+.3f}, "
                      f"p={b['p_within']:.3g}): the category explains the reconstruction.")
    return out


def _summ(values: np.ndarray, clusters: Optional[np.ndarray], n_boot: int, seed: int) -> dict:
    vals = np.asarray(values, dtype=np.float64)
    if clusters is not None and len(np.unique(clusters)) < len(vals):
        return stats.cluster_bootstrap_ci(vals, clusters, n_boot=n_boot, seed=seed).to_dict()
    return stats.bootstrap_ci(vals, n_boot=n_boot, seed=seed).to_dict()


def baseline_ladder(acts: torch.Tensor, preds: dict[str, tuple[torch.Tensor, Sequence[int]]], mse_scale: float,
                    b_rv: float, center: torch.Tensor, real_name: str = "real_pair", n_boot: int = 2000,
                    seed: int = 42, extra: Optional[dict[str, dict[str, np.ndarray]]] = None) -> dict:
    """Each rung: predictions [m, d] with the item index each one predicts; metrics with item-cluster CIs.

    Gaps are ``real - rung`` of the means. The mean-direction rung predicts the mean of the normalised
    activations: its raw-vector FVE is 0 by construction, while its ``fve_nrm`` is
    ``1 - B_mn/B_rv = -(1-|mu|)/(1+|mu|) <= 0`` because mse_nrm renormalises the prediction.
    ``extra`` adds per-prediction values (e.g. keyword recall of blind explanations) to a rung.
    """
    out: dict = {}
    means: dict[str, dict[str, float]] = {}
    for name, (P, gold_idx) in preds.items():
        gi = list(gold_idx)
        P = P.expand(len(gi), -1) if P.shape[0] == 1 else P
        s = metrics.score_pairs(P, acts[gi], mse_scale, b_rv=b_rv, center=center)
        clusters = np.asarray(gi)
        rung = {m: _summ(v.numpy(), clusters, n_boot, seed) for m, v in s.items()}
        for m, arr in (extra or {}).get(name, {}).items():
            arr = np.asarray(arr, dtype=np.float64)
            keep = np.isfinite(arr)
            if keep.any():
                rung[m] = _summ(arr[keep], clusters[keep], n_boot, seed)
        means[name] = {m: rung[m]["mean"] for m in rung}
        out[name] = rung
    if real_name in means:
        for name, rung in out.items():
            if name == real_name:
                continue
            for m, est in rung.items():
                if m in means[real_name]:
                    est["gap_real_minus_this"] = means[real_name][m] - est["mean"]
    if "mean_direction" in out:
        mu = metrics.mean_direction(acts)
        out["mean_direction"]["note"] = (
            "raw_fve of predicting the dataset mean is 0 by construction; fve_nrm renormalises the "
            f"prediction, so it is 1 - B_mn/B_rv = {1 - metrics.bmn(acts, mse_scale) / b_rv:+.4f} on this run "
            f"(|mu| = {float(mu.norm()):.4f}), not 0")
        out["mean_direction"]["raw_fve_of_dataset_mean"] = metrics.raw_fve(
            acts.mean(0, keepdim=True).expand_as(acts), acts)
    return out


def split_sentences(text: str, max_parts: int = 5) -> list[str]:
    parts = [p.strip() for p in _SENT_RE.split(text.strip()) if p.strip()]
    return parts[:max_parts]


def prefixes(text: str, max_parts: int = 5) -> list[str]:
    """Cumulative sentence prefixes of an explanation: first 1, 2, ... sentences."""
    parts = split_sentences(text, max_parts)
    return [" ".join(parts[: i + 1]) for i in range(len(parts))]


def prefix_curve(rows_metrics: list[dict]) -> dict:
    """rows_metrics: one dict per (row, prefix length) with keys n_sentences, fve_nrm, cos, is_full."""
    out = {}
    for L in sorted({r["n_sentences"] for r in rows_metrics}):
        sel = [r for r in rows_metrics if r["n_sentences"] == L]
        out[str(L)] = {m: float(np.mean([r[m] for r in sel])) for m in ("cos", "fve_nrm")} | {"n": len(sel)}
    full = [r for r in rows_metrics if r["is_full"]]
    if full:
        out["full"] = {m: float(np.mean([r[m] for r in full])) for m in ("cos", "fve_nrm")} | {"n": len(full)}
    return out


def grounding(base: dict[str, np.ndarray], variants: dict[str, dict[str, np.ndarray]], n_boot: int, seed: int,
              clusters: np.ndarray) -> dict:
    """Mean change of each metric when a true / false / neutral sentence is appended to the explanation.

    A reconstruction that tracks content moves toward the activation for the true sentence (positive
    delta) and away for the false one; equal deltas mean the AR reads format, not claims.
    """
    out = {}
    for name, v in variants.items():
        out[name] = {m: _summ(v[m] - base[m], clusters, n_boot, seed) for m in ("cos", "fve_nrm", "centered_cos")}
    if {"true", "false"} <= set(variants):
        d = variants["true"]["fve_nrm"] - variants["false"]["fve_nrm"]
        out["true_minus_false"] = {"fve_nrm": _summ(d, clusters, n_boot, seed)}
    return out


def seed_spread(headlines: list[dict]) -> dict:
    """Seed-to-seed std of every headline number (one dict of numbers per seed)."""
    keys = sorted(set().union(*[h.keys() for h in headlines])) if headlines else []
    out = {}
    for k in keys:
        vals = [h[k] for h in headlines if h.get(k) is not None and math.isfinite(h[k])]
        if len(vals) >= 2:
            out[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)), "min": float(min(vals)),
                      "max": float(max(vals)), "n_seeds": len(vals), "values": [float(x) for x in vals]}
    return out
