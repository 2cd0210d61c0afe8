"""The Triton sampler (``fast.sampler_kernel``) picks the full float64 sampler's tokens: run on the device."""

import warnings

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CI has no GPU
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from nlalab.pairs.load import LoadOptions, load_av  # noqa: E402
from nlalab.verbalize import GenerationSettings, fast, verbalize  # noqa: E402
from nlalab.verbalize.fast import maths, sampler_kernel  # noqa: E402
from nlalab.verbalize.sampling import sample_next  # noqa: E402


def _logits(case: str, B: int, V: int, g) -> torch.Tensor:
    sigma = {"flat": 1e-3, "ordinary": 1.0, "peaked": 10.0, "huge": 3000.0}.get(case, 1.0)
    lg = torch.randn(B, V, device="cuda", generator=g) * sigma
    if case == "ties":  # many exactly equal logits, and rows that repeat
        lg = torch.round(lg * 4) / 4
        lg[1::2] = lg[0]
    if case == "special":
        lg[:, ::5] = float("-inf")
        lg[0, V - 1] = float("nan")
        lg[min(1, B - 1), 3] = float("inf")
        lg[min(2, B - 1)] = float("-inf")
    return lg


@pytest.mark.parametrize("V", [1000, 49152, 152064, 262208])
@pytest.mark.parametrize("case", ["flat", "ordinary", "peaked", "huge", "ties", "special"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_picks_the_full_paths_tokens(V, case, dtype):
    g = torch.Generator(device="cuda").manual_seed(V)
    hv = maths.token_hash(V, "cuda")
    for B in (1, 7, 150):
        lg = _logits(case, B, V, g).to(dtype)  # bf16 logits: the kernel reads them as .float() gives them
        keys = torch.randint(0, 2 ** 32, (B,), device="cuda", generator=g)
        for step in range(4):
            ref = maths._argmax_rows(maths.gumbel_scores(maths.noise_bits(keys, step, hv), lg.float()))
            got = sampler_kernel.gumbel_argmax(lg, maths.key_premix(keys, step), hv)
            assert torch.equal(got, ref), (B, step)
            if case != "special":  # the reference sampler itself (sampling.sample_next), same device
                assert torch.equal(got, sample_next(lg, keys, step))


def test_head_with_the_kernel_equals_the_full_head_compiled_and_eager():
    g = torch.Generator(device="cuda").manual_seed(0)
    V, d, B = 152064, 512, 150
    lm_w = (torch.randn(V, d, device="cuda", generator=g) * 0.05).bfloat16()
    norm_w = torch.ones(d, device="cuda", dtype=torch.bfloat16)
    hv = maths.token_hash(V, "cuda")
    keys = torch.randint(0, 2 ** 32, (B,), device="cuda", generator=g)
    done = torch.zeros(B, dtype=torch.bool, device="cuda")
    eos = torch.tensor([7], device="cuda")
    compiled = maths._compiled_fns("sampler")["head"]
    for t in range(3):
        x = torch.randn(B, d, device="cuda", generator=g).bfloat16()
        step = torch.tensor([t], device="cuda")
        for temp, top_k in ((1.0, 0), (0.7, 0), (1.0, 50)):
            args = (x, norm_w, 1e-6, False, lm_w, None, None, keys, step, hv, done, eos, 0, temp, top_k, 1.0, False)
            ref, _ = maths._head_sample(*args)
            assert torch.equal(maths._head_sample(*args, screen=True)[0], ref)
            assert torch.equal(compiled(*args, screen=True)[0], ref)


def test_self_check_catches_a_wrong_margin(monkeypatch):
    hv = maths.token_hash(49152, "cuda")
    assert maths.screen_self_check(hv) == ""
    monkeypatch.setattr(sampler_kernel, "ABS", -1.0)  # no token is ever a candidate
    assert "differ" in maths.screen_self_check(hv)


@pytest.mark.parametrize("compile_mode", ["none", "all"])
def test_engine_tokens_do_not_depend_on_the_sampler(fixture_pair, compile_mode, monkeypatch):
    av = load_av(fixture_pair.av, LoadOptions(device="cuda"))
    vecs = torch.randn(6, av.d_model, generator=torch.Generator().manual_seed(1)) * 30
    gs = GenerationSettings(max_new_tokens=20, engine="fast", seed=3)
    monkeypatch.setattr(fast.OPTIONS, "compile", compile_mode)
    out = {}
    for screen in (None, False):
        monkeypatch.setattr(fast.OPTIONS, "gpu_screen", screen)
        fast.release_engines()
        res = verbalize(av, vecs, k=2, settings=gs)
        eng_screen = fast.get_engine(av).gpu_screen
        assert eng_screen is (screen is None)
        out[screen] = [r.token_ids for r in res]
    fast.release_engines()
    assert out[None] == out[False]


def test_engine_falls_back_when_the_self_check_fails(fixture_pair, monkeypatch):
    av = load_av(fixture_pair.av, LoadOptions(device="cuda"))
    monkeypatch.setattr(sampler_kernel, "ABS", -1.0)
    fast.release_engines()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        eng = fast.get_engine(av)
    assert eng.gpu_screen is False and eng._work_kw() == {}
    assert any("Triton sampler failed its self-check" in str(x.message) for x in w)
    fast.release_engines()
