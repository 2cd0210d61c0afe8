"""Retrieval accuracy: can the explanation pick its own prompt out of the corpus?

For every explanation, all candidate prompts (in a run: every corpus item of the run) are ranked by
the cosine similarity of their MiniLM embedding to the explanation's (:mod:`nlalab.scorers.embedding`).
The *rank* of the true prompt is ``1 + #{other candidates with similarity >= the true prompt's - 1e-6}``:
ties count against the true prompt, so a degenerate explanation that is equally close to every prompt
gets the worst rank, never the best. Per explanation:

- ``top1`` = 1 if rank == 1 else 0;
- ``top5`` = 1 if rank <= 5 else 0;
- ``mrr``  = 1 / rank (its mean is the mean reciprocal rank).

Chance levels for ``n`` candidates (a uniformly random rank): top-1 ``1/n``, top-5 ``min(5, n)/n``,
MRR ``H_n / n`` (``H_n`` the n-th harmonic number). An explanation that is the same text for every
prompt ranks each prompt exactly once at each position, so its means equal these chance levels
exactly (when the n similarities are distinct).

Duplicate prompt texts are merged into one candidate (two items with the same prompt are the same
target; the explanation cannot tell them apart).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from nlalab.errors import NLALabError
from nlalab.scorers.embedding import embed, model_info

__all__ = ["RetrievalScorer", "rank_matrix", "chance_levels", "TIE_TOL"]

TIE_TOL = 1e-6
TOP_K = 5


def chance_levels(n: int) -> dict[str, float]:
    """Expected top1 / top5 / mrr of a uniformly random rank among ``n`` candidates."""
    if n < 1:
        raise ValueError(f"n: expected >= 1 candidates; found {n}")
    h = math.fsum(1.0 / k for k in range(1, n + 1))
    return {"top1": 1.0 / n, "top5": min(TOP_K, n) / n, "mrr": h / n}


def rank_matrix(sims: np.ndarray, tol: float = TIE_TOL) -> np.ndarray:
    """``R[i, j]`` = rank of candidate ``i`` for query column ``j`` of ``sims`` ([n_candidates, n_queries]),
    ties counted against ``i``: ``#{k : sims[k, j] >= sims[i, j] - tol}`` (which includes ``i`` itself)."""
    s = np.asarray(sims, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"sims: expected a 2-D [candidates, queries] matrix; found shape {s.shape}")
    n = s.shape[0]
    out = np.empty(s.shape, dtype=np.int64)
    for j in range(s.shape[1]):
        col = np.sort(s[:, j])
        out[:, j] = n - np.searchsorted(col, s[:, j] - tol, side="left")
    return out


class RetrievalScorer:
    """Rank of the true prompt among the candidate prompts by embedding similarity to the explanation."""

    name = "retrieval"
    metrics = ("top1", "top5", "mrr")
    labels = {"top1": "retrieval top-1", "top5": "retrieval top-5", "mrr": "retrieval MRR"}

    def __init__(self, candidates: Optional[Sequence[str]] = None, model_path: Union[str, Path, None] = None,
                 tol: float = TIE_TOL):
        self.candidates = None if candidates is None else list(dict.fromkeys(candidates))
        self.model_path = model_path
        self.tol = float(tol)

    def describe(self) -> dict:
        d = model_info(self.model_path)
        d.update(ranking="rank of the true prompt among all candidate prompts by cosine similarity; ties count "
                         f"against the true prompt (tolerance {self.tol:g})",
                 candidates="all distinct prompts of the run's corpus" if self.candidates is None
                 else f"{len(self.candidates)} given prompts")
        return d

    def chance(self, n_candidates: int) -> dict[str, float]:
        return chance_levels(n_candidates)

    # -------------------------------------------------------------------------------------------

    def _candidates_for(self, prompts: Sequence[str]) -> list[str]:
        cands = self.candidates if self.candidates is not None else list(dict.fromkeys(prompts))
        missing = sorted({p for p in prompts} - set(cands))
        if missing:
            raise NLALabError(
                f"scorer 'retrieval': {len(missing)} prompt(s) are not among the {len(cands)} candidates, e.g. "
                f"{missing[0][:80]!r}. Fix: include every scored prompt in `candidates` (or leave it None)."
            )
        return cands

    def ranks(self, prompts: list[str], explanations: list[str]) -> np.ndarray:
        """Rank (1 = best) of ``prompts[j]`` among the candidates for ``explanations[j]``."""
        from nlalab.scorers import _check_lengths

        _check_lengths(self.name, list(prompts), list(explanations))
        if not prompts:
            return np.zeros(0, dtype=np.int64)
        cands = self._candidates_for(prompts)
        pos = {c: i for i, c in enumerate(cands)}
        C = embed(cands, self.model_path)
        E = embed(explanations, self.model_path)
        sims = C @ E.T  # [n_candidates, n_explanations]
        idx = np.array([pos[p] for p in prompts])
        true = sims[idx, np.arange(len(prompts))]
        return (sims >= true[None, :] - self.tol).sum(0).astype(np.int64)

    def score_detail(self, prompts: list[str], explanations: list[str]) -> dict[str, list]:
        r = self.ranks(prompts, explanations)
        return {"rank": [int(x) for x in r], "top1": [float(x == 1) for x in r],
                "top5": [float(x <= TOP_K) for x in r], "mrr": [1.0 / float(x) for x in r]}

    def score(self, prompts: list[str], explanations: list[str]) -> list[Optional[float]]:
        """Reciprocal rank of the true prompt, one value per pair (its mean is the MRR)."""
        return self.score_detail(prompts, explanations)["mrr"]

    def score_matrices(self, prompts: list[str], explanations: list[str]) -> dict[str, tuple[np.ndarray, None]]:
        """``{metric: (S, None)}`` with ``S[i, j]`` the metric if ``prompts[i]`` were the true prompt of
        explanation ``j``; the candidates are ``prompts`` (distinct) plus any given at construction."""
        cands = self._candidates_for(prompts)
        pos = {c: i for i, c in enumerate(cands)}
        C = embed(cands, self.model_path)
        E = embed(explanations, self.model_path)
        R = rank_matrix(C @ E.T, self.tol)[[pos[p] for p in prompts]].astype(np.float64)
        return {"top1": ((R == 1).astype(np.float64), None), "top5": ((R <= TOP_K).astype(np.float64), None),
                "mrr": (1.0 / R, None)}

    def n_candidates(self, prompts: Sequence[str]) -> int:
        return len(self._candidates_for(prompts))

