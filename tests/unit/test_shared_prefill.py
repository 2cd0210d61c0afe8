"""Rows with the same prompt share one prefill (``fast.OPTIONS.dedup_prefill``): the K samples of one
activation in inject mode, the K samples of one prompt in plain mode (the blind control), padding rows.
Their tokens must be exactly those of a prefill of every row, and of the loop engine (fp32, CPU)."""

import math

import pytest
import torch

from nlalab.pairs.load import av_eos_ids, load_av, load_target
from nlalab.testing import chat_prompt_ids
from nlalab.verbalize import GenerationSettings, verbalize
from nlalab.verbalize import fast
from nlalab.verbalize.fast.engine import duplicate_rows
from nlalab.verbalize.plain import generate_texts


def test_duplicate_rows_first_occurrences_in_order():
    x = torch.tensor([[3.0, 1.0], [0.0, 2.0], [3.0, 1.0], [5.0, 5.0], [0.0, 2.0], [3.0, 1.0]])
    rep, inv = duplicate_rows(x)
    assert rep.tolist() == [0, 1, 3]
    assert inv.tolist() == [0, 1, 0, 2, 1, 0]
    assert torch.equal(x[rep][inv], x)
    assert duplicate_rows(torch.randn(4, 3)) is None  # all distinct
    assert duplicate_rows(torch.randn(1, 3)) is None


def test_duplicate_rows_compares_bit_patterns():
    """-0.0 and 0.0 give different injected embeddings' bits, so they are different rows; a NaN row equals an
    identical NaN row (same bits), which float comparison would not say."""
    assert duplicate_rows(torch.tensor([[0.0, 1.0], [-0.0, 1.0]])) is None
    nan = torch.tensor([[math.nan, 1.0], [math.nan, 1.0]])
    assert duplicate_rows(nan)[1].tolist() == [0, 0]
    ids = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 4]])
    assert duplicate_rows(ids)[0].tolist() == [0, 2]
    bf = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.bfloat16)
    assert duplicate_rows(bf)[0].tolist() == [0]


@pytest.mark.parametrize("layout", ["shared", "copy"])
def test_inject_mode_k_samples_share_one_prefill(fixture_pairs, monkeypatch, layout):
    monkeypatch.setattr(fast.OPTIONS, "attention", layout)
    for name in ("qwen2", "gemma3_text"):
        av = load_av(fixture_pairs[name].av)
        torch.manual_seed(7)
        vecs = torch.randn(3, av.d_model) * 30
        gs = dict(max_new_tokens=12, temperature=1.0, seed=9)
        rows = {}
        for dedup in (True, False):
            monkeypatch.setattr(fast.OPTIONS, "dedup_prefill", dedup)
            rows[dedup] = [r.token_ids for r in verbalize(av, vecs, k=3, settings=GenerationSettings(engine="fast", **gs))]
            assert fast.last_stats().extra["prefill_rows"] == (3 if dedup else 9), (name, dedup)
        loop = [r.token_ids for r in verbalize(av, vecs, k=3, settings=GenerationSettings(engine="loop", **gs))]
        assert rows[True] == rows[False] == loop, (name, layout)
        # padding rows (a batch larger than the rows) repeat the last vector: prefilled once as well
        monkeypatch.setattr(fast.OPTIONS, "dedup_prefill", True)
        padded = verbalize(av, vecs, k=1, settings=GenerationSettings(engine="fast", fast_batch_size=3, **gs))
        one = verbalize(av, vecs[:2], k=1, settings=GenerationSettings(engine="fast", fast_batch_size=4, **gs))
        assert fast.last_stats().extra["prefill_rows"] == 2
        assert [r.token_ids for r in padded][:2] == [r.token_ids for r in one]


def test_plain_mode_k_samples_share_one_prefill(fixture_pairs, monkeypatch):
    p = fixture_pairs["qwen2"]
    tg = load_target(p.target, p.layer, truncate=False)
    tok = tg.tokenizer
    prompts = chat_prompt_ids(tok, ("Hi", "What is the capital of Brazil and why?", "Prove it."))
    eos = av_eos_ids(tok, tg.model)
    for kw in (dict(greedy=True), dict(temperature=1.0, seed=3)):
        gs = GenerationSettings(max_new_tokens=14, engine="fast", **kw)
        rows = {}
        for dedup in (True, False):
            monkeypatch.setattr(fast.OPTIONS, "dedup_prefill", dedup)
            monkeypatch.setattr(fast.OPTIONS, "trace", [])
            rows[dedup] = [r.token_ids for r in generate_texts(tg.model, tok, prompts, eos, 3, [1, 2, 3], gs)]
            assert [t["prefill_rows"] for t in fast.OPTIONS.trace] == [3 if dedup else 9]
        loop = generate_texts(tg.model, tok, prompts, eos, 3, [1, 2, 3],
                              GenerationSettings(max_new_tokens=14, engine="loop", batch_size=9, **kw))
        assert rows[True] == rows[False] == [r.token_ids for r in loop], kw
