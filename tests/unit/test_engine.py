"""The fast engine on CPU fixtures: same tokens as ``loop``/``hf``, prefix sharing, chunking, eos, OOM halving.

On CPU the engine runs its prefix-sharing, static-cache and decode-step code eagerly (no CUDA graphs,
no compile), so everything but the graph capture is exercised here; tests/gpu/test_gpu_engine.py
covers graphs and compile on the device.
"""

import dataclasses

import pytest
import torch

from nlalab.pairs.load import load_av
from nlalab.testing import torch_threads
from nlalab.verbalize import GenerationSettings, verbalize
from nlalab.verbalize import fast
from nlalab.verbalize.generate import resolve_engine
from nlalab.verbalize.sampling import row_keys, sample_next, uniform


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(params=["copy", "shared"])
def layout(request):
    """Both cache layouts: prefix copied into every row (sdpa attention) or kept once (two-part GEMM)."""
    old = fast.OPTIONS.attention
    fast.OPTIONS.attention = request.param
    yield request.param
    fast.OPTIONS.attention = old


def _gs(**kw):
    return GenerationSettings(**{"max_new_tokens": 16, **kw})


def _toks(recs):
    return [r.token_ids for r in recs]


def test_greedy_fast_equals_loop_and_transformers_generate(fixture_pair, layout):
    av = load_av(fixture_pair.av)
    torch.manual_seed(2)
    vecs = torch.randn(3, av.d_model)
    ours = verbalize(av, vecs, settings=_gs(greedy=True, engine="fast"))
    assert _toks(ours) == _toks(verbalize(av, vecs, settings=_gs(greedy=True, engine="loop")))
    assert _toks(ours) == _toks(verbalize(av, vecs, settings=_gs(greedy=True, engine="hf")))
    st = fast.last_stats()
    assert st.attention == layout
    # the prefix before the marker is computed once and shared; each row computes only the suffix
    assert st.prefix_len == av.marker_pos and st.suffix_len == len(av.prompt_ids) - av.marker_pos
    eng = fast.FastEngine(av.model, av.prompt_ids, av.marker_pos)
    assert st.prefix_len > 0 and eng.kp[0].shape[:2] == (eng.n_kv, av.marker_pos)
    # after the call the engine (buffers, prefix, references to the weights) is gone
    assert av.model not in fast._ENGINES


@pytest.mark.parametrize("name", ["qwen2", "gemma3_mm"])
def test_sampled_fast_equals_loop(fixture_pairs, name, layout):
    """Same (seed, vector key, sample) -> same tokens as the loop engine (logits agree exactly in fp32)."""
    av = load_av(fixture_pairs[name].av)
    torch.manual_seed(3)
    vecs = torch.randn(3, av.d_model)
    gs = dict(max_new_tokens=24, temperature=1.0, seed=7)
    a = verbalize(av, vecs, k=3, settings=_gs(engine="fast", **gs), vector_keys=[10, 11, 12])
    b = verbalize(av, vecs, k=3, settings=_gs(engine="loop", **gs), vector_keys=[10, 11, 12])
    assert _toks(a) == _toks(b)
    assert len({tuple(t) for t in _toks(a)}) > 1
    # filtered sampling (top-k / top-p, temperature) follows the same semantics
    gs = dict(max_new_tokens=12, temperature=0.7, top_k=20, top_p=0.9, seed=1)
    assert _toks(verbalize(av, vecs, k=2, settings=_gs(engine="fast", **gs))) == \
        _toks(verbalize(av, vecs, k=2, settings=_gs(engine="loop", **gs)))


