"""Padded batches: right-padded and length-bucketed for capture and the AR (token indices stay unshifted),
left-padded for generation; exact-length batches (no padding at all) where results must not depend on
which other rows share the batch."""

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


def exact_length_batches(seqs: Sequence[Sequence[int]], batch_size: int,
                         progress: str | None = None) -> Iterator[list[int]]:
    """Indices grouped by identical length (longest first), at most ``batch_size`` per batch: no row is
    ever padded, so each row's forward has the same shapes it would have alone except the batch dimension.

    Why: in bf16 a padded batch changes the sequence length of every GEMM and the attention kernel (mask
    vs none), which moved AR outputs by ~1% relative (issue 16); equal lengths need no mask at all.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; found {batch_size}")
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    batches = [grp[j:j + batch_size] for n in sorted(by_len, reverse=True)
               for grp in (by_len[n],) for j in range(0, len(grp), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=progress, unit="batch")
    yield from batches
