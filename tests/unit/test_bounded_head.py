"""The CPU head that samples from bf16 logits with a proven error bound (``fast.head.BoundedHead``): its
token must be the full fp32 head + Gumbel-max sampler's token, bit for bit, on every row; where it cannot
say (few rows, a bound that fails) it must hand back to the full path."""

import warnings

import pytest
import torch

from nlalab.pairs.load import av_eos_ids, load_av, load_target
from nlalab.testing import chat_prompt_ids
from nlalab.verbalize import GenerationSettings, verbalize
from nlalab.verbalize import fast
from nlalab.verbalize.fast import maths
from nlalab.verbalize.fast import head as H
from nlalab.verbalize.fast.head import MIN_ROWS, BoundedHead
from nlalab.verbalize.plain import generate_texts


def _head(V=4096, K=96, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(V, K, generator=g) * scale
    w[7] = w[3]  # two tokens with the same weights: equal logits, the noise decides
    return w, BoundedHead.build(w, force=True)


def _reference(h, w, keys, step, hv, t):
    return maths._sample(torch.mm(h, w.t()), keys, step, hv, t, 0, 1.0, False)


def test_bound_holds_for_every_token():
    w, head = _head()
    g = torch.Generator().manual_seed(1)
    for scale in (0.1, 1.0, 4.0, 20.0):
        h = torch.randn(64, w.shape[1], generator=g) * scale
        exact = torch.mm(h, w.t())
        approx = torch.mm(h.to(torch.bfloat16), head.wb.t()).float()
        eps = head.a * approx.abs() + head.c * h.double().norm(dim=1).float()[:, None] * head.wn[None, :]
        assert bool(((approx - exact).abs() <= eps).all())
        # the per-row bound the sampler uses is at least every token's
        e = head.a * approx.abs().amax(1) + head.c * h.double().norm(dim=1).float() * head.wmax
        assert bool((eps <= e[:, None] * (1 + 1e-6)).all())


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("scale", [0.05, 1.0, 6.0])  # flat, ordinary and peaked rows
def test_token_equals_the_full_fp32_head(temperature, scale):
    w, head = _head(scale=1.0)
    hv = maths.token_hash(w.shape[0], "cpu")
    work = maths.SamplerWork()
    g = torch.Generator().manual_seed(int(scale * 100) + int(temperature * 10))
    n = 0
    for step in range(6):
        h = torch.randn(48, w.shape[1], generator=g) * scale
        h[5] = h[4]  # identical rows with different keys
        keys = torch.randint(0, 2 ** 31, (48,), generator=g)
        got = head.sample(h, keys, step, hv, temperature, work)
        if got is not None:  # None: too many candidates (near-flat rows), the caller's full path runs
            assert torch.equal(got, _reference(h, w, keys, step, hv, temperature))
            n += 1
    assert n == (0 if scale < 0.1 else 6)  # flat rows make every token a candidate


def test_falls_back_where_it_cannot_say():
    w, head = _head()
    hv = maths.token_hash(w.shape[0], "cpu")
    work = maths.SamplerWork()
    h = torch.randn(MIN_ROWS - 1, w.shape[1])
    assert head.sample(h, torch.arange(MIN_ROWS - 1), 0, hv, 1.0, work) is None  # too few rows
    h = torch.randn(40, w.shape[1])
    h[3, 0] = float("nan")
    assert head.sample(h, torch.arange(40), 0, hv, 1.0, work) is None  # non-finite logits
    # a bf16 copy that is not the weight (half of it): the candidates' exact logits break their bounds, and
    # the head hands back and turns itself off for good (the online canary; the proof assumes bf16 GEMMs)
    head.wb = (w * 0.5).to(torch.bfloat16)
    h = torch.randn(40, w.shape[1]) * 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert head.sample(h, torch.arange(40), 0, hv, 1.0, work) is None
    assert not head.enabled and any("bound failed" in str(c.message) for c in caught)
    head.wb = w.to(torch.bfloat16)
    assert head.sample(h, torch.arange(40), 0, hv, 1.0, work) is None  # stays off


def test_head_sample_uses_it_only_for_plain_sampling():
    """greedy, top-k/top-p and soft-capped heads take the full path (the bounded head returns nothing there)."""
    w, head = _head()
    hv = maths.token_hash(w.shape[0], "cpu")
    work = maths.SamplerWork(head)
    x = torch.randn(40, w.shape[1])
    norm_w = torch.ones(w.shape[1])
    done = torch.zeros(40, dtype=torch.bool)
    keys = torch.arange(40) * 31
    for kw in (dict(greedy=True), dict(top_k=20), dict(top_p=0.9), dict(temperature=0.9)):
        args = dict(temperature=1.0, top_k=0, top_p=1.0, greedy=False)
        args.update(kw)
        a, _ = maths._head_sample(x, norm_w, 1e-6, False, w, None, None, keys, 2, hv, done, None, 0, work=work,
                                  **args)
        b, _ = maths._head_sample(x, norm_w, 1e-6, False, w, None, None, keys, 2, hv, done, None, 0,
                                  work=maths.SamplerWork(), **args)
        assert torch.equal(a, b), kw


def test_engine_tokens_do_not_change(fixture_pairs, monkeypatch):
    """Inject mode (40 rows: the head runs while at least MIN_ROWS rows remain) and plain mode."""
    for name in ("qwen2", "llama"):
        av = load_av(fixture_pairs[name].av)
        torch.manual_seed(5)
        vecs = torch.randn(20, av.d_model) * 30
        gs = GenerationSettings(engine="fast", max_new_tokens=16, temperature=1.0, seed=3)
        rows = {}
        for on in (True, False):
            monkeypatch.setattr(fast.OPTIONS, "cpu_bf16_head", on)
            rows[on] = [r.token_ids for r in verbalize(av, vecs, k=2, settings=gs)]
            eng_head = fast.get_engine(av).work.head
            assert (eng_head is not None) == on
            fast.release_engines()
        assert rows[True] == rows[False], name
    p = fixture_pairs["qwen2"]
    tg = load_target(p.target, p.layer, truncate=False)
    tok = tg.tokenizer
    prompts = chat_prompt_ids(tok, ("Hi", "Prove it.", "Name four birds.", "What is the capital of Brazil and why?"))
    out = {}
    for on in (True, False):
        monkeypatch.setattr(fast.OPTIONS, "cpu_bf16_head", on)
        out[on] = [r.token_ids for r in generate_texts(tg.model, tok, prompts, av_eos_ids(tok, tg.model), 9,
                                                        [1, 2, 3, 4], GenerationSettings(engine="fast", max_new_tokens=12,
                                                                                         temperature=1.0, seed=8))]
    assert out[True] == out[False]


def test_backs_off_after_a_screen_overflow(monkeypatch):
    """Near-flat rows pass too many candidates: that step and the next ``backoff`` steps take the full path
    (doubling), and a step that works resets the back-off."""
    w, head = _head()
    hv = maths.token_hash(w.shape[0], "cpu")
    work = maths.SamplerWork()
    flat = torch.randn(48, w.shape[1]) * 0.01
    keys = torch.arange(48)
    calls = []
    real = H._screen
    monkeypatch.setattr(H, "_screen", lambda *a: calls.append(1) or real(*a))
    assert head.sample(flat, keys, 0, hv, 1.0, work) is None and (head.skip, head.backoff) == (1, 2)
    assert head.sample(flat, keys, 1, hv, 1.0, work) is None and len(calls) == 1  # skipped, no screen
    assert head.sample(flat, keys, 2, hv, 1.0, work) is None and (head.skip, head.backoff) == (2, 4)
    for step in (3, 4):
        assert head.sample(flat, keys, step, hv, 1.0, work) is None
    assert len(calls) == 2
    peaked = torch.randn(48, w.shape[1]) * 3
    got = head.sample(peaked, keys, 5, hv, 1.0, work)
    assert torch.equal(got, _reference(peaked, w, keys, 5, hv, 1.0)) and head.backoff == 1
