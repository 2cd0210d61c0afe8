"""The fast engine on CUDA (graphs, compile): run on the device machine with `pytest -m gpu tests/gpu`.

fp32 on the GPU: greedy tokens identical to ``hf`` and ``loop``, sampled tokens identical to ``loop`` (same
(seed, vector key, sample) noise). bf16: two different kernel sets round differently, so a rare greedy
divergence after some tokens is allowed; the tests bound how rare it is.
"""

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CI has no GPU
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from nlalab.pairs.load import LoadOptions, load_av  # noqa: E402
from nlalab.verbalize import GenerationSettings, verbalize  # noqa: E402
from nlalab.verbalize import engine as fast  # noqa: E402
from nlalab.verbalize.generate import resolve_engine  # noqa: E402

FP32 = LoadOptions(device="cuda", dtype="fp32")
BF16 = LoadOptions(device="cuda")


@pytest.fixture
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture
def compile_mode():
    old = fast.OPTIONS.compile

    def set_(mode):
        fast.OPTIONS.compile = mode

    yield set_
    fast.OPTIONS.compile = old


def _toks(recs):
    return [r.token_ids for r in recs]


def _prefix_agreement(a, b) -> float:
    """Mean fraction of each row's tokens before the first difference."""
    fr = []
    for x, y in zip(a, b):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        fr.append(n / max(len(x), len(y), 1))
    return sum(fr) / len(fr)


def test_fp32_graphs_greedy_and_sampled_identical(fixture_pair, no_tf32, compile_mode):
    compile_mode("none")  # graphs only here (quick); compile is covered below
    av = load_av(fixture_pair.av, FP32)
    assert resolve_engine("auto", av) == "fast"
    torch.manual_seed(0)
    vecs = torch.randn(4, av.d_model) * 30
    gs = dict(max_new_tokens=24, greedy=True)
    ours = verbalize(av, vecs, settings=GenerationSettings(engine="fast", **gs))
    st = fast.get_engine(av).stats
    assert st.graphs and st.prefix_len == av.marker_pos
    assert _toks(ours) == _toks(verbalize(av, vecs, settings=GenerationSettings(engine="loop", **gs)))
    assert _toks(ours) == _toks(verbalize(av, vecs, settings=GenerationSettings(engine="hf", **gs)))
    gs = dict(max_new_tokens=24, temperature=1.0, seed=11)
    a = verbalize(av, vecs, k=3, settings=GenerationSettings(engine="fast", **gs))
    b = verbalize(av, vecs, k=3, settings=GenerationSettings(engine="loop", **gs))
    assert sum(x == y for x, y in zip(_toks(a), _toks(b))) >= 11  # of 12; fp32 GPU kernels may differ in ulps


@pytest.mark.parametrize("name", ["gemma3_text", "qwen2"])
def test_bf16_compiled_graphs_follow_loop(fixture_pairs, name, compile_mode):
    compile_mode("all")
    av = load_av(fixture_pairs[name].av, BF16)
    torch.manual_seed(1)
    vecs = torch.randn(6, av.d_model) * 30
    gs = dict(max_new_tokens=32, greedy=True)
    ours = verbalize(av, vecs, settings=GenerationSettings(engine="fast", **gs))
    st = fast.get_engine(av).stats
    assert st.graphs and st.compile == "all"
    ref = verbalize(av, vecs, settings=GenerationSettings(engine="loop", **gs))
    assert [t[0] for t in _toks(ours)] == [t[0] for t in _toks(ref)]  # first token: same prefill math
    assert _prefix_agreement(_toks(ours), _toks(ref)) >= 0.7
    gs = dict(max_new_tokens=32, temperature=1.0, seed=3)
    a = verbalize(av, vecs, k=4, settings=GenerationSettings(engine="fast", **gs))
    b = verbalize(av, vecs, k=4, settings=GenerationSettings(engine="loop", **gs))
    assert _prefix_agreement(_toks(a), _toks(b)) >= 0.7
    # re-running replays the captured graph: the same rows, bitwise
    assert _toks(verbalize(av, vecs, k=4, settings=GenerationSettings(engine="fast", **gs))) == _toks(a)
    # other micro-batches (8 + 8 + 8): same noise per row; bf16 GEMMs of another shape may round differently
    other = verbalize(av, vecs, k=4, settings=GenerationSettings(engine="fast", fast_batch_size=10, **gs))
    assert _prefix_agreement(_toks(other), _toks(a)) >= 0.7
