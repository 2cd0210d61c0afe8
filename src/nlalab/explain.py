"""One round trip for a handful of prompts or arbitrary vectors: capture -> verbalize -> reconstruct -> score.

Models are loaded one at a time and released before the next, so a pair as large as one GPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from nlalab import metrics
from nlalab.capture import capture
from nlalab.errors import NLALabError
from nlalab.pairs.load import LoadOptions, load_ar, load_av, load_target, release
from nlalab.pairs.resolve import PairDirs
from nlalab.reconstruct import reconstruct
from nlalab.verbalize import GenerationSettings, verbalize

MIN_BRV_SET = 8  # below this, a B_rv from the vectors themselves is too noisy to print


@dataclass
class ExplainResult:
    rows: list[dict]
    vectors: torch.Tensor
    reconstructions: torch.Tensor
    b_rv: Optional[float]
    b_rv_source: str


def explain(
    dirs: PairDirs,
    *,
    prompts: Optional[Sequence[str]] = None,
    vectors: Optional[torch.Tensor] = None,
    labels: Optional[Sequence[str]] = None,
    k: int = 1,
    settings: GenerationSettings = GenerationSettings(),
    opts: LoadOptions = LoadOptions(),
    b_rv: Optional[float] = None,
    progress: bool = False,
) -> ExplainResult:
    if (prompts is None) == (vectors is None):
        raise NLALabError("Give either prompts or vectors to explain.")
    if prompts is not None:
        if not prompts:
            raise NLALabError("No prompts given.")
        if dirs.target is None:
            raise NLALabError("Explaining prompts needs the target model: pass --target (or a registered --pair).")
        target = load_target(dirs.target, dirs.layer, opts)
        cap = capture(target.model, target.tokenizer, list(prompts), dirs.layer, progress=progress)
        release(target)
        vectors = cap.vectors
        labels = list(prompts)
    assert vectors is not None
    labels = list(labels) if labels is not None else [f"vector {i}" for i in range(vectors.shape[0])]
    av = load_av(dirs.av, opts)
    verbs = verbalize(av, vectors, k=k, settings=settings, progress=progress)
    release(av)
    ar = load_ar(dirs.ar, opts, layer=dirs.layer)
    recon = reconstruct(ar, [v.explanation for v in verbs], progress=progress)
    mse_scale = ar.mse_scale
    release(ar)
    gold = vectors[[v.vector_index for v in verbs]]
    source = "given"
    if b_rv is None and vectors.shape[0] >= MIN_BRV_SET:
        b_rv = metrics.brv(vectors, mse_scale)
        source = f"these {vectors.shape[0]} vectors"
    elif b_rv is None:
        source = "none (fewer than 8 vectors; pass --brv)"
    scores = metrics.score_pairs(recon, gold, mse_scale, b_rv=b_rv)
    rows = []
    for i, v in enumerate(verbs):
        row = {"label": labels[v.vector_index], **v.to_dict()}
        row.update({key: float(val[i]) for key, val in scores.items()})
        rows.append(row)
    return ExplainResult(rows=rows, vectors=vectors, reconstructions=recon, b_rv=b_rv, b_rv_source=source)
