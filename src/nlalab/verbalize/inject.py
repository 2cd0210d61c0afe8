"""Write the rescaled vector into the marker row of the AV's input embeddings.

The model's own embedding module is called first, so Gemma's sqrt(d) scale applies to every other
token; the vector itself is rescaled to ``injection_scale`` in fp32 and cast once (kitft: bf16 at
Gemma's 60k-80k norms loses precision otherwise), never multiplied by the embed scale.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from nlalab.errors import NLALabError, UsageError, check_finite
from nlalab.pairs.markers import find_injection_rows


def rescale(vectors: torch.Tensor, scale: float) -> torch.Tensor:
    """kitft normalize_activation: v / (||v||_fp32 / s), norm clamped at 1e-12 (zero stays zero)."""
    v = vectors.to(torch.float32)
    norm = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return v / (norm / float(scale))


def injected_embeds(model: nn.Module, prompt_ids: Sequence[int], vectors: torch.Tensor, marker_pos: int,
                    scale: float) -> torch.Tensor:
    """[B, T, d] input embeddings: the shared prompt, with row ``marker_pos`` replaced per vector."""
    if vectors.ndim != 2:
        raise UsageError(f"Expected vectors of shape [n, d], got {tuple(vectors.shape)}. Fix: pass a 2-D array.")
    emb_mod = model.get_input_embeddings()
    d = emb_mod.weight.shape[-1]
    if vectors.shape[1] != d:
        raise UsageError(
            f"Vectors have d={vectors.shape[1]} but the AV's embeddings have d={d}. "
            "Fix: capture from the pair's target model at the pair's layer."
        )
    check_finite(vectors, "Vectors to verbalize")
    device = emb_mod.weight.device
    ids = torch.tensor(list(prompt_ids), dtype=torch.long, device=device).unsqueeze(0).expand(vectors.shape[0], -1)
    with torch.no_grad():
        emb = emb_mod(ids).clone()
        emb[:, marker_pos] = rescale(vectors.to(device), scale).to(emb.dtype)
    return emb


@contextmanager
def injection_hook(model: nn.Module, vectors: torch.Tensor, scale: float, marker_id: int, left_id: int,
                   right_id: int) -> Iterator[None]:
    """Training-style injection: rewrite the embedding output wherever the marker (with its pinned
    neighbours) appears in ``input_ids``. A no-op on decode steps, which carry no marker."""
    vecs = rescale(vectors, scale)

    def hook(_mod, inputs, output):
        ids = inputs[0]
        if ids.shape[-1] < 3:
            return output
        sites = [(b, p) for b in range(ids.shape[0])
                 for p in find_injection_rows(ids[b].tolist(), marker_id, left_id, right_id)]
        if not sites:
            return output
        if len(sites) != vecs.shape[0]:
            raise NLALabError(f"Found {len(sites)} marker sites for {vecs.shape[0]} vectors.")
        out = output.clone()
        for (b, p), v in zip(sites, vecs):
            out[b, p] = v.to(out.device, out.dtype)
        return out

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
