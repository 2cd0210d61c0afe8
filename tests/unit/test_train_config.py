"""TrainConfig: the CLI's config file + flags + --set overrides, and the saved record."""

import pytest
import yaml

from nlalab.errors import NLALabError
from nlalab.train import TrainConfig, apply_overrides, build_config


def test_file_then_flags_then_sets(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"out": "from-file", "layer": 3, "rl": {"steps": 5, "group_size": 2}}))
    c = build_config(f, {"out": "runs/x", "lora.enabled": True, "rl.steps": None}, ["rl.group_size=8", "seed=7"])
    assert c.out == "runs/x" and c.layer == 3 and c.lora.enabled and c.rl.steps == 5 and c.rl.group_size == 8
    assert c.seed == 7 and c.rl.kl_coef == 0.01 and c.rl.eps_clip == 0.2 and c.rl.failure_reward == -2.0
    assert TrainConfig.model_validate(c.model_dump()) == c  # the saved record round-trips
    assert "out" not in c.identity() and "device" not in c.identity()


def test_bad_overrides_are_one_line_errors():
    with pytest.raises(NLALabError, match="KEY=VALUE"):
        build_config(None, {"out": "x"}, ["rl.steps"])
    with pytest.raises(NLALabError, match="group_size"):
        build_config(None, {"out": "x"}, ["rl.group_size=many"])
    assert apply_overrides({"a": {"b": 1}}, {"a.c": "2"}) == {"a": {"b": 1, "c": 2}}


def test_presets_layer_under_file_and_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"rl": {"steps": 3}}))
    c = build_config(f, {"out": "o"}, ["av_sft.optim.lr=1e-4"], preset="smollm2-lora")
    assert c.layer == 20 and c.lora.enabled and c.lora.r == 16 and c.rl.steps == 3 and c.rl.group_size == 8
    assert c.av_sft.optim.lr == 1e-4 and c.ar_sft.optim.lr == 2e-4
    with pytest.raises(NLALabError, match="preset"):
        build_config(None, {"out": "o"}, preset="nope")


def test_cli_chat_fraction_sets_every_stage_and_is_saved(fixture_pairs, tmp_path):
    import json

    from typer.testing import CliRunner

    from nlalab.cli import app

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "d0", "category": "docs", "format": "text", "text": "some text " * 40}) + "\n"
                      + json.dumps({"id": "p0", "category": "chat", "format": "prompt", "text": "Hi?"}) + "\n")
    out = tmp_path / "t"
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--base", str(fixture_pairs["qwen2"].target),
                                   "--corpus", str(corpus), "--chat-fraction", "0.4", "--set", "rl.chat_fraction=0.6",
                                   "--device", "cpu", "--stop-after", "corpus"])
    assert res.exit_code == 0, res.output
    saved = TrainConfig.model_validate(json.loads((out / "config.json").read_text()))
    assert (saved.ar_sft.chat_fraction, saved.av_sft.chat_fraction, saved.rl.chat_fraction) == (0.4, 0.4, 0.6)
    bad = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "u"), "--chat-fraction", "1.5",
                                   "--stop-after", "corpus"])
    assert bad.exit_code != 0 and "chat_fraction" in bad.output
