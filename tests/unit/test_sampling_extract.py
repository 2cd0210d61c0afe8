"""Sampling is exact (Gumbel-max over the filtered softmax) and batch-invariant; extraction flags failures."""


import pytest
import torch

from nlalab.verbalize.extract import extract_explanation
from nlalab.verbalize.sampling import filter_logits, hash32, row_keys, sample_next, uniform


def test_hash32_range_and_determinism():
    x = torch.arange(100_000, dtype=torch.int64)
    h = hash32(x)
    assert int(h.min()) >= 0 and int(h.max()) < 2**32
    assert torch.equal(h, hash32(x))
    assert len(torch.unique(h)) > 99_990  # nearly injective on a small range


def test_uniform_is_uniform_and_open_interval():
    keys = row_keys(42, torch.arange(64), torch.zeros(64, dtype=torch.int64))
    u = uniform(keys, 3, 5000)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(u.var()) - 1 / 12) < 0.002


def test_sampling_matches_softmax_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 40_000
    keys = row_keys(7, torch.arange(n), torch.zeros(n, dtype=torch.int64))
    draws = sample_next(logits.expand(n, -1), keys, step=0, temperature=1.0)
    freq = torch.bincount(draws, minlength=5).double() / n
    p = torch.softmax(logits.double(), -1)
    assert torch.allclose(freq, p, atol=0.01)
    # temperature 0.5 sharpens exactly like softmax(logits / 0.5)
    draws = sample_next(logits.expand(n, -1), keys, step=1, temperature=0.5)
    freq = torch.bincount(draws, minlength=5).double() / n
    assert torch.allclose(freq, torch.softmax(logits.double() / 0.5, -1), atol=0.01)


def test_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.8
    kept = torch.isfinite(filter_logits(logits, top_p=0.5))
    assert kept.tolist() == [[True, False, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_k=3))
    assert kept.tolist() == [[True, True, True, False]]


def test_rows_do_not_depend_on_batch_composition():
    torch.manual_seed(1)
    logits = torch.randn(6, 300)
    keys = row_keys(42, torch.tensor([10, 11, 12, 13, 14, 15]), torch.tensor([0, 1, 2, 0, 1, 2]))
    full = sample_next(logits, keys, step=5)
    parts = torch.cat([sample_next(logits[i:i + 1], keys[i:i + 1], step=5) for i in range(6)])
    assert torch.equal(full, parts)
    other_seed = sample_next(logits, row_keys(43, torch.tensor([10, 11, 12, 13, 14, 15]),
                                              torch.tensor([0, 1, 2, 0, 1, 2])), step=5)
    assert not torch.equal(full, other_seed)


def test_greedy_is_argmax():
    logits = torch.randn(4, 50)
    assert torch.equal(sample_next(logits, torch.zeros(4, dtype=torch.int64), 0, greedy=True), logits.argmax(-1))


@pytest.mark.parametrize(
    "raw,expl,flags",
    [
        ("<explanation>\nA chat question about Brazil.\n</explanation>", "A chat question about Brazil.", set()),
        ("<explanation>  two\n\nparas </explanation> trailing", "two\n\nparas", set()),
        ("<explanation>\nno closing tag", "no closing tag", {"missing_close_tag"}),
        ("just text", "just text", {"missing_close_tag"}),
        ("<explanation></explanation>", "", {"empty"}),
        ("<explanation>这是一个中文解释文本</explanation>", "这是一个中文解释文本", {"cjk_smell"}),
        ("<explanation>It is the character ㈎ again</explanation>", "It is the character ㈎ again", {"cjk_smell"}),
    ],
)
def test_extract_explanation(raw, expl, flags):
    out = extract_explanation(raw, marker="㈎")
    assert out["explanation"] == expl
    got = {k for k in ("missing_close_tag", "empty", "cjk_smell", "truncated") if out[k]}
    assert got == flags
    assert extract_explanation(raw, truncated=True)["truncated"] is True
