"""Held-out evaluation of a pair during and after training: round trip (AV -> AR) and the AR text ceiling.

Metrics use the training-repo definitions (``nlalab.metrics``): mse_nrm, cos, and
``fve_nrm = 1 - mse_nrm / B_rv`` with B_rv a named dataset constant (training vectors of the same
kind: raw positions or chat last tokens). The predict-the-mean-direction control is reported next to
them: a pair must beat it (fve_nrm > its value, which is <= 0) to carry item-specific information.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from nlalab import metrics
from nlalab.pairs.load import AR, AV
from nlalab.reconstruct import reconstruct
from nlalab.verbalize import GenerationSettings, verbalize


def _summary(pred: torch.Tensor, gold: torch.Tensor, scale: float, b_rv: Optional[float],
             mean_dir: Optional[torch.Tensor]) -> dict:
    mse = metrics.mse_nrm(pred, gold, scale)
    out = {"n": int(gold.shape[0]), "mse_nrm": float(mse.mean()), "cos": float(metrics.cos(pred, gold).mean())}
    if b_rv:
        out["fve_nrm"] = 1 - out["mse_nrm"] / b_rv
        out["b_rv"] = b_rv
    if mean_dir is not None:
        m = float(metrics.mse_nrm(mean_dir.expand_as(gold.double()), gold, scale).mean())
        out["mean_direction_mse_nrm"] = m
        if b_rv:
            out["mean_direction_fve_nrm"] = 1 - m / b_rv
    return out


def round_trip(av: AV, ar: AR, vectors: torch.Tensor, *, max_new_tokens: int = 150, greedy: bool = True,
               temperature: float = 1.0, b_rv: Optional[float] = None, mean_dir: Optional[torch.Tensor] = None,
               batch_size: int = 256, seed: int = 42, n_samples: int = 4,
               prompts: Optional[Sequence[str]] = None) -> dict:
    """AV explains each vector (greedy by default), the AR reconstructs it from the explanation.

    ``prompts`` (one per vector: for chat-last-token rows the user's message) adds the seed's keyword
    recall and hit rate of the explanation against it (:func:`keyword_summary`)."""
    was_av, was_ar = av.model.training, ar.model.training
    av.model.eval()
    ar.model.eval()
    try:
        gs = GenerationSettings(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, seed=seed,
                                batch_size=batch_size, engine="loop")
        verbs = verbalize(av, vectors, k=1, settings=gs)
        expl = [v.explanation for v in verbs]
        pred = reconstruct(ar, expl, batch_size=batch_size)
    finally:
        av.model.train(was_av)
        ar.model.train(was_ar)
    out = _summary(pred, vectors, ar.mse_scale, b_rv, mean_dir)
    n = len(verbs)
    out.update({
        "fail_frac": sum(v.missing_close_tag or v.truncated or v.empty for v in verbs) / n,
        "cjk_frac": sum(v.cjk_smell for v in verbs) / n,
        "response_tokens": sum(v.n_new_tokens for v in verbs) / n,
        "samples": [v.explanation[:400] for v in verbs[:n_samples]],
    })
    if prompts is not None:
        out.update(keyword_summary(prompts, expl))
    return out


def keyword_summary(prompts: Sequence[str], explanations: Sequence[str]) -> dict:
    """Mean keyword recall and hit rate (``nlalab.scorers.keyword``, as the study scores them) over the rows
    whose prompt has content words; ``keyword_n`` counts those rows (None means: no such row, not 0)."""
    from nlalab.scorers.keyword import keyword_hit, keyword_recall

    rec = [keyword_recall(p, e) for p, e in zip(prompts, explanations)]
    hit = [keyword_hit(p, e) for p, e in zip(prompts, explanations)]
    rec = [r for r in rec if r is not None]
    hit = [float(h) for h in hit if h is not None]
    return {"keyword_recall": sum(rec) / len(rec) if rec else None,
            "keyword_hit": sum(hit) / len(hit) if hit else None, "keyword_n": len(rec)}


def text_ceiling(ar: AR, explanations: Sequence[str], vectors: torch.Tensor, *, b_rv: Optional[float] = None,
                 mean_dir: Optional[torch.Tensor] = None, batch_size: int = 64) -> dict:
    """The AR reading the gold explanations of held-out rows (what a perfect AV could reach)."""
    was = ar.model.training
    ar.model.eval()
    try:
        pred = reconstruct(ar, list(explanations), batch_size=batch_size)
    finally:
        ar.model.train(was)
    return _summary(pred, vectors, ar.mse_scale, b_rv, mean_dir)
