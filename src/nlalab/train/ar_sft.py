"""Stage 1, AR SFT: truncated base (K+1 blocks, no final norm) + identity-initialised value head,
regressing the vector at the last token of ``Summary of the following text: <text>{expl}</text> <summary>``
with kitft's direction-only MSE (mse_nrm = 2(1 - cos) at s = sqrt(d)).

Logged per step: ``loss`` (batch-mean mse_nrm before the update), ``fve_nrm = 1 - loss / B_rv``,
``pred_norm``/``gold_norm``, ``lr``, ``grad_norm``; every ``eval_every`` steps the held-out
text-ceiling ``eval_mse_nrm`` / ``eval_fve_nrm`` (the AR reading the gold explanation of unseen rows).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from pydantic import BaseModel, Field

from nlalab.train.common import (
    Checkpointer, CurveLog, OptimSettings, StageResult, batch_indices, clip_and_step, make_optimizer,
    set_lr, trainable_named,
)
from nlalab.train.models import TrainAR, ar_loss, ar_scores


class ARSFTSettings(BaseModel):
    steps: int = 300
    batch_size: int = 64
    micro_batch_size: int = 64
    optim: OptimSettings = Field(default_factory=lambda: OptimSettings(lr=3e-5, warmup_steps=10))
    eval_every: int = 50
    eval_size: int = 256
    ckpt_every: int = 100
    log_every: int = 1
    seed: int = 42


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
                 on_log=None) -> StageResult:
    """Train ``tar`` in place for ``settings.steps`` optimizer steps; checkpoints and curves under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    n = len(texts)
    params = trainable_named(tar.modules())
    plist = list(params.values())
    opt = make_optimizer(plist, settings.optim)
    ck = Checkpointer(out / "ckpt")
    curves = CurveLog(out / "curves.jsonl")
    start = 0
    if resume and ck.exists():
        start, _ = ck.load(params, {"ar": opt})
    curves.truncate(start)
    ev_t = list(eval_texts or [])[: settings.eval_size]
    ev_v = eval_vectors[: len(ev_t)] if eval_vectors is not None and ev_t else None
    if start == 0 and ev_v is not None:
        curves.log({"step": 0, **_eval(tar, ev_t, ev_v, b_rv)})
    last: dict = {}
    mb = max(1, min(settings.micro_batch_size, settings.batch_size))
    for step in range(start, settings.steps):
        t0 = time.perf_counter()
        lr = set_lr(opt, settings.optim, step)
        idx = batch_indices(n, settings.batch_size, step, settings.seed)
        total, pn, gn = 0.0, 0.0, 0.0
        for i in range(0, len(idx), mb):
            sub = idx[i:i + mb]
            per = ar_loss(tar.ar, [texts[j] for j in sub], vectors[sub])
            (per.sum() / len(idx)).backward()
            total += float(per.detach().sum())
        loss = total / len(idx)
        grad_norm = clip_and_step(opt, plist, settings.optim.grad_clip)
        row = {"step": step + 1, "loss": loss, "fve_nrm": (1 - loss / b_rv) if b_rv else None, "lr": lr,
               "grad_norm": grad_norm, "time_s": time.perf_counter() - t0}
        if ev_v is not None and ((step + 1) % settings.eval_every == 0 or step + 1 == settings.steps):
            row.update(_eval(tar, ev_t, ev_v, b_rv))
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps or "eval_mse_nrm" in row:
            curves.log(row)
            if on_log:
                on_log("ar_sft", row)
        last = row
        if settings.ckpt_every and (step + 1) % settings.ckpt_every == 0 and step + 1 < settings.steps:
            ck.save(step + 1, params, {"ar": opt})
    if settings.steps > start:
        ck.save(settings.steps, params, {"ar": opt})
    return StageResult(out_dir=out, steps=settings.steps, metrics=last)


def initial_loss(tar: TrainAR, texts: Sequence[str], vectors: torch.Tensor) -> float:
    """Batch-mean mse_nrm without training (for tests and logs)."""
    return float(ar_scores(tar.ar, list(texts), vectors).mean())


__all__ = ["ARSFTSettings", "train_ar_sft", "initial_loss"]