def test_batching_padding_and_resume_do_not_change_rows(fixture_pairs, layout):
    av = load_av(fixture_pairs["llama"].av)
    torch.manual_seed(4)
    vecs = torch.randn(4, av.d_model)
    gs = dict(max_new_tokens=10, engine="fast")
    whole = verbalize(av, vecs, k=2, settings=_gs(**gs))  # one batch of 8
    seen = []
    chunked = verbalize(av, vecs, k=2, settings=_gs(fast_batch_size=3, **gs),  # 3,3,2(+1 padding row)
                        on_batch=lambda recs: seen.append(len(recs)))
    assert _toks(whole) == _toks(chunked) and seen == [3, 3, 2]
    assert fast.last_stats().batch == 3  # the last chunk ran padded to the graph's batch
    rest = verbalize(av, vecs, k=2, settings=_gs(**gs), skip={(0, 1), (3, 0)})
    assert _toks(rest) == [r.token_ids for r in whole if (r.vector_index, r.sample) not in {(0, 1), (3, 0)}]


def test_end_of_turn_stops_rows_like_loop(fixture_pairs, layout):
    av = load_av(fixture_pairs["gemma3_text"].av)
    torch.manual_seed(5)
    vecs = torch.randn(3, av.d_model)
    probe = verbalize(av, vecs, settings=_gs(greedy=True, engine="loop", max_new_tokens=12))
    stop = probe[0].token_ids[3]  # make a token the model really emits an end-of-turn id
    av2 = dataclasses.replace(av, eos_ids=sorted(set(av.eos_ids) | {stop}))
    for greedy in (True, False):
        gs = dict(greedy=greedy, max_new_tokens=12, seed=3)
        a = verbalize(av2, vecs, k=2, settings=_gs(engine="fast", **gs))
        b = verbalize(av2, vecs, k=2, settings=_gs(engine="loop", **gs))
        assert [r.to_dict(with_tokens=True) for r in a] == [r.to_dict(with_tokens=True) for r in b]
        assert any(not r.truncated for r in a)


def test_out_of_memory_halves_the_micro_batch(fixture_pairs, monkeypatch):
    av = load_av(fixture_pairs["qwen2"].av)
    torch.manual_seed(6)
    vecs = torch.randn(3, av.d_model)
    ref = verbalize(av, vecs, k=2, settings=_gs(engine="fast"))
    real = fast.FastEngine.generate
    tried = []

    def flaky(self, vectors, keys, **kw):
        tried.append(kw["batch"])
        if kw["batch"] > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, vectors, keys, **kw)

    monkeypatch.setattr(fast.FastEngine, "generate", flaky)
    with pytest.warns(UserWarning, match="out of memory at 6 rows"):
        got = verbalize(av, vecs, k=2, settings=_gs(engine="fast", fast_batch_size=6))
    assert _toks(got) == _toks(ref)
    assert tried == [6, 3, 3]


def test_final_logit_softcapping_is_applied(fixture_pairs):
    av = load_av(fixture_pairs["gemma3_text"].av)
    av.model.config.final_logit_softcapping = 1.5  # strong cap: changes the sampling distribution
    fast.release_engines(av.model)
    torch.manual_seed(7)
    vecs = torch.randn(2, av.d_model)
    gs = dict(max_new_tokens=16, seed=5)
    a = verbalize(av, vecs, k=2, settings=_gs(engine="fast", **gs))
    assert _toks(a) == _toks(verbalize(av, vecs, k=2, settings=_gs(engine="loop", **gs)))
    eng = fast.get_engine(av)
    assert eng.final_softcap == 1.5
    assert None in eng.windows and 8 in eng.windows  # sliding and global layers


def test_tensor_step_noise_is_bitwise_the_loop_noise():
    keys = row_keys(42, torch.tensor([0, 5, 99]), torch.tensor([0, 1, 2]))
    hv = fast.token_hash(1000, "cpu")
    for step in (0, 1, 17, 199):
        want = uniform(keys, step, 1000)
        assert torch.equal(fast.uniform_t(keys, step, hv), want)
        assert torch.equal(fast.uniform_t(keys, torch.tensor([step]), hv), want)
    logits = torch.randn(3, 1000)
    for step in (0, 3):
        assert torch.equal(fast._sample(logits, keys, torch.tensor([step]), hv, 0.8, 0, 1.0, False),
                           sample_next(logits, keys, step, 0.8))


