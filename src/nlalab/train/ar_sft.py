"""Stage 1, AR SFT: truncated base (K+1 blocks, no final norm) + identity-initialised value head,
regressing the vector at the last token of ``Summary of the following text: <text>{expl}</text> <summary>``
with kitft's direction-only MSE (mse_nrm = 2(1 - cos) at s = sqrt(d)).

Logged per step: ``loss`` (batch-mean mse_nrm before the update), ``fve_nrm = 1 - loss / B_rv``,
``pred_norm``/``gold_norm``, ``lr``, ``grad_norm``; every ``eval_every`` steps the held-out
text-ceiling ``eval_mse_nrm`` / ``eval_fve_nrm`` (the AR reading the gold explanation of unseen rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from nlalab.train.common import SFTSettings, StageResult, run_sft
from nlalab.train.models import TrainAR, ar_loss, ar_scores


class ARSFTSettings(SFTSettings):
    pass  # SFTSettings' defaults are the AR's


def _eval(tar: TrainAR, texts: Sequence[str], vectors: torch.Tensor, b_rv: Optional[float]) -> dict:
    was = tar.model.training
    tar.model.eval()
    mse = ar_scores(tar.ar, list(texts), vectors)
    if was:
        tar.model.train()
    m = float(mse.mean())
    return {"eval_mse_nrm": m, "eval_fve_nrm": (1 - m / b_rv) if b_rv else None}


def train_ar_sft(tar: TrainAR, texts: Sequence[str], vectors: torch.Tensor, settings: ARSFTSettings,
                 out_dir: str | Path, *, b_rv: Optional[float] = None, eval_texts: Optional[Sequence[str]] = None,
                 eval_vectors: Optional[torch.Tensor] = None, resume: bool = True,
                 on_log=None, kinds: Optional[Sequence[str]] = None) -> StageResult:
    """Train ``tar`` in place for ``settings.steps`` optimizer steps; checkpoints and curves under ``out_dir``.

    ``kinds`` (one per row) lets ``settings.chat_fraction`` fix the share of chat-last-token rows per batch."""
    texts = list(texts)
    ev_t = list(eval_texts or [])[: settings.eval_size]
    ev_v = eval_vectors[: len(ev_t)] if eval_vectors is not None and ev_t else None

    def step_loss(idx: Sequence[int], mb: int) -> dict:
        total = 0.0
        for i in range(0, len(idx), mb):
            sub = idx[i:i + mb]
            per = ar_loss(tar.ar, [texts[j] for j in sub], vectors[sub])
            (per.sum() / len(idx)).backward()
            total += float(per.detach().sum())
        loss = total / len(idx)
        return {"loss": loss, "fve_nrm": (1 - loss / b_rv) if b_rv else None}

    return run_sft("ar_sft", "ar", tar.modules(), len(texts), settings, out_dir, step_loss,
                   evaluate=(lambda: _eval(tar, ev_t, ev_v, b_rv)) if ev_v is not None else None,
                   resume=resume, on_log=on_log, kinds=kinds)


def initial_loss(tar: TrainAR, texts: Sequence[str], vectors: torch.Tensor) -> float:
    """Batch-mean mse_nrm without training (for tests and logs)."""
    return float(ar_scores(tar.ar, list(texts), vectors).mean())


__all__ = ["ARSFTSettings", "train_ar_sft", "initial_loss"]
