"""The CPU sampler's screen (``maths._sample_screened``): float64 scores only for the tokens that can win,
and always the token of the full Gumbel-max path (``sampling.sample_next``), including at the boundary
where a low-logit token with near-1 noise barely wins or barely loses."""

import math

import pytest
import torch

from nlalab.pairs.load import load_av
from nlalab.verbalize import GenerationSettings, fast, verbalize
from nlalab.verbalize.fast import maths
from nlalab.verbalize.sampling import filter_logits, row_keys, sample_next


def _screened(lg, keys, step, T=1.0, top_k=0, top_p=1.0):
    V = lg.shape[1]
    f = filter_logits(lg, top_k, top_p) / T
    return maths._sample_screened(f, keys, step, maths.token_hash(V, "cpu"), maths.SamplerWork())


@pytest.mark.parametrize("V", [49152, 4096 * 64, 1000, 777])
def test_screen_gives_the_reference_token(V):
    g = torch.Generator().manual_seed(V)
    hv = maths.token_hash(V, "cpu")
    screened = 0
    for trial in range(60):
        B = (1, 5, 33)[trial % 3]
        lg = torch.randn(B, V, generator=g) * (0.01, 0.5, 2.0, 6.0, 20.0)[trial % 5]
        if trial % 4 == 0:
            lg[:, :30] += 10  # a peaked head, as an LM's
        if trial % 6 == 0:
            lg[:, V // 2] = lg[:, V // 3]  # exact logit ties
        if trial % 9 == 0:
            lg[:, 3] = 80.0  # one dominant token
        T, top_k, top_p = ((1.0, 0, 1.0), (0.7, 20, 1.0), (1.3, 0, 0.9), (1.0, 5, 0.5))[trial % 4]
        keys = torch.randint(0, 2 ** 32, (B,), generator=g)
        step = int(torch.randint(0, 1000, (1,), generator=g))
        want = sample_next(lg, keys, step, T, top_k, top_p)
        got = _screened(lg, keys, step, T, top_k, top_p)
        if got is not None:
            screened += 1
            assert torch.equal(got, want), (trial, got, want)
        # the sampler as the engine calls it (screen, else the full path) with a step tensor
        assert torch.equal(maths._sample(lg, keys, torch.tensor([step]), hv, T, top_k, top_p, False,
                                         maths.SamplerWork()), want)
    assert screened >= 30  # the screen itself ran, not only the fallback


@pytest.mark.parametrize("wins", [True, False])
def test_a_low_logit_token_with_extreme_noise_wins_or_loses_exactly_as_the_reference(wins):
    """The screen's slack is tested where it matters: token j has the row's largest noise and a logit set
    so that its score is within 1e-9 of the best other token's, above or below."""
    V, B, step = 49152, 4, 7
    g = torch.Generator().manual_seed(11)
    keys = torch.randint(0, 2 ** 32, (B,), generator=g)
    hv = maths.token_hash(V, "cpu")
    bits = maths.noise_bits(keys, step, hv)
    lg = torch.randn(B, V, generator=g) * 2
    lg[:, :20] += 8
    base = maths.gumbel_scores(bits, lg)
    for r in range(B):
        u = bits[r].to(torch.int64) & 0xFFFFFFFF
        j = int(u.argmax())  # the largest noise of the row
        others = base[r].clone()
        others[j] = -math.inf
        best = float(others.max())
        g_j = float(maths.gumbel_scores(bits[r, j:j + 1], torch.zeros(1))[0])
        lg[r, j] = float(best - g_j + (1e-4 if wins else -1e-4))
    want = sample_next(lg, keys, step)
    got = maths._sample_screened(lg, keys, step, hv, maths.SamplerWork())
    assert got is not None and torch.equal(got, want)
    js = (bits.to(torch.int64) & 0xFFFFFFFF).argmax(-1)
    assert torch.equal(want == js, torch.full((B,), wins))  # the constructed token really won / lost


def test_non_finite_logits_fall_back_to_the_full_path():
    lg = torch.randn(3, 1000)
    lg[1, 5] = float("nan")
    keys = torch.arange(3)
    assert maths._sample_screened(lg, keys, 1, maths.token_hash(1000, "cpu"), maths.SamplerWork()) is None
    hv = maths.token_hash(1000, "cpu")
    assert torch.equal(maths._sample(lg, keys, 1, hv, 1.0, 0, 1.0, False, maths.SamplerWork()),
                       sample_next(lg, keys, 1))


def test_work_buffers_serve_a_shrinking_batch():
    w = maths.SamplerWork()
    a = w.get("bits", (8, 100), torch.int32, "cpu")
    b = w.get("bits", (3, 100), torch.int32, "cpu")
    assert b.shape == (3, 100) and b.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
    c = w.get("bits", (9, 100), torch.int32, "cpu")  # larger: a new buffer
    assert c.shape == (9, 100)


def test_premixed_token_hash_keeps_the_reference_noise():
    from nlalab.verbalize.sampling import uniform

    keys = row_keys(3, torch.tensor([0, 7, 123456]), torch.tensor([0, 1, 2]))
    for V in (50, 1000):
        hv = maths.token_hash(V, "cpu")
        for step in (0, 5, 2 ** 20):
            assert torch.equal(maths.uniform_t(keys, step, hv), uniform(keys, step, V))


def test_bias_attention_equals_masked_attention():
    """Eager CPU decoding adds one 0/-inf bias per step instead of masking per layer: the same output."""
    g = torch.Generator().manual_seed(0)
    B, H, kv, D, P, L = 5, 6, 2, 16, 9, 13
    q = torch.randn(B, H, 1, D, generator=g)
    kp, vp = torch.randn(kv, P, D, generator=g), torch.randn(kv, P, D, generator=g)
    kr, vr = torch.randn(B, kv, L, D, generator=g), torch.randn(B, kv, L, D, generator=g)
    mp = torch.rand(1, P, generator=g) > 0.3
    mr = torch.rand(1, L, generator=g) > 0.3
    mr[0, -1] = True
    bias = torch.zeros(1, P + L).masked_fill_(~torch.cat([mp, mr], -1), float("-inf"))
    for scaling in (0.25, D ** -0.5):
        want = maths._attend(q, kp, vp, kr, vr, mp, mr, scaling)
        assert torch.equal(maths._attend(q, kp, vp, kr, vr, mp, mr, scaling, bias=bias), want)


def test_engine_tokens_do_not_depend_on_the_screen(fixture_pairs, monkeypatch):
    av = load_av(fixture_pairs["qwen2"].av)
    torch.manual_seed(3)
    vecs = torch.randn(5, av.d_model)
    gs = GenerationSettings(max_new_tokens=20, seed=9, engine="fast")
    out = {}
    for screen in (True, False):
        monkeypatch.setattr(fast.OPTIONS, "cpu_screen", screen)
        fast.release_engines(av.model)
        out[screen] = [r.token_ids for r in verbalize(av, vecs, k=2, settings=gs)]
        assert (fast.get_engine(av).work is not None) == screen
    assert out[True] == out[False]