def test_auto_is_fast_on_cpu_and_fast_rejects_unsupported(fixture_pairs):
    """The CPU fast path: ``auto`` picks the fast engine wherever it supports the AV, else ``loop``."""
    av = load_av(fixture_pairs["qwen2"].av)
    assert resolve_engine("auto", av) == "fast" and resolve_engine("fast", av) == "fast"
    assert GenerationSettings().engine == "auto"
    assert fast.unsupported_reason(av.model) is None
    av.model.config.model_type = "gpt2"
    try:
        assert "gpt2" in fast.unsupported_reason(av.model)
        assert resolve_engine("auto", av) == "loop"
    finally:
        av.model.config.model_type = "qwen2"


def test_fused_weights_give_the_same_tokens_and_are_restored(fixture_pairs, monkeypatch):
    """q/k/v and gate/up become one GEMM each while the engine lives (the default on every device); the model gets its own
    separate, unchanged weights back when the call ends."""
    monkeypatch.setattr(fast.OPTIONS, "fuse_weights", True)
    av = load_av(fixture_pairs["qwen2"].av)  # q/k/v biases fused too
    before = {n: p.detach().clone() for n, p in av.model.named_parameters()}
    torch.manual_seed(8)
    vecs = torch.randn(3, av.d_model)
    gs = dict(max_new_tokens=12, seed=2)
    ours = verbalize(av, vecs, k=2, settings=_gs(engine="fast", **gs))
    assert _toks(ours) == _toks(verbalize(av, vecs, k=2, settings=_gs(engine="loop", **gs)))
    eng = fast.get_engine(av)
    lay = av.model.model.layers[0]
    ptr = eng.layers[0].wqkv.untyped_storage().data_ptr()
    assert lay.self_attn.k_proj.weight.untyped_storage().data_ptr() == ptr  # a view of the fused buffer
    fast.end_call(av)
    for n, p in av.model.named_parameters():
        assert torch.equal(p, before[n]) and p.untyped_storage().nbytes() == p.numel() * p.element_size(), n


@pytest.mark.parametrize("compact", [0.25, 1e-9])
def test_cpu_compaction_of_finished_rows_keeps_every_row(fixture_pairs, monkeypatch, compact):
    """Eager decoding drops rows that have ended (OPTIONS.compact); the remaining rows' tokens, the finished
    rows' padding and the flags equal the uncompacted run's."""
    av = load_av(fixture_pairs["qwen2"].av)
    eng = fast.FastEngine(av.model, av.prompt_ids, av.marker_pos)
    torch.manual_seed(5)
    vecs = torch.randn(7, av.d_model)
    keys = row_keys(3, torch.arange(7), torch.zeros(7, dtype=torch.long))
    eos = list(range(0, eng.vocab, 9))  # ~11% of the vocabulary ends a row: rows stop at different steps
    kw = dict(injection_scale=av.injection_scale, max_new_tokens=30, eos_ids=eos, pad_id=1, batch=8)
    monkeypatch.setattr(fast.OPTIONS, "compact", compact)
    got_t, got_d = eng.generate(vecs, keys, **kw)
    eng.drop_states()  # fresh buffers: the reference must not see the compacted run's outputs (nor vice versa)
    monkeypatch.setattr(fast.OPTIONS, "compact", 0)
    ref_t, ref_d = eng.generate(vecs, keys, **kw)
    ends = [next((i for i, t in enumerate(r) if t in set(eos)), None) for r in ref_t.tolist()]
    assert len({e for e in ends}) > 2 and any(e is not None for e in ends)  # rows really end at different steps
    assert torch.equal(got_t, ref_t) and torch.equal(got_d, ref_d)
    # in compacted runs the finished rows are padding after their end token
    for r, e in zip(got_t.tolist(), ends):
        if e is not None:
            assert set(r[e + 1:]) <= {1}


