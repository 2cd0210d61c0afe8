"""Shared-prefix AR forwards (nlalab.reconstruct.trie): the trie plan, the tree mask, and reconstructions
within the fp32 batch tolerance of the padded forward on every fixture family, with its fallbacks."""

from __future__ import annotations

import warnings

import pytest
import torch

from nlalab.errors import UsageError
from nlalab.pairs.load import LoadOptions, load_ar
from nlalab.reconstruct import (BATCH_TOLERANCE, ar_input_ids, max_rel_change, reconstruct, share_prefix_plan,
                               trie)
from nlalab.testing import torch_threads

# sentence prefixes of two explanations (as the prefix control writes them), a repeat, and unrelated rows
A = ["The user asks about Paris.", "It names the Louvre.", "The reply will list museums.", "Key words: art."]
B = ["Python code sorts a list.", "The last token opens a parenthesis."]
TEXTS = ([" ".join(A[:i]) for i in range(1, len(A) + 1)] + [" ".join(B[:i]) for i in range(1, len(B) + 1)]
         + [" ".join(A[:2]), "A friendly chat reply.", "Recipe for bread, with flour and water and salt and time."])


# ------------------------------------------------------------------------------------------- the plan


def test_plan_computes_each_distinct_prefix_once():
    ids = [[1, 2, 3], [1, 2, 4], [1, 2], [5], [1, 2, 3]]
    (c,) = trie.plan(ids, cap=100)
    # distinct prefixes: 1, 12, 123, 124, 5
    assert len(c.tokens) == 5
    assert sorted(zip(c.tokens, c.depth)) == [(1, 0), (2, 1), (3, 2), (4, 2), (5, 0)]
    for r, seq in enumerate(ids):  # walking parents up from a row's end spells the row backwards
        node, got = c.ends[r], []
        while node >= 0:
            got.append(c.tokens[node])
            node = c.parent[node]
        assert got[::-1] == seq
    assert c.ends[0] == c.ends[4]  # a repeated row ends on the same node
    assert c.ends[2] == c.parent[c.ends[0]]  # a row that is a prefix of another ends inside it


def test_plan_keeps_rows_whole_and_respects_the_cap():
    ids = [[7] + [i] * 5 for i in range(10)]
    chunks = trie.plan(ids, cap=13)
    assert sorted(r for c in chunks for r in c.ends) == list(range(len(ids)))
    for c in chunks:
        assert len(c.tokens) <= 13
        for r, node in c.ends.items():
            assert c.depth[node] == len(ids[r]) - 1
    # 6-token rows share their first token: two fit in 11 nodes, a third would need 16
    assert [len(c.ends) for c in chunks] == [2] * 5
    # a row longer than the cap raises the cap to its length (a chunk of its own here), not an error
    chunks = trie.plan(ids + [list(range(40))], cap=13)
    assert any(len(c.tokens) == 40 and len(c.ends) == 1 for c in chunks)
    assert all(len(c.tokens) <= 40 for c in chunks)


