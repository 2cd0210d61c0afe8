"""Tensor-parallel engine on the CPU: 2 processes (gloo) give the one-process loop engine's rows.

The group is spawned once for the module (``nlalab.verbalize.tp``: this process is rank 0, one more rank
is started with torch.multiprocessing) and reused by every test; fp32, so the only difference from
``loop`` is the order of the split sums (o/down all-reduce), which leaves the tokens equal."""

import pytest
import torch

from nlalab.capture import capture, run_to_block
from nlalab.errors import UsageError
from nlalab.pairs.load import av_eos_ids, load_ar, load_av, load_target
from nlalab.reconstruct import max_rel_change, reconstruct
from nlalab.testing import chat_prompt_ids, torch_threads
from nlalab.verbalize import GenerationSettings, backends, verbalize
from nlalab.verbalize import tp
from nlalab.verbalize.plain import generate_texts

TWO = ["cpu", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def _group():
    with torch_threads(1):
        yield
    tp.shutdown()


def _toks(recs):
    return [r.token_ids for r in recs]


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_two_ranks_give_the_loop_rows(fixture_pairs, name):
    """Greedy, sampled and filtered decoding; Gemma-3 also checks the embedding scale, the (1 + w) norms,
    sliding windows and final soft-capping across the vocabulary split."""
    av = load_av(fixture_pairs[name].av)
    torch.manual_seed(2)
    vecs = torch.randn(3, av.d_model)
    for kw in (dict(greedy=True), dict(temperature=1.0, seed=3), dict(temperature=0.8, top_k=20, top_p=0.9)):
        loop = verbalize(av, vecs, k=2, settings=GenerationSettings(max_new_tokens=16, engine="loop", **kw),
                         vector_keys=[5, 6, 7])
        seen = []
        two = verbalize(av, vecs, k=2, vector_keys=[5, 6, 7], on_batch=seen.extend,
                        settings=GenerationSettings(max_new_tokens=16, engine="tp", devices=TWO, batch_size=4, **kw))
        assert _toks(two) == _toks(loop), (name, kw)
        assert [r.to_dict() for r in two] == [r.to_dict() for r in loop]
        assert [(r.vector_index, r.sample) for r in seen] == [(r.vector_index, r.sample) for r in loop]
    assert tp.current() is not None and tp.current().world == 2


def test_resume_and_micro_batches_do_not_change_rows(fixture_pairs):
    av = load_av(fixture_pairs["qwen2"].av)
    torch.manual_seed(4)
    vecs = torch.randn(3, av.d_model)
    kw = dict(engine="tp", devices=TWO, max_new_tokens=12, temperature=1.0, seed=9)
    full = verbalize(av, vecs, k=2, settings=GenerationSettings(batch_size=6, **kw))
    part = verbalize(av, vecs, k=2, settings=GenerationSettings(batch_size=1, **kw), skip={(0, 0), (2, 1)})
    assert _toks(part) == [r.token_ids for r in full if (r.vector_index, r.sample) not in {(0, 0), (2, 1)}]
    loop = verbalize(av, vecs, k=2, settings=GenerationSettings(engine="loop", max_new_tokens=12, temperature=1.0,
                                                                seed=9))
    assert _toks(full) == _toks(loop)


def test_block_k_forward_equals_the_model(fixture_pairs):
    """Capture / AR forward on the shards: block-K output of right-padded rows, as ``run_to_block``."""
    p = fixture_pairs["gemma3_text"]
    tg = load_target(p.target, p.layer, truncate=False)
    ids = torch.tensor([[2, 17, 30, 41, 5, 6, 9, 11, 12, 40], [2, 19, 33, 8, 0, 0, 0, 0, 0, 0]])
    mask = (torch.arange(10)[None] < torch.tensor([[10], [4]])).long()
    ids = ids.masked_fill(mask == 0, tg.tokenizer.pad_token_id or 0)
    ref = run_to_block(tg.model, p.layer, ids, mask)
    got = tp.tp_run_to_block(tg.model, p.layer, ids, mask, devices=TWO)
    m = mask.bool()
    torch.testing.assert_close(got[m], ref[m], rtol=1e-5, atol=1e-5)


TEXTS = ["Hi", "What is the capital of Brazil and why?", "Prove it.", "x " * 20, "The cat sat on the mat."]


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_capture_and_reconstruction_on_the_group_equal_one_process(fixture_pairs, name):
    """The study's capture (truncated target, last token and every token) and the AR (trunk without norm
    or LM head, value head on rank 0) on 2 ranks: the one-process vectors within 1e-5 (fp32)."""
    p = fixture_pairs[name]
    tg = load_target(p.target, p.layer)
    for positions in ("last", "all"):
        ref = capture(tg.model, tg.tokenizer, TEXTS, p.layer, positions=positions, batch_size=3)
        got = capture(tg.model, tg.tokenizer, TEXTS, p.layer, positions=positions, batch_size=3, tensor_parallel=TWO)
        strip = lambda meta: [{k: v for k, v in m.items() if k != "norm"} for m in meta]  # noqa: E731
        assert strip(got.meta) == strip(ref.meta) and len(got.meta) > len(TEXTS) * (positions == "all")
        assert max_rel_change(got.vectors, ref.vectors) < 1e-5, (positions, max_rel_change(got.vectors, ref.vectors))
    ar = load_ar(p.ar, layer=p.layer)
    assert not tp.has_head(ar.model) and tp.unsupported_reason(ar.model)  # no LM head: no generation,
    assert not tp.unsupported_reason(ar.model, head=False)  # but its blocks shard
    texts = TEXTS + ["A longer explanation about geography, capitals and the reasons behind them."]
    ref = reconstruct(ar, texts, batch_size=4)
    got = reconstruct(ar, texts, batch_size=4, tensor_parallel=TWO)
    assert max_rel_change(got, ref) < 1e-5, max_rel_change(got, ref)
    assert tp.current().world == 2
    # one device: the forward stays in this process (no group needed)
    assert tp.tp_forward_group(ar.model, ["cpu"]) is None


def _trunk_view(model, layer):
    """A K+1-block LM sharing ``model``'s embedding and blocks, without norm or head (bench_study's AR)."""
    from torch import nn
    from transformers import AutoModelForCausalLM

    from nlalab.pairs import arch

    view = AutoModelForCausalLM.from_config(arch.truncated_text_config(model.config, layer + 1))
    src, dst = arch.inner_model(model), arch.inner_model(view)
    for name, _ in list(dst.named_children()):
        setattr(dst, name, nn.ModuleList(list(src.layers[: layer + 1])) if name == "layers" else getattr(src, name))
    arch.strip_head_and_norm(view)
    return view.eval()


def test_a_truncated_view_uses_the_full_models_shard(fixture_pairs):
    """bench_study's AR shares the target's blocks: its block forward runs on the target's shard (the same
    weights are not sliced and sent to the ranks twice), with the same output."""
    p = fixture_pairs["qwen2"]
    tg = load_target(p.target, p.layer, truncate=False)
    ids = torch.tensor([[2, 17, 30, 41, 5, 6, 9], [2, 19, 33, 8, 0, 0, 0]])
    mask = (torch.arange(7)[None] < torch.tensor([[7], [4]])).long()
    full = tp.tp_run_to_block(tg.model, p.layer, ids, mask, devices=TWO)
    n = len(tp.current().models)
    view = _trunk_view(tg.model, p.layer)
    got = tp.tp_run_to_block(view, p.layer, ids, mask, devices=TWO)
    assert len(tp.current().models) == n and torch.equal(got, full)
    m = mask.bool()
    assert max_rel_change(got[m], run_to_block(view, p.layer, ids, mask)[m]) < 1e-5


def _prompts(tok, texts):
    return chat_prompt_ids(tok, texts)


@pytest.mark.parametrize("name", ["gemma3_text", "qwen2"])
def test_plain_mode_gives_the_loop_rows(fixture_pairs, name):
    """The blind control's plain mode on 2 ranks: prompts of different lengths (shared template prefix once,
    per-row positions), greedy and sampled, rows ending early; records equal the one-process loop's."""
    p = fixture_pairs[name]
    tg = load_target(p.target, p.layer, truncate=False)
    tok = tg.tokenizer
    prompts = _prompts(tok, ["Hi", "What is the capital of Brazil and why?", "Prove it.", "x " * 20])
    eos = av_eos_ids(tok, tg.model)
    cases = [(eos, dict(greedy=True)), (eos, dict(temperature=1.0, seed=3)),
             (list(range(0, len(tok), 7)), dict(temperature=0.8, top_k=20, top_p=0.9, seed=4))]
    for eos_i, kw in cases:  # the last: 1 token in 7 ends a row, so rows stop at different steps
        loop = generate_texts(tg.model, tok, prompts, eos_i, 2, [5, 6, 7, 8],
                              GenerationSettings(max_new_tokens=14, batch_size=8, engine="loop", **kw))
        two = generate_texts(tg.model, tok, prompts, eos_i, 2, [5, 6, 7, 8],
                             GenerationSettings(max_new_tokens=14, batch_size=3, engine="tp", devices=TWO, **kw))
        assert [r.to_dict(with_tokens=True) for r in two] == [r.to_dict(with_tokens=True) for r in loop], (name, kw)
    assert len({tuple(r.token_ids) for r in loop}) > 1 and len({r.n_new_tokens for r in loop}) > 1


def test_registry_and_refusals(fixture_pairs):
    caps = backends.capabilities("tp")
    assert caps.tensor_parallel and caps.multi_gpu and caps.per_row_sampling and caps.plain
    assert backends.resolve("tp", load_av(fixture_pairs["llama"].av).model, plain=True) == "tp"
    with pytest.raises(UsageError, match="4 attention heads do not split evenly"):
        tp.check_world(4, 2, 3)
    with pytest.raises(UsageError, match="key/value heads neither split"):
        tp.check_world(12, 4, 6)
    tp.check_world(8, 2, 4)  # KV heads replicated: 2 ranks read each


def test_shards_cover_the_weights_and_replicate_kv_heads(fixture_pairs):
    """Slices are views; concatenated over ranks they are the weights; with more ranks than KV heads each
    rank holds the KV head its query heads read (fixtures: 4 query heads, 2 KV heads)."""
    model = load_av(fixture_pairs["llama"].av).model
    at = model.model.layers[0].self_attn
    D = at.head_dim
    two = [tp.shard_weights(model, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([w.layers[0].wq for w in two]), at.q_proj.weight)
    assert torch.equal(torch.cat([w.layers[0].wo for w in two], 1), at.o_proj.weight)
    assert two[0].layers[0].wq.data_ptr() == at.q_proj.weight.data_ptr()  # a view, no copy
    V = model.lm_head.weight.shape[0]
    assert torch.equal(torch.cat([w.lm_w for w in two])[:V], model.lm_head.weight)
    four = [tp.shard_weights(model, r, 4) for r in range(4)]
    assert [w.cfg.n_kv for w in four] == [1] * 4 and [w.cfg.n_heads for w in four] == [1] * 4
    for r, w in enumerate(four):  # query head r reads KV head r // 2
        assert torch.equal(w.layers[0].wk, at.k_proj.weight[(r // 2) * D:(r // 2 + 1) * D])


@pytest.mark.slow
def test_four_ranks_replicate_kv_heads_and_give_the_loop_rows(fixture_pairs):
    """4 ranks on fixtures with 2 KV heads: each KV head is held by two ranks (restarts the group)."""
    av = load_av(fixture_pairs["llama"].av)
    torch.manual_seed(3)
    vecs = torch.randn(2, av.d_model)
    kw = dict(max_new_tokens=12, temperature=1.0, seed=5)
    loop = verbalize(av, vecs, k=2, settings=GenerationSettings(engine="loop", **kw))
    four = verbalize(av, vecs, k=2, settings=GenerationSettings(engine="tp", devices=4, **kw))
    assert tp.current().world == 4
    assert _toks(four) == _toks(loop)
    tp.shutdown()