def test_int32_noise_hash_is_bitwise_the_int64_reference():
    """The sampler hashes [B, V] noise in int32 (half the traffic); every 32-bit pattern class, including
    the sign bit and the extremes, must give the int64 reference's bits."""
    from nlalab.verbalize.fast.maths import _as_i32, _hash32_tail_, _premix
    from nlalab.verbalize.sampling import hash32

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.tensor([0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 0x7FEB352D, 0x846CA68B]),
                   torch.randint(0, 2 ** 32, (20000,), generator=g, dtype=torch.int64)])
    got = _hash32_tail_(_premix(_as_i32(x))).to(torch.int64) & 0xFFFFFFFF
    assert torch.equal(got, hash32(x))


@pytest.mark.parametrize("V", [1000, 49152, 4096 * 64])
def test_two_stage_argmax_equals_argmax(V):
    from nlalab.verbalize.fast.maths import _argmax_rows

    g = torch.Generator().manual_seed(V)
    x = torch.randn(7, V, generator=g, dtype=torch.float64)
    x[0, V - 1] = 99.0  # the last slice
    x[1, 0] = 99.0  # the first entry
    assert torch.equal(_argmax_rows(x, two_stage=True), x.argmax(-1))


def test_compile_auto_compiles_only_long_calls(fixture_pairs, monkeypatch):
    """Compile policy ``auto`` (the CUDA default): a call below ``compile_min_steps`` decode steps runs the
    uncompiled step (a fresh process pays ~13 s of compile to save ~2.4 ms a step on a 7B), a long one
    compiles; explicit modes are kept. The plan is made per ``iter_fast`` call from its micro-batches."""
    av = load_av(fixture_pairs["qwen2"].av)
    eng = fast.get_engine(av)
    monkeypatch.setattr(fast.OPTIONS, "compile_min_steps", 100)
    eng.compile_policy = "auto"
    assert eng.plan_compile(99) == "none" and eng._fns is None
    assert eng.plan_compile(100) == "all"
    assert eng.plan_compile(10) == "none"
    eng.compile_policy = eng.compile_mode = "sampler"
    assert eng.plan_compile(10**6) == "sampler"
    fast.release_engines(av.model)


def test_cpu_micro_batches_are_equal_chunks_of_cpu_batch(fixture_pairs, monkeypatch):
    """CPU micro-batches come from ``OPTIONS.cpu_batch`` (not the loop engine's batch_size) in equal chunks,
    for the injected and the plain mode, and the rows do not depend on them (fp32)."""
    from nlalab.verbalize import plain

    av = load_av(fixture_pairs["qwen2"].av)
    vecs = torch.randn(10, av.d_model, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(fast.OPTIONS, "trace", [])
    monkeypatch.setattr(fast.OPTIONS, "cpu_batch", 8)
    a = verbalize(av, vecs, k=1, settings=_gs(engine="fast", batch_size=3))
    monkeypatch.setattr(fast.OPTIONS, "cpu_batch", 64)
    b = verbalize(av, vecs, k=1, settings=_gs(engine="fast", batch_size=3))
    assert [r["batch"] for r in fast.OPTIONS.trace] == [5, 5, 10]
    assert _toks(a) == _toks(b)
    fast.OPTIONS.trace.clear()
    monkeypatch.setattr(fast.OPTIONS, "cpu_batch", 4)
    prompts = [av.tokenizer.encode(f"Say something about topic {i}.") for i in range(9)]
    plain.generate_texts(av.model, av.tokenizer, prompts, av.eos_ids, 1, list(range(9)),
                         _gs(engine="fast", max_new_tokens=4, batch_size=2))
    assert [r["rows"] for r in fast.OPTIONS.trace if r["mode"] == "plain"] == [3, 3, 3]
