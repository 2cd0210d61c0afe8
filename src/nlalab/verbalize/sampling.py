"""Batch-invariant sampling: every row draws from its own counter-based noise stream.

The noise for (seed, row key, step, token) is a pure hash, so a row's sample does not depend on
which batch it ran in, on micro-batch size, on resume after a crash, or on the GPU count. Sampling
is Gumbel-max over temperature-scaled, top-k/top-p-filtered logits, which draws exactly from the
filtered softmax distribution (same distribution as transformers' sampler, different stream).
"""

from __future__ import annotations

from typing import Sequence

import torch

MASK32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on int64 tensors holding values in [0, 2^32)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    x = x ^ (x >> 16)
    return x


def row_keys(seed: int, vector_keys: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """One stream id per (vector, sample): stable across batching and runs."""
    s = hash32(torch.full_like(vector_keys, int(seed) & MASK32))
    return hash32(hash32(s ^ hash32(vector_keys)) ^ (sample * 0x9E3779B1 & MASK32))


def uniform(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """U(0,1) noise [B, V] for one decode step."""
    k = hash32(keys ^ ((step * 0x85EBCA77 + 0x165667B1) & MASK32)).unsqueeze(1)
    v = torch.arange(vocab, device=keys.device, dtype=torch.int64).unsqueeze(0)
    bits = hash32(k ^ hash32(v * 0x27D4EB2F & MASK32))
    return (bits.to(torch.float64) + 0.5) / 4294967296.0


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits outside top-k / the top-p nucleus with -inf (fp32)."""
    logits = logits.float()
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        remove = (cum - probs) >= top_p  # keep the smallest prefix whose mass reaches top_p
        remove[..., 0] = False
        mask = torch.zeros_like(remove).scatter(-1, idx, remove)
        logits = logits.masked_fill(mask, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, keys: torch.Tensor, step: int, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0, greedy: bool = False) -> torch.Tensor:
    if greedy or temperature == 0:
        return logits.float().argmax(-1)
    lg = filter_logits(logits, top_k, top_p) / float(temperature)
    u = uniform(keys, step, lg.shape[-1])
    gumbel = -torch.log(-torch.log(u))
    return (lg.double() + gumbel).argmax(-1)


def stream_keys(seed: int, keys_v: Sequence, vidx: Sequence[int], sidx: Sequence[int], device) -> torch.Tensor:
    """Noise-stream ids of rows: ``keys_v[i]`` is vector i's key (stream (seed, key, sample)), or a
    (seed, key) pair when rows of one call use different seeds (a study's plan runs several jobs at once)."""
    if keys_v and isinstance(keys_v[vidx[0]] if vidx else keys_v[0], tuple):
        seeds = torch.tensor([int(keys_v[i][0]) & MASK32 for i in vidx], device=device)
        vk = torch.tensor([int(keys_v[i][1]) for i in vidx], device=device)
        s = torch.tensor(sidx, device=device)
        return hash32(hash32(hash32(seeds) ^ hash32(vk)) ^ (s * 0x9E3779B1 & MASK32))
    return row_keys(seed, torch.tensor([int(keys_v[i]) for i in vidx], device=device), torch.tensor(sidx, device=device))
