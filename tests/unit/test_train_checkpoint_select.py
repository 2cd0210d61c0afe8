"""rl.select's rule on made-up held-out metrics, the interval arithmetic, and the GRPO trainer's checkpoint
writes across an interruption (no finished checkpoint rewritten, none missed)."""

import json

import pytest
import torch

from nlalab.testing import torch_threads
from nlalab.train.checkpoints import (
    MARKER, IntervalCheckpoints, is_due, read_checkpoints, select_checkpoint, selection_record,
)
from nlalab.train.common import OptimSettings
from nlalab.train.grpo import GRPOSettings, GRPOTrainer
from nlalab.train.models import load_trainable_ar, load_trainable_av


def rec(step, fve, hit, raw=0.1):
    return {"name": f"rl_step_{step:06d}", "step": step,
            "eval": {"eval_fve_nrm_chat": fve, "eval_hit_chat": hit, "eval_fve_nrm": raw},
            "train": {"fve_nrm": 0.99, "reward": -0.01}}  # training figures must never decide


def test_best_is_the_highest_hit_rate_among_positive_fve():
    recs = [rec(10, 0.30, 0.40), rec(20, -0.10, 0.90), rec(30, 0.05, 0.55), rec(40, 0.50, 0.50)]
    best, why = select_checkpoint(recs, "best")
    assert best["step"] == 30 and "hit rate" in why  # step 20 has the best hit rate but fve_nrm <= 0


def test_best_ties_go_to_the_higher_fve():
    best, _ = select_checkpoint([rec(10, 0.20, 0.5), rec(20, 0.40, 0.5), rec(30, 0.30, 0.5)], "best")
    assert best["step"] == 20


def test_best_without_positive_fve_takes_the_highest_fve():
    best, why = select_checkpoint([rec(10, -0.5, 0.9), rec(20, -0.1, 0.1), rec(30, -0.3, None)], "best")
    assert best["step"] == 20 and "no checkpoint has held-out chat fve_nrm > 0" in why


def test_missing_metrics_and_last():
    assert select_checkpoint([rec(10, None, None), rec(20, None, None)], "best")[0]["step"] == 20
    assert select_checkpoint([rec(20, 0.9, 0.9), rec(10, 0.1, 0.1)], "last")[0]["step"] == 20
    assert select_checkpoint([], "best") == (None, "no checkpoints")
    sel = selection_record([rec(10, 0.2, 0.3), rec(20, 0.1, 0.6)], "best")
    assert sel["selected"] == "rl_step_000020" and [c["eval_hit_chat"] for c in sel["candidates"]] == [0.3, 0.6]


def test_interval():
    assert [s for s in range(0, 8) if is_due(s, 3, 7)] == [3, 6, 7]
    assert not any(is_due(s, 0, 7) for s in range(8))
    with pytest.raises(ValueError, match="checkpoint_every"):
        GRPOSettings(select="best")


def test_atomic_write_and_incomplete_dirs_are_redone(tmp_path):
    calls = []

    def write_pair(d, step):
        calls.append(step)
        for r in ("av", "ar"):
            (d / r).mkdir()
            (d / r / "w").write_text(str(step))

    ic = IntervalCheckpoints(tmp_path / "checkpoints", 2, 5, write_pair)
    assert ic.write(2, {"eval_hit_chat": 0.5, "loss": 1.0}) and not ic.write(2, {})
    (tmp_path / "checkpoints" / "rl_step_000004" / "av").mkdir(parents=True)  # leftover without its marker
    assert not ic.done(4) and ic.write(4, {}) and ic.done(4)
    assert calls == [2, 4]
    recs = read_checkpoints(tmp_path)
    assert [r["name"] for r in recs] == ["rl_step_000002", "rl_step_000004"]
    assert recs[0]["eval"] == {"eval_hit_chat": 0.5}


class Crash(Exception):
    pass


def test_grpo_writes_checkpoints_and_a_resume_rewrites_none(fixture_pairs, tmp_path):
    """Crash after step 3 (GRPO state saved at 2): resuming replays step 3, writes 4 and 5, keeps 2."""
    pair = fixture_pairs["qwen2"]
    v = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    s = GRPOSettings(steps=5, prompts_per_step=2, group_size=2, max_response_tokens=6, eval_every=0, ckpt_every=2,
                     samples_every=0, checkpoint_every=2, av_optim=OptimSettings(lr=1e-4))
    written = []

    def write_pair(d, step):
        written.append(step)
        for r in ("av", "ar"):
            (d / r).mkdir()

    evals = []

    def eval_fn():
        evals.append(1)
        return {"eval_fve_nrm_chat": 0.1, "eval_hit_chat": 0.2}

    def crash_at_3(stage, row):
        if row["step"] == 3:
            raise Crash()

    with torch_threads(1):
        ic = IntervalCheckpoints(tmp_path / "checkpoints", s.checkpoint_every, s.steps, write_pair)
        t = GRPOTrainer(load_trainable_av(pair.av, torch.device("cpu")), load_trainable_ar(pair.ar, torch.device("cpu")),
                        v, s, tmp_path / "rl", b_rv=0.5, eval_fn=eval_fn, on_log=crash_at_3, checkpoints=ic)
        with pytest.raises(Crash):
            t.train()
        assert written == [2] and len(evals) == 2  # step 0 and the forced eval at checkpoint step 2
        t2 = GRPOTrainer(load_trainable_av(pair.av, torch.device("cpu")), load_trainable_ar(pair.ar, torch.device("cpu")),
                         v, s, tmp_path / "rl", b_rv=0.5, eval_fn=eval_fn, checkpoints=ic)
        assert t2.step_no == 2
        t2.train()
    assert written == [2, 4, 5]
    assert json.loads((tmp_path / "checkpoints" / "rl_step_000004" / MARKER).read_text())["eval"]["eval_hit_chat"] == 0.2