def test_ancestor_mask_known_answer():
    # 0 -> 1 -> 2, 0 -> 3, 4 (a second root); one padding node
    m = trie.ancestor_mask([-1, 0, 1, 0, -1], n=6)
    want = torch.tensor([[1, 0, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0, 0],
                         [1, 1, 1, 0, 0, 0],
                         [1, 0, 0, 1, 0, 0],
                         [0, 0, 0, 0, 1, 0],
                         [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(m, want)


def test_batches_group_chunks_up_to_the_row_budget():
    ids = [[i, j] for i in range(6) for j in range(3)]  # 6 first tokens x 3 rows each
    chunks = trie.plan(ids, cap=4)  # one first token and its three rows per chunk
    assert [len(c.ends) for c in chunks] == [3] * 6
    got = trie.batches(chunks, rows_per_batch=7)
    assert [sum(len(c.ends) for c in g) for g in got] == [6, 6, 6]
    assert [len(g) for g in trie.batches(chunks, rows_per_batch=1)] == [1] * 6  # a chunk never splits


def test_sliding_masks_drop_keys_beyond_the_window():
    pos = torch.tensor([[0, 1, 2, 3]])
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()

    class M:  # a model with sliding layers of window 2 (what layer_masks reads)
        class config:
            _attn_implementation = "sdpa"
            layer_types = ["sliding_attention", "full_attention"]
            sliding_window = 2

    got = trie.layer_masks(M, mask, pos, torch.float32)
    assert torch.equal(got["full_attention"], mask)
    assert got["sliding_attention"][0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    M.config._attn_implementation = "eager"
    add = trie.layer_masks(M, mask, pos, torch.float32)["sliding_attention"]
    assert add[0, 0, 2, 0] == torch.finfo(torch.float32).min and add[0, 0, 2, 1] == 0


def test_max_rel_change_known_answers():
    ref = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert max_rel_change(ref, ref) == 0.0  # two zero vectors agree
    assert max_rel_change(torch.tensor([[3.0, 4.5], [0.0, 0.0]]), ref) == pytest.approx(0.1)
    assert max_rel_change(torch.tensor([[3.0, 4.0], [0.0, 1e-3]]), ref) > 1e30  # off a zero reference: huge
    nan = max_rel_change(torch.tensor([[float("nan"), 4.0], [0.0, 0.0]]), ref)
    assert nan != nan and not nan <= 1.0  # NaN passes no tolerance


# ------------------------------------------------------------------------------------------- the forward


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3_text", "gemma3_mm"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_shared_prefix_matches_the_padded_forward(fixture_pairs, arch, impl):
    p = fixture_pairs[arch]
    with torch_threads(1):
        ar = load_ar(p.ar, LoadOptions(device="cpu", dtype="fp32"), layer=p.layer)
        ar.model.set_attn_implementation(impl)
        assert trie.unsupported_reason(ar.model) is None
        ids = ar_input_ids(ar, TEXTS)
        chunks = trie.plan(ids)
        assert sum(len(c.tokens) for c in chunks) < 0.7 * sum(map(len, ids))  # prefixes really are shared
        if arch.startswith("gemma"):  # the fixture's window (8) is shorter than the inputs: sliding masks matter
            assert trie.window_of(ar.model) < max(map(len, ids))
        info: dict = {}
        shared = reconstruct(ar, TEXTS, batch_size=3, info=info)
        assert info["forward"] == "shared-prefix"
        padded = reconstruct(ar, TEXTS, batch_size=3, share_prefix="off", info=info)
        assert info["forward"].startswith("padded")
        single = torch.cat([reconstruct(ar, [t], share_prefix="off") for t in TEXTS])
    assert max_rel_change(shared, padded) <= BATCH_TOLERANCE["fp32"]
    assert max_rel_change(shared, single) <= BATCH_TOLERANCE["fp32"]
    assert torch.equal(shared[len(A) + len(B)], shared[1])  # the repeat ends on the same node: the same vector
    # the rows are not all alike, so the tolerance check above can fail
    assert max_rel_change(shared[:1], shared[-1:]) > 1e-2


def test_shared_prefix_fallbacks(fixture_pairs):
    p = fixture_pairs["qwen2"]
    ar = load_ar(p.ar, LoadOptions(device="cpu", dtype="fp32"), layer=p.layer)
    ids = ar_input_ids(ar, TEXTS)
    assert share_prefix_plan(ar, ids, "auto", False, None) == (True, "on")
    assert share_prefix_plan(ar, ids, "off", False, None) == (False, "off")
    assert not share_prefix_plan(ar, ids, "on", True, None)[0]  # pad-free batches are their own contract
    with pytest.raises(UsageError, match="--ar-share-prefix"):
        share_prefix_plan(ar, ids, "always", False, None)
    bf = load_ar(p.ar, LoadOptions(device="cpu", dtype="bf16"), layer=p.layer)
    use, why = share_prefix_plan(bf, ids, "auto", False, None)
    assert not use and "bf16" in why
    assert share_prefix_plan(bf, ids, "on", False, None)[0]
    ar.model.config._attn_implementation = "flex_attention"
    use, why = share_prefix_plan(ar, ids, "auto", False, None)
    assert not use and "flex_attention" in why


def test_a_failed_check_falls_back_to_the_padded_forward(fixture_pairs, monkeypatch):
    """If the tree forward disagrees with the padded one (here: a plain causal mask over the node order, so
    nodes see other branches; a uniform position shift would not do, rotary attention is shift-invariant),
    the once-per-AR check
    catches it, warns, and the call returns the padded forward's numbers; later calls stay padded."""
    p = fixture_pairs["llama"]
    ar = load_ar(p.ar, LoadOptions(device="cpu", dtype="fp32"), layer=p.layer)
    want = reconstruct(ar, TEXTS, share_prefix="off")
    real = trie.batch_tensors

    def causal(group, pad):
        ids, pos, mask = real(group, pad)
        return ids, pos, torch.ones_like(mask).tril()

    monkeypatch.setattr(trie, "batch_tensors", causal)
    info: dict = {}
    with pytest.warns(UserWarning, match="shared-prefix forward moved a reconstruction"):
        got = reconstruct(ar, TEXTS, info=info)
    assert torch.equal(got, want) and "failed its check" in info["forward"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = reconstruct(ar, TEXTS, info=info)
    assert torch.equal(again, want) and "failed its check" in info["forward"]


def test_a_nan_in_the_check_falls_back_too(fixture_pairs, monkeypatch):
    """A NaN in the checked rows fails the check (NaN passes no tolerance): padded numbers, with a warning."""
    import nlalab.reconstruct as R

    p = fixture_pairs["qwen2"]
    ar = load_ar(p.ar, LoadOptions(device="cpu", dtype="fp32"), layer=p.layer)
    want = reconstruct(ar, TEXTS, share_prefix="off")
    real = R._shared

    def poisoned(*a, **k):
        rows, v = real(*a, **k)
        v = v.clone()
        v[0, 0] = float("nan")
        return rows, v

    monkeypatch.setattr(R, "_shared", poisoned)
    info: dict = {}
    with pytest.warns(UserWarning, match="moved a reconstruction by nan"):
        got = reconstruct(ar, TEXTS, info=info)
    assert torch.equal(got, want) and "failed its check" in info["forward"]
