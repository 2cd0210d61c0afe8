"""Padding helpers: exact layouts (generation needs every row to end at the last column)."""

import torch

from nlalab.batching import left_padded, right_padded


def test_left_and_right_padding_layouts():
    seqs = [[5, 6, 7], [8]]
    ids, mask = left_padded(seqs, 0, "cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = right_padded(seqs, 0, "cpu")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
