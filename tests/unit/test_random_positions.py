"""random_positions reproduces kitft's stage-0 draw exactly (nla/datagen/stage0_extract.py:_sample_positions)."""

from __future__ import annotations

import hashlib
import random

from nlalab.capture import random_positions


def _reference(token_ids, n_positions, special_ids, doc_id, seed):
    # written out independently from the reference's text, not calling nlalab
    rng = random.Random(hashlib.sha256(f"{seed}|{doc_id}".encode()).digest())
    candidates = [i for i, tid in enumerate(token_ids) if i >= 50 and tid not in special_ids]
    if not candidates:
        return []
    return rng.sample(candidates, k=min(n_positions, len(candidates)))


def test_known_answer_fixed_seed_doc_and_tokens():
    ids = [1] + [1000 + i for i in range(119)]  # BOS then 119 ordinary tokens
    ids[57] = ids[90] = 2  # two special tokens past position 50
    doc = "openbmb/Ultra-FineWeb:en:17"
    got = random_positions(ids, doc, 42, 10, {1, 2})
    assert got == _reference(ids, 10, {1, 2}, doc, 42)
    # the literal draw, so a change of RNG (e.g. numpy) is caught even if the helper above were edited too
    assert got == [111, 89, 84, 115, 52, 108, 65, 58, 117, 113]
    assert 57 not in got and 90 not in got and min(got) >= 50
    assert len(set(got)) == 10


def test_draw_order_not_sorted_and_seed_dependent():
    ids = list(range(300))
    a = random_positions(ids, "doc", 42, 10, set())
    assert a == _reference(ids, 10, set(), "doc", 42)
    assert a != sorted(a)  # the reference keeps draw order
    assert random_positions(ids, "doc", 43, 10, set()) != a
    assert random_positions(ids, "doc2", 42, 10, set()) != a


def test_short_and_all_special_documents():
    assert random_positions(list(range(50)), "d", 42, 10, set()) == []  # only positions 0..49
    assert random_positions([7] * 80, "d", 42, 10, {7}) == []  # all special past 50
    # fewer candidates than asked: all of them, in the reference's order
    ids = list(range(53))
    got = random_positions(ids, "d", 42, 10, set())
    assert sorted(got) == [50, 51, 52] and got == _reference(ids, 10, set(), "d", 42)
