"""Stage 2, AV SFT: cross-entropy on ``<explanation>\\n{expl}\\n</explanation>`` + the turn-close token(s),
with the canonical AV prompt masked and the vector injected at the marker through the embedding hook.

The key diagnostic is kitft's real-vs-shuffled gap: on a held-out batch, the same explanations are
scored with their own vectors and with a derangement of the vectors; ``eval_gap = CE(shuffled) -
CE(real)`` > 0 means the AV reads the vector (Qwen production: 1.71 vs 1.50).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from pydantic import Field

from nlalab.train.common import OptimSettings, SFTSettings, StageResult, run_sft
from nlalab.train.models import TrainAV, response_ids, sft_ce


class AVSFTSettings(SFTSettings):
    steps: int = 500
    batch_size: int = 32
    micro_batch_size: int = 32
    optim: OptimSettings = Field(default_factory=lambda: OptimSettings(lr=3e-5, warmup_steps=20))
    max_response_tokens: int = 160
    eval_size: int = 64


def derangement(n: int, seed: int = 0) -> list[int]:
    """A permutation with no fixed point (n >= 2): each row gets another row's vector."""
    if n < 2:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[(perm.index(i) + 1) % n] for i in range(n)]


@torch.no_grad()
def eval_ce(tav: TrainAV, explanations: Sequence[str], vectors: torch.Tensor, micro: int = 32,
            max_response_tokens: Optional[int] = None, shuffle_seed: int = 0) -> dict:
    """Held-out token CE with the real vectors and with deranged vectors, and their gap."""
    was = tav.model.training
    tav.model.eval()
    perm = derangement(len(explanations), shuffle_seed)
    res = {}
    for name, vecs in (("real", vectors), ("shuffled", vectors[perm])):
        tot, cnt = 0.0, 0.0
        for i in range(0, len(explanations), micro):
            s, c = sft_ce(tav, explanations[i:i + micro], vecs[i:i + micro], max_response_tokens=max_response_tokens)
            tot += float(s)
            cnt += float(c)
        res[f"eval_ce_{name}"] = tot / max(cnt, 1.0)
    if was:
        tav.model.train()
    res["eval_gap"] = res["eval_ce_shuffled"] - res["eval_ce_real"]
    return res


def train_av_sft(tav: TrainAV, explanations: Sequence[str], vectors: torch.Tensor, settings: AVSFTSettings,
                 out_dir: str | Path, *, eval_explanations: Optional[Sequence[str]] = None,
                 eval_vectors: Optional[torch.Tensor] = None, resume: bool = True, on_log=None,
                 kinds: Optional[Sequence[str]] = None) -> StageResult:
    """Train ``tav`` in place; ``kinds`` (one per row) lets ``settings.chat_fraction`` fix the batch mix."""
    expl = list(explanations)
    ev_e = list(eval_explanations or [])[: settings.eval_size]
    ev_v = eval_vectors[: len(ev_e)] if eval_vectors is not None and len(ev_e) >= 2 else None
    mb = max(1, min(settings.micro_batch_size, settings.batch_size))

    def do_eval() -> dict:
        return eval_ce(tav, ev_e, ev_v, micro=mb, max_response_tokens=settings.max_response_tokens,
                       shuffle_seed=settings.seed)

    def step_loss(idx: Sequence[int], mb: int) -> dict:
        # Token-mean over the whole batch: each micro-batch's NLL sum is divided by the batch's token count.
        n_tok = float(sum(min(len(response_ids(tav.av, expl[j], tav.close_ids)), settings.max_response_tokens
                              or 10**9) for j in idx))
        total = 0.0
        for i in range(0, len(idx), mb):
            sub = idx[i:i + mb]
            s, _ = sft_ce(tav, [expl[j] for j in sub], vectors[sub], max_response_tokens=settings.max_response_tokens)
            (s / n_tok).backward()
            total += float(s.detach())
        return {"loss": total / n_tok, "tokens": n_tok}

    return run_sft("av_sft", "av", tav.modules(), len(expl), settings, out_dir, step_loss,
                   evaluate=do_eval if ev_v is not None else None, resume=resume, on_log=on_log, kinds=kinds)
