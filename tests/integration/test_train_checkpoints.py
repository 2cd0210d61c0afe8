"""Interval checkpoints of `nlalab train` (issue 19): written at the interval as validating pairs with held-out
metrics, never rewritten on resume, expanded by the sweep in training order; rl.select=best exports by the rule."""

import json

import pytest
import torch

from nlalab.pairs.validate import validate_pair
from nlalab.sweep.grid import expand_checkpoints
from nlalab.testing import torch_threads
from nlalab.train import apply_overrides, train_pair
from nlalab.train.checkpoints import MARKER, read_checkpoints

from test_train_pipeline import tiny_config, write_corpus  # noqa: E402  (tests/integration is on sys.path)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def test_checkpoints_at_the_interval_resume_and_sweep_order(fixture_pairs, tmp_path):
    pair = fixture_pairs["qwen2"]
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "run"
    cfg = apply_overrides(tiny_config(out, pair, corpus), {
        "rl.steps": 3, "rl.checkpoint_every": 2, "rl.eval_every": 0, "rl.ckpt_every": 1, "eval.untrained": False,
        "data.fractions": {"ar_sft": 0.25, "av_sft": 0.25, "rl": 0.25, "eval": 0.25}})
    events = []
    final = train_pair(cfg, on_event=events.append)
    ck = out / "checkpoints"
    names = sorted(p.name for p in ck.iterdir() if not p.name.startswith("."))
    assert names == ["rl_step_000002", "rl_step_000003"]  # every 2 steps and the last; no step 0 (= sft)
    for n in names:
        assert validate_pair(ck / n / "av", ck / n / "ar").ok
        rec = json.loads((ck / n / MARKER).read_text())
        assert rec["stage"] == "rl" and rec["step"] == int(n[-6:])
        # the held-out eval is forced at checkpoint steps (rl.eval_every = 0 here)
        assert {"eval_fve_nrm", "eval_fve_nrm_chat", "eval_recall_chat", "eval_hit_chat"} <= set(rec["eval"])
    # the last checkpoint is the exported pair (select=last), AR included (the live co-trained AR)
    for role, f in (("av", "model.safetensors"), ("ar", "value_head.safetensors")):
        assert (ck / "rl_step_000003" / role / f).read_bytes() == (final / role / f).read_bytes()
    ev = json.loads((out / "eval.json").read_text())
    assert ev["selection"]["selected"] == "rl_step_000003" and len(ev["selection"]["candidates"]) == 2
    assert "keyword_recall" in ev["rl"]["chat_last"]
    assert "Exported checkpoint" in (out / "summary.md").read_text()
    assert json.loads((final / "checkpoint.json").read_text())["checkpoint"] == "rl_step_000003"
    # the sweep expands the run in training order
    assert [label for label, _ in expand_checkpoints(out)] == ["init", "sft", "rl_step_000002", "rl_step_000003",
                                                                "final"]

    # Resume after an interruption at step 3 (GRPO state at step 2, checkpoint 3 half-written, no marker):
    # checkpoint 2 is not rewritten, checkpoint 3 is redone.
    st = out / "stages" / "rl"
    (st / "DONE.json").unlink()
    import shutil

    state = torch.load(st / "ckpt" / "ckpt.pt", weights_only=False)
    assert state["step"] == 3
    (ck / "rl_step_000003" / MARKER).unlink()
    mtime2 = (ck / "rl_step_000002" / "av" / "model.safetensors").stat().st_mtime_ns
    shutil.rmtree(ck / "rl_step_000003" / "av")
    train_pair(cfg, on_event=events.append)
    assert (ck / "rl_step_000002" / "av" / "model.safetensors").stat().st_mtime_ns == mtime2
    assert [r["name"] for r in read_checkpoints(out)] == ["rl_step_000002", "rl_step_000003"]
    assert validate_pair(ck / "rl_step_000003" / "av", ck / "rl_step_000003" / "ar").ok


def test_lora_checkpoints_carry_packs_and_select_best_exports_one(fixture_pairs, tmp_path):
    pytest.importorskip("peft")
    pair = fixture_pairs["llama"]
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "run"
    cfg = apply_overrides(tiny_config(out, pair, corpus, lora=True), {
        "rl.steps": 2, "rl.checkpoint_every": 1, "rl.select": "best", "rl.eval_every": 0, "eval.untrained": False,
        "pack_dtype": "fp32", "data.fractions": {"ar_sft": 0.25, "av_sft": 0.25, "rl": 0.25, "eval": 0.25}})
    final = train_pair(cfg)
    ck = out / "checkpoints"
    for n in ("rl_step_000001", "rl_step_000002"):
        assert (ck / n / "adapter_pack" / "pack.yaml").is_file() and not (ck / n / ".adapters").exists()
    ev = json.loads((out / "eval.json").read_text())
    sel = ev["selection"]
    assert sel["select"] == "best" and sel["selected"] in ("rl_step_000001", "rl_step_000002")
    from nlalab.train.checkpoints import select_checkpoint

    assert select_checkpoint(read_checkpoints(out), "best")[0]["name"] == sel["selected"]
    src = ck / sel["selected"]
    assert (src / "av" / "model.safetensors").read_bytes() == (final / "av" / "model.safetensors").read_bytes()
    assert ((src / "adapter_pack" / "av_adapter_0" / "adapter_model.safetensors").read_bytes()
            == (out / "adapter_pack" / "av_adapter_0" / "adapter_model.safetensors").read_bytes())
    assert validate_pair(final / "av", final / "ar").ok


def test_cli_flag_sets_the_interval():
    from nlalab.train import build_config

    tc = build_config(flags={"out": "x", "rl.checkpoint_every": 5, "rl.select": "best"})
    assert tc.rl.checkpoint_every == 5 and tc.rl.select == "best"
    assert build_config(flags={"out": "x"}, sets=["rl.checkpoint_every=7"]).rl.checkpoint_every == 7
