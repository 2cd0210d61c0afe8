"""Each training stage really lowers its loss in a few CPU steps on fixture pairs (and can fail)."""


import pytest
import torch

from nlalab.testing import torch_threads
from nlalab.train.ar_sft import ARSFTSettings, initial_loss, train_ar_sft
from nlalab.train.av_sft import AVSFTSettings, derangement, eval_ce, train_av_sft
from nlalab.train.common import LoraSettings, OptimSettings, batch_indices, mse_nrm_per_sample
from nlalab.train.grpo import GRPOSettings, GRPOTrainer, group_advantages, nla_rewards, rollout
from nlalab.train.models import (
    av_sequences, load_trainable_ar, load_trainable_av, response_ids, response_logprobs,
)
from nlalab.verbalize import GenerationSettings, Verbalization, verbalize

CPU = torch.device("cpu")
CAT, DOG = "The text is about a cat.", "The text is about a dog."
TEXTS = [f"The text is about topic number {i} and the fox." for i in range(8)]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def vecs(n, seed=0, d=64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_batch_indices_are_a_pure_function():
    a = [batch_indices(10, 4, s, 3) for s in range(5)]
    assert a == [batch_indices(10, 4, s, 3) for s in range(5)]
    assert sorted(a[0] + a[1] + a[2][:2]) == list(range(10))  # one epoch covers every row once


def test_mse_nrm_is_two_one_minus_cos():
    p, g = vecs(5, 1), vecs(5, 2)
    cos = torch.nn.functional.cosine_similarity(p, g)
    torch.testing.assert_close(mse_nrm_per_sample(p, g, 64 ** 0.5), 2 * (1 - cos), atol=1e-5, rtol=1e-5)


def test_ar_sft_lowers_the_loss(fixture_pairs, tmp_path):
    tar = load_trainable_ar(fixture_pairs["qwen2"].ar, CPU)
    torch.testing.assert_close(tar.head.weight, torch.eye(64))  # identity-initialised head
    v = vecs(8)
    before = initial_loss(tar, TEXTS, v)
    res = train_ar_sft(tar, TEXTS, v, ARSFTSettings(steps=12, batch_size=8, optim=OptimSettings(lr=1e-3)), tmp_path)
    after = initial_loss(tar, TEXTS, v)
    assert after < 0.6 * before, (before, after)
    assert res.steps == 12 and (tmp_path / "curves.jsonl").is_file() and (tmp_path / "ckpt" / "ckpt.pt").is_file()


def test_ar_sft_with_lora_trains_only_adapters_and_head(fixture_pairs, tmp_path):
    pytest.importorskip("peft")
    tar = load_trainable_ar(fixture_pairs["llama"].ar, CPU, LoraSettings(enabled=True, r=4, alpha=8))
    names = [n for n, p in tar.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names) and tar.head.weight.requires_grad
    v = vecs(8)
    before = initial_loss(tar, TEXTS, v)
    train_ar_sft(tar, TEXTS, v, ARSFTSettings(steps=12, batch_size=8, optim=OptimSettings(lr=3e-3)), tmp_path)
    assert initial_loss(tar, TEXTS, v) < 0.7 * before


def test_ar_sft_resume_gives_the_same_weights(fixture_pairs, tmp_path):
    v = vecs(8)
    s = dict(batch_size=4, optim=OptimSettings(lr=1e-3), ckpt_every=3)
    a = load_trainable_ar(fixture_pairs["qwen2"].ar, CPU)
    train_ar_sft(a, TEXTS, v, ARSFTSettings(steps=6, **s), tmp_path / "straight")
    b = load_trainable_ar(fixture_pairs["qwen2"].ar, CPU)
    train_ar_sft(b, TEXTS, v, ARSFTSettings(steps=3, **s), tmp_path / "resumed")
    c = load_trainable_ar(fixture_pairs["qwen2"].ar, CPU)  # a fresh process picks up the checkpoint
    train_ar_sft(c, TEXTS, v, ARSFTSettings(steps=6, **s), tmp_path / "resumed")
    for (n, p), (_, q) in zip(a.model.named_parameters(), c.model.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)
    torch.testing.assert_close(a.head.weight, c.head.weight)
    steps = [r["step"] for r in __import__("nlalab.train.common", fromlist=["CurveLog"]).CurveLog(
        tmp_path / "resumed" / "curves.jsonl").rows()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_turn_close_ids_per_family(fixture_pairs):
    for arch_, close in (("qwen2", "<|im_end|>"), ("gemma3_text", "<end_of_turn>"), ("llama", "<|eot_id|>")):
        tav = load_trainable_av(fixture_pairs[arch_].av, CPU)
        assert tav.av.tokenizer.decode(tav.close_ids) == close
        assert tav.close_ids[-1] in tav.av.eos_ids


def test_av_sft_lowers_ce_and_tracks_the_shuffled_gap(fixture_pairs, tmp_path):
    tav = load_trainable_av(fixture_pairs["gemma3_text"].av, CPU)
    v = vecs(8)
    before = eval_ce(tav, TEXTS, v)
    res = train_av_sft(tav, TEXTS, v, AVSFTSettings(steps=12, batch_size=8, optim=OptimSettings(lr=1e-3)), tmp_path,
                       eval_explanations=TEXTS, eval_vectors=v)
    after = eval_ce(tav, TEXTS, v)
    assert after["eval_ce_real"] < 0.5 * before["eval_ce_real"], (before, after)
    assert {"eval_ce_real", "eval_ce_shuffled", "eval_gap"} <= set(res.metrics)
    assert after["eval_gap"] > 0  # the vectors tell the 8 explanations apart
    assert all(i != j for i, j in enumerate(derangement(8)))


def test_prompt_is_masked_and_injection_is_active(fixture_pairs):
    tav = load_trainable_av(fixture_pairs["qwen2"].av, CPU)
    av = tav.av
    resp = response_ids(av, "A cat.", tav.close_ids)
    ids, attn, mask = av_sequences(av, [resp, resp[:3]])
    assert ids.shape[1] == len(av.prompt_ids) + len(resp) and mask.sum() == len(resp) + 3
    v = vecs(2)
    lp1 = response_logprobs(tav.model, av, ids, attn, v)
    lp2 = response_logprobs(tav.model, av, ids, attn, v.flip(0))
    assert lp1.shape == mask.shape and not torch.allclose(lp1[0], lp2[0])  # the vector changes the loss


def test_training_logprobs_agree_with_generation(fixture_pairs):
    """Greedy tokens from nlalab's generation path are the argmax of the training (hook) forward."""
    tav = load_trainable_av(fixture_pairs["llama"].av, CPU)
    tav.model.eval()
    v = vecs(3)
    verbs = verbalize(tav.av, v, 1, GenerationSettings(greedy=True, max_new_tokens=6, engine="loop"))
    s = GRPOSettings(max_response_tokens=6, temperature=1e-6)
    ro = rollout(tav.av, v, 1, s, seed=0, vector_keys=range(3))
    assert [r.token_ids for r in verbs] == [r.token_ids for r in ro.verbs]
    ids, attn, _ = av_sequences(tav.av, ro.tokens)
    from nlalab.verbalize.inject import injection_hook

    t = tav.av.sidecar.tokens
    with torch.no_grad(), injection_hook(tav.model, v, tav.av.injection_scale, t.injection_token_id,
                                         t.injection_left_neighbor_id, t.injection_right_neighbor_id):
        logits = tav.model(input_ids=ids, attention_mask=attn).logits
    P = len(tav.av.prompt_ids)
    for r, toks in enumerate(ro.tokens):
        assert logits[r, P - 1:P - 1 + len(toks)].argmax(-1).tolist() == toks


def test_group_advantages():
    a = group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2)
    torch.testing.assert_close(a, torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 3.0]), 2, False), torch.tensor([-1.0, 1.0]))


