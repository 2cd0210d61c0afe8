"""Padded batches: right-padded and length-bucketed for capture and the AR (token indices stay unshifted),
left-padded for generation."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


def right_padded(seqs: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids and attention mask, each sequence left-aligned."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


def left_padded(seqs: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids and attention mask, each sequence right-aligned (generation: every row ends at T - 1)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, T - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[r, T - len(s):] = 1
    return ids.to(device), mask.to(device)


def length_buckets(seqs: Sequence[Sequence[int]], batch_size: int, progress: str | None = None) -> Iterator[list[int]]:
    """Indices grouped longest-first, so each batch pads little."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=progress, unit="batch")
    yield from batches
