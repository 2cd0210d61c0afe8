"""The chat-last-token share of training batches (KindSampler): exact per batch, seeded, resumable."""

import pytest
import torch
from pydantic import ValidationError

from nlalab.errors import NLALabError
from nlalab.train.common import KindSampler, SFTSettings, batch_indices, batch_sampler, run_sft
from nlalab.train.grpo import GRPOSettings, GRPOTrainer
from nlalab.train.models import load_trainable_av

KINDS = ["raw"] * 37 + ["chat_last"] * 3  # chat rows are 37..39
CHAT = {37, 38, 39}


def test_every_batch_has_the_asked_share_and_each_stratum_cycles_through_its_rows():
    s = KindSampler(KINDS, "chat_last", 0.25, seed=3)
    batches = [s(8, step) for step in range(20)]
    assert all(len(b) == 8 and sum(i in CHAT for i in b) == 2 for b in batches)
    chat = [i for b in batches for i in b if i in CHAT]
    raw = [i for b in batches for i in b if i not in CHAT]
    # each stratum is an endless stream of permutations: no repeats within an epoch, every row in one
    assert len(set(chat[:2])) == 2 and set(chat[:4]) == CHAT
    assert len(set(raw[:36])) == 36 and set(raw[:42]) == set(range(37))
    assert batches == [KindSampler(KINDS, "chat_last", 0.25, seed=3)(8, step) for step in range(20)]  # pure
    assert batches != [KindSampler(KINDS, "chat_last", 0.25, seed=4)(8, step) for step in range(20)]
    assert not any(i in CHAT for step in range(10) for i in KindSampler(KINDS, "chat_last", 0.0, seed=3)(8, step))


def test_share_one_and_rounding():
    only_chat = ["chat_last"] * 5
    assert sorted(KindSampler(only_chat, "chat_last", 1.0, seed=0)(5, 0)) == [0, 1, 2, 3, 4]
    assert KindSampler(KINDS, "chat_last", 0.3, seed=0).counts(64) == (19, 45)  # round(19.2)


def test_impossible_shares_say_what_to_change():
    with pytest.raises(NLALabError, match="chat_fraction"):
        KindSampler(["raw"] * 4, "chat_last", 0.3, seed=0)
    with pytest.raises(NLALabError, match="chat_fraction"):
        KindSampler(["chat_last"] * 4, "chat_last", 0.3, seed=0)
    with pytest.raises(NLALabError, match=r"\[0, 1\]"):
        KindSampler(KINDS, "chat_last", 1.5, seed=0)
    with pytest.raises(ValidationError):
        SFTSettings(chat_fraction=-0.1)
    with pytest.raises(ValidationError):
        GRPOSettings(chat_fraction=2)
    # no share (or no kinds): the natural mix, i.e. exactly batch_indices' batches
    for sample in (batch_sampler(len(KINDS), KINDS, None, 0), batch_sampler(len(KINDS), None, 0.3, 0)):
        assert [sample(8, step) for step in range(6)] == [batch_indices(len(KINDS), 8, step, 0) for step in range(6)]


def test_run_sft_draws_the_mix_and_a_resumed_run_sees_the_same_batches(tmp_path):
    lin = torch.nn.Linear(2, 1)
    seen: list[list[int]] = []

    def step_loss(idx, mb):
        seen.append(list(idx))
        loss = lin(torch.ones(len(idx), 2)).pow(2).mean()
        loss.backward()
        return {"loss": float(loss.detach())}

    s = SFTSettings(steps=6, batch_size=10, chat_fraction=0.5, ckpt_every=3, eval_every=100)
    run_sft("t", "t", {"lin": lin}, len(KINDS), s, tmp_path / "a", step_loss, kinds=KINDS)
    full = list(seen)
    assert len(full) == 6 and all(sum(i in CHAT for i in b) == 5 for b in full)
    # interrupted after step 3 (checkpoint), then resumed: steps 4-6 see the batches of the full run
    seen.clear()
    run_sft("t", "t", {"lin": lin}, len(KINDS), s.model_copy(update={"steps": 3}), tmp_path / "b", step_loss,
            kinds=KINDS)
    seen.clear()
    run_sft("t", "t", {"lin": lin}, len(KINDS), s, tmp_path / "b", step_loss, kinds=KINDS)
    assert seen == full[3:]
    seen.clear()
    run_sft("t", "t", {"lin": lin}, len(KINDS), s.model_copy(update={"chat_fraction": None}), tmp_path / "c",
            step_loss, kinds=KINDS)
    assert sum(i in CHAT for b in seen for i in b) < 0.2 * 60  # natural mix: ~7.5 %


def test_grpo_prompts_follow_the_share(fixture_pairs, tmp_path):
    tav = load_trainable_av(fixture_pairs["qwen2"].av, torch.device("cpu"))
    s = GRPOSettings(steps=1, prompts_per_step=8, group_size=2, max_response_tokens=4, chat_fraction=0.5,
                     eval_every=0, samples_every=0)
    tr = GRPOTrainer(tav, None, torch.randn(len(KINDS), 64), s, tmp_path, reward_fn=lambda verbs, gold:
                     torch.zeros(len(verbs)), kinds=KINDS)
    assert sum(i in CHAT for i in tr.sampler(8, 0)) == 4
    natural = GRPOTrainer(tav, None, torch.randn(len(KINDS), 64), s.model_copy(update={"chat_fraction": None}),
                          tmp_path / "n", reward_fn=lambda verbs, gold: torch.zeros(len(verbs)), kinds=KINDS)
    assert natural.sampler(8, 3) == batch_indices(len(KINDS), 8, 3, s.seed)