def _verb(expl, missing=False, truncated=False):
    return Verbalization(0, 0, expl, expl, 5, truncated, missing, not expl, False, 0.0)


def test_nla_reward_is_minus_mse_with_a_failure_value(fixture_pairs):
    tar = load_trainable_ar(fixture_pairs["qwen2"].ar, CPU)
    v = vecs(4)
    verbs = [_verb("A cat."), _verb("A dog.", missing=True), _verb("A fox.", truncated=True), _verb("")]
    r, mse, ok = nla_rewards(tar, verbs, v, GRPOSettings())
    from nlalab.reconstruct import reconstruct
    from nlalab import metrics

    want = metrics.mse_nrm(reconstruct(tar.ar, ["A cat."]), v[:1], tar.ar.mse_scale)
    assert ok == [0] and r.tolist()[1:] == [-2.0, -2.0, -2.0]
    assert abs(float(r[0]) + float(want[0])) < 1e-4 and abs(float(mse[0]) - float(want[0])) < 1e-4
    r2, _, ok2 = nla_rewards(tar, verbs[:1], v[:1], GRPOSettings(max_ar_tokens=3))  # AR input too long
    assert ok2 == [] and float(r2[0]) == -2.0


def test_grpo_climbs_the_nla_reward(fixture_pairs, tmp_path):
    """An SFT'd AV says 'cat' or 'dog' about half the time; the AR maps cat -> u and dog -> -u; the vectors
    are near u. GRPO with the live-AR reward must make the AV say 'cat' (a sign or masking bug fails this)."""
    pair = fixture_pairs["qwen2"]
    g = torch.Generator().manual_seed(0)
    u = torch.randn(64, generator=g)
    v = u + 0.3 * torch.randn(4, 64, generator=g)
    tav = load_trainable_av(pair.av, CPU)
    train_av_sft(tav, [CAT] * 4 + [DOG] * 4, torch.cat([v, v]),
                 AVSFTSettings(steps=40, batch_size=8, optim=OptimSettings(lr=2e-3)), tmp_path / "av")
    tar = load_trainable_ar(pair.ar, CPU)
    train_ar_sft(tar, [CAT, DOG], torch.stack([u, -u]), ARSFTSettings(steps=15, batch_size=2,
                                                                      optim=OptimSettings(lr=1e-3)), tmp_path / "ar")
    s = GRPOSettings(steps=8, prompts_per_step=4, group_size=4, max_response_tokens=16,
                     av_optim=OptimSettings(lr=1e-3), ar_optim=OptimSettings(lr=1e-5), samples_every=4, eval_every=0)

    def measure():
        ro = rollout(tav.av, v, 8, s, seed=999, vector_keys=range(4))
        r, _, _ = nla_rewards(tar, ro.verbs, v[ro.vec_rows], s)
        return float(r.mean()), sum("cat" in x.explanation for x in ro.verbs) / len(ro.verbs)

    r0, cat0 = measure()
    trainer = GRPOTrainer(tav, tar, v, s, tmp_path / "rl", b_rv=0.5)
    first = trainer.step()
    assert first["kl_ref"] == pytest.approx(0.0, abs=1e-6) and first["clipfrac"] == 0.0  # on-policy, ref = SFT
    assert first["ar_loss"] is not None and "fve_nrm" in first
    res = trainer.train()
    r1, cat1 = measure()
    assert cat1 > cat0 + 0.25 and r1 > r0 + 0.5, (r0, cat0, r1, cat1)
    assert res.metrics["kl_ref"] > 0 and (tmp_path / "rl" / "samples.jsonl").is_file()
