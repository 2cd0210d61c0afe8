"""Core stages on fixture pairs of every architecture: capture, injection, generation, reconstruction."""

import numpy as np
import torch

from nlalab import metrics
from nlalab.capture import capture, encode, random_positions, run_to_block
from nlalab.pairs import arch
from nlalab.pairs.load import load_ar, load_av, load_target
from nlalab.reconstruct import reconstruct
from nlalab.verbalize import GenerationSettings, verbalize
from nlalab.verbalize.inject import injected_embeds, rescale

PROMPTS = ["What is the capital of Brazil?", "Implement quicksort in C without using recursion.",
           "Prove that the square root of 2 is irrational.", "Hi"]


def full_hidden_states(pair, text):
    """Reference: transformers' own full model (the wrapper class for the multimodal layout)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(pair.target)
    if arch.is_wrapper(cfg):
        from transformers import Gemma3ForConditionalGeneration as cls
    else:
        cls = AutoModelForCausalLM
    model = cls.from_pretrained(pair.target, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(pair.target)
    ids = encode(tok, text, "chat")
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states, ids


def test_capture_equals_hidden_states_k_plus_1(fixture_pair):
    K = fixture_pair.layer
    tg = load_target(fixture_pair.target, K)
    assert tg.truncated and len(arch.decoder_layers(tg.model)) == K + 1
    cap = capture(tg.model, tg.tokenizer, PROMPTS, K, batch_size=3)
    for i, text in enumerate(PROMPTS):
        hs, ids = full_hidden_states(fixture_pair, text)
        torch.testing.assert_close(cap.vectors[i], hs[K + 1][0, -1].float(), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(cap.vectors[i], hs[K][0, -1].float(), atol=1e-3)  # not the off-by-one
        assert cap.meta[i]["token_index"] == len(ids) - 1
    assert cap.hook_name == f"blocks.{K}.hook_resid_post"


def test_capture_runs_no_block_after_k(fixture_pair):
    K = fixture_pair.layer
    tg = load_target(fixture_pair.target, K, truncate=False)
    layers = arch.decoder_layers(tg.model)
    assert len(layers) > K + 1
    fired = []
    hooks = [layers[j].register_forward_hook(lambda *a, j=j: fired.append(j)) for j in range(len(layers))]
    try:
        cap = capture(tg.model, tg.tokenizer, PROMPTS[:2], K)
    finally:
        for h in hooks:
            h.remove()
    assert max(fired) == K and set(fired) == set(range(K + 1))
    # the truncated load gives the same vectors
    tg2 = load_target(fixture_pair.target, K)
    torch.testing.assert_close(capture(tg2.model, tg2.tokenizer, PROMPTS[:2], K).vectors, cap.vectors)


def test_batched_capture_equals_one_by_one(fixture_pairs):
    pair = fixture_pairs["gemma3_text"]  # left-padding tokenizer by default: capture must still be right
    tg = load_target(pair.target, pair.layer)
    batched = capture(tg.model, tg.tokenizer, PROMPTS, pair.layer, batch_size=4)
    single = torch.cat([capture(tg.model, tg.tokenizer, [p], pair.layer).vectors for p in PROMPTS])
    torch.testing.assert_close(batched.vectors, single, atol=1e-5, rtol=1e-5)


def test_position_strategies(fixture_pairs):
    pair = fixture_pairs["llama"]
    tg = load_target(pair.target, pair.layer)
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
    cap = capture(tg.model, tg.tokenizer, [long_text, "short"], pair.layer, positions="random", ids=["a", "b"],
                  n_random=5, seed=3)
    idx = [m["token_index"] for m in cap.meta]
    assert len(idx) == 5 and all(i >= 50 for i in idx)  # "short" has no candidate >= 50
    assert all(m["item_id"] == "a" for m in cap.meta)
    again = capture(tg.model, tg.tokenizer, [long_text], pair.layer, positions="random", ids=["a"], n_random=5, seed=3)
    assert [m["token_index"] for m in again.meta] == idx
    other = random_positions(list(range(200)), "a", 4, 5, set())
    assert other != random_positions(list(range(200)), "a", 3, 5, set())
    # special tokens are never picked
    ids = list(range(120))
    assert all(p not in {60, 61} for p in random_positions(ids, "d", 0, 60, {60, 61}))
    allpos = capture(tg.model, tg.tokenizer, ["Hi"], pair.layer, positions="all")
    assert [m["token_index"] for m in allpos.meta] == list(range(len(allpos.meta)))
    explicit = capture(tg.model, tg.tokenizer, ["Hi"], pair.layer, positions=[0, -1])
    torch.testing.assert_close(explicit.vectors, allpos.vectors[[0, -1]])


def test_injection_row_seen_by_block_0(fixture_pair):
    av = load_av(fixture_pair.av)
    d = av.d_model
    torch.manual_seed(0)
    vecs = torch.randn(2, d) * 1000.0  # any norm: it is rescaled to injection_scale
    seen = {}

    def grab(_m, args, kwargs):
        seen.setdefault("x", (args[0] if args else kwargs["hidden_states"]).detach().clone())

    h = arch.decoder_layers(av.model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        verbalize(av, vecs, k=1, settings=GenerationSettings(max_new_tokens=2, greedy=True))
    finally:
        h.remove()
    x = seen["x"]
    p = av.marker_pos
    torch.testing.assert_close(x[:, p], rescale(vecs, av.injection_scale), atol=1e-4, rtol=1e-5)
    assert torch.allclose(x[:, p].norm(dim=-1), torch.full((2,), av.injection_scale), rtol=1e-5)
    # every other row is the model's own embedding output (with Gemma's sqrt(d) scale), unscaled vector
    ids = torch.tensor(av.prompt_ids)
    ref = av.model.get_input_embeddings().weight[ids] * arch.embed_scale(av.model.config)
    keep = [i for i in range(len(ids)) if i != p]
    torch.testing.assert_close(x[0, keep], ref[keep], atol=1e-4, rtol=1e-4)


def test_changing_the_vector_changes_the_output(fixture_pair):
    av = load_av(fixture_pair.av)
    torch.manual_seed(1)
    vecs = torch.randn(2, av.d_model)
    emb = injected_embeds(av.model, av.prompt_ids, vecs, av.marker_pos, av.injection_scale)
    with torch.no_grad():
        logits = av.model(inputs_embeds=emb).logits[:, -1]
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_greedy_loop_equals_transformers_generate(fixture_pair):
    av = load_av(fixture_pair.av)
    torch.manual_seed(2)
    vecs = torch.randn(3, av.d_model)
    ours = verbalize(av, vecs, settings=GenerationSettings(max_new_tokens=16, greedy=True, engine="loop"))
    ref = verbalize(av, vecs, settings=GenerationSettings(max_new_tokens=16, greedy=True, engine="hf"))
    assert [r.token_ids for r in ours] == [r.token_ids for r in ref]


def test_sampling_is_seeded_and_batch_invariant(fixture_pairs):
    av = load_av(fixture_pairs["qwen2"].av)
    torch.manual_seed(3)
    vecs = torch.randn(3, av.d_model)
    gs = GenerationSettings(max_new_tokens=12, temperature=1.0, seed=42, batch_size=9)
    a = verbalize(av, vecs, k=3, settings=gs)
    b = verbalize(av, vecs, k=3, settings=GenerationSettings(**{**gs.__dict__, "batch_size": 2}))
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [(r.vector_index, r.sample) for r in a] == [(i, s) for i in range(3) for s in range(3)]
    c = verbalize(av, vecs, k=3, settings=GenerationSettings(**{**gs.__dict__, "seed": 43}))
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    assert len({tuple(r.token_ids) for r in a if r.vector_index == 0}) > 1  # K samples differ
    # resume: skipping done rows and regenerating the rest gives the same rows
    rest = verbalize(av, vecs, k=3, settings=gs, skip={(0, 0), (1, 2)})
    assert [r.token_ids for r in rest] == [r.token_ids for r in a if (r.vector_index, r.sample) not in {(0, 0), (1, 2)}]


def test_untrained_ar_reproduces_the_activation(fixture_pair):
    """Identity head + the base's first K+1 blocks: the AR reading text returns that text's block-K vector."""
    K = fixture_pair.layer
    ar = load_ar(fixture_pair.ar)
    assert isinstance(arch.inner_model(ar.model).norm, torch.nn.Identity)
    assert isinstance(ar.model.lm_head, torch.nn.Identity)
    assert len(arch.decoder_layers(ar.model)) == K + 1
    texts = ["a short one", "a much longer explanation with many more words in it to force padding"]
    rec = reconstruct(ar, texts, batch_size=2)
    tg = load_target(fixture_pair.target, K)
    for i, t in enumerate(texts):
        ids = ar.tokenizer(ar.template.format(explanation=t), add_special_tokens=True)["input_ids"]
        h = run_to_block(tg.model, K, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        torch.testing.assert_close(rec[i], h[0, -1].float(), atol=1e-4, rtol=1e-4)
    # padding side does not matter
    ar.tokenizer.padding_side = "left"
    torch.testing.assert_close(reconstruct(ar, texts, batch_size=2), rec, atol=1e-5, rtol=1e-5)


def test_ar_adds_bos_for_gemma_and_llama(fixture_pairs):
    for name in ("gemma3_text", "llama"):
        ar = load_ar(fixture_pairs[name].ar)
        ids = ar.tokenizer(ar.template.format(explanation="x"), add_special_tokens=True)["input_ids"]
        assert ids[0] == ar.tokenizer.bos_token_id and ids[1] != ar.tokenizer.bos_token_id


def test_round_trip_metrics_are_finite(fixture_pairs):
    pair = fixture_pairs["qwen2"]
    tg = load_target(pair.target, pair.layer)
    cap = capture(tg.model, tg.tokenizer, PROMPTS, pair.layer)
    av = load_av(pair.av)
    v = verbalize(av, cap.vectors, k=2, settings=GenerationSettings(max_new_tokens=8))
    ar = load_ar(pair.ar)
    rec = reconstruct(ar, [r.explanation for r in v])
    s = metrics.score_pairs(rec, cap.vectors[[r.vector_index for r in v]], ar.mse_scale,
                            b_rv=metrics.brv(cap.vectors, ar.mse_scale))
    for key in ("cos", "mse_nrm", "fve_nrm_seed", "fve_nrm"):
        assert torch.isfinite(s[key]).all()
    assert np.allclose(s["mse_nrm"].numpy(), 2 * (1 - s["cos"].numpy()), atol=1e-6)  # mse_scale = sqrt(d)
