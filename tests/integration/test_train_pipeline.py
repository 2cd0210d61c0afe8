"""train_pair end to end on a fixture (data -> AR SFT -> AV SFT -> RL -> export), export round trips, packs."""

import json
import random

import pytest
import torch

from nlalab.pairs.load import LoadOptions, load_ar, load_av
from nlalab.pairs.validate import validate_pair
from nlalab.reconstruct import reconstruct
from nlalab.testing import torch_threads
from nlalab.train import TrainConfig, apply_overrides, train_pair
from nlalab.train.export import export_ar, export_av, materialize_adapter_pack
from nlalab.train.models import load_trainable_ar, load_trainable_av
from nlalab.verbalize import GenerationSettings, verbalize

CPU = torch.device("cpu")
WORDS = ("the quick brown fox jumps over the lazy dog while a small cat sleeps near the warm fire and the river "
         "flows past an old mill").split()


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def write_corpus(path):
    rows = []
    for i in range(40):
        r = random.Random(i)
        rows.append({"id": f"d{i}", "category": ("code", "docs", "chat", "agent", "reasoning")[i % 5],
                     "format": "text", "text": " ".join(r.choice(WORDS) for _ in range(60 + i % 20)), "source": "t"})
    rows += [{"id": f"p{i}", "category": "chat", "format": "prompt", "text": f"What is {i} plus {i + 1}?",
              "source": "t"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_config(out, pair, corpus, lora=False):
    return {"out": str(out), "base": str(pair.target), "layer": pair.layer, "device": "cpu",
            "corpus": {"source": str(corpus)}, "data": {"positions_per_doc": 3, "max_length": 96},
            "lora": {"enabled": lora, "r": 4, "alpha": 8},
            "ar_sft": {"steps": 4, "batch_size": 8, "eval_every": 2, "eval_size": 8, "optim": {"lr": 1e-3},
                       "chat_fraction": 0.5},
            "av_sft": {"steps": 4, "batch_size": 8, "eval_every": 2, "eval_size": 8, "optim": {"lr": 1e-3},
                       "chat_fraction": 0.5},
            "rl": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_response_tokens": 12, "eval_every": 1,
                   "samples_every": 1, "chat_fraction": 0.5},
            "eval": {"size": 4, "max_new_tokens": 12, "rl_size": 2}}


def test_train_pair_end_to_end(fixture_pairs, tmp_path):
    pair = fixture_pairs["qwen2"]
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    cfg = tiny_config(tmp_path / "run", pair, corpus)
    events = []
    out = tmp_path / "run"
    assert train_pair({**cfg, "stop_after": "av_sft"}, on_event=events.append) == out  # a first call stops early
    assert (out / "stages" / "av_sft" / "DONE.json").is_file() and not (out / "stages" / "rl").exists()
    final = train_pair(cfg, on_event=events.append)  # the next one resumes
    assert events.count("ar_sft: training") == 1 and events.count("av_sft: training") == 1 and "rl: GRPO" in events
    for p in (final, out / "stages" / "av_sft" / "av", out / "init" / "av"):
        ar = {final: final / "ar", out / "stages" / "av_sft" / "av": out / "stages" / "ar_sft" / "ar",
              out / "init" / "av": out / "init" / "ar"}[p]
        rep = validate_pair(p if p.name == "av" else p / "av", ar)
        assert rep.ok, rep.lines()
    saved = TrainConfig.model_validate(json.loads((out / "config.json").read_text()))
    assert saved.rl.steps == 2 and saved.layer == pair.layer
    res = json.loads((out / "eval.json").read_text())
    assert {"untrained", "sft", "rl", "ar_text_ceiling", "b_rv", "timings_s"} <= set(res)
    assert "fve_nrm" in res["rl"]["raw"] and "mean_direction_fve_nrm" in res["rl"]["raw"]
    curves = json.loads((out / "curves.json").read_text())
    assert set(curves) == {"ar_sft", "av_sft", "rl"} and all(curves.values())
    rl_row = [r for r in curves["rl"] if r["step"] == 2][0]
    assert {"reward", "fve_nrm", "response_len", "kl_ref", "eval_fve_nrm"} <= set(rl_row)
    assert (out / "curves.png").stat().st_size > 1000 and (out / "summary.md").is_file()
    import yaml

    sc = yaml.safe_load((final / "av" / "nla_meta.yaml").read_text())
    assert sc["stage"] == "rl" and sc["role"] == "av" and sc["training"]["kl_coef"] == 0.01
    # a rerun resumes: nothing is trained again
    mtime = (final / "av" / "model.safetensors").stat().st_mtime
    train_pair(cfg)
    assert (final / "av" / "model.safetensors").stat().st_mtime == mtime
    with pytest.raises(Exception, match="other settings"):
        train_pair(apply_overrides(cfg, {"rl.steps": 3}))


def test_export_round_trip_matches_the_training_models(fixture_pair, tmp_path):
    """Exported pairs validate for every architecture and reproduce the in-memory models exactly."""
    tav = load_trainable_av(fixture_pair.av, CPU)
    tar = load_trainable_ar(fixture_pair.ar, CPU)
    with torch.no_grad():  # make the weights differ from the base, as after training
        for p in list(tav.model.parameters())[:3] + list(tar.model.parameters())[:3]:
            p.add_(0.01 * torch.randn_like(p))
        tar.head.weight.add_(0.01 * torch.randn_like(tar.head.weight))
    export_av(tav.av, tmp_path / "av", stage="rl", trained_on=["test"])
    export_ar(tar.ar, tmp_path / "ar", stage="sl", trained_on=["test"])
    rep = validate_pair(tmp_path / "av", tmp_path / "ar")
    assert rep.ok, rep.lines()
    av2, ar2 = load_av(tmp_path / "av", LoadOptions(device="cpu")), load_ar(tmp_path / "ar", LoadOptions(device="cpu"))
    texts = ["A cat sat.", "Code about foxes."]
    tar.model.eval()
    torch.testing.assert_close(reconstruct(ar2, texts), reconstruct(tar.ar, texts), atol=1e-5, rtol=1e-5)
    v = torch.randn(2, av2.d_model)
    gs = GenerationSettings(greedy=True, max_new_tokens=6, engine="loop")
    tav.model.eval()
    assert [r.token_ids for r in verbalize(av2, v, 1, gs)] == [r.token_ids for r in verbalize(tav.av, v, 1, gs)]


def lora_run(fixture_pairs, tmp_path):
    """A tiny LoRA run with one RL step: (pair fixture, corpus, final pair dir, adapter pack dir)."""
    pytest.importorskip("peft")
    pair = fixture_pairs["llama"]
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    cfg = apply_overrides(tiny_config(tmp_path / "run", pair, corpus, lora=True),
                          {"rl.steps": 1, "eval.untrained": False, "pack_dtype": "fp32"})
    return pair, corpus, train_pair(cfg), tmp_path / "run" / "adapter_pack"


def assert_same_pair(dir_a, dir_b, tol: float) -> None:
    """Same reconstruction (within tol) and the same greedy tokens from the two release-layout pairs."""
    ar_a, ar_b = load_ar(dir_a / "ar", LoadOptions(device="cpu")), load_ar(dir_b / "ar", LoadOptions(device="cpu"))
    torch.testing.assert_close(reconstruct(ar_b, ["A fox."]), reconstruct(ar_a, ["A fox."]), atol=tol, rtol=tol)
    av_a, av_b = load_av(dir_a / "av", LoadOptions(device="cpu")), load_av(dir_b / "av", LoadOptions(device="cpu"))
    v = torch.randn(2, av_a.d_model)
    gs = GenerationSettings(greedy=True, max_new_tokens=6, engine="loop")
    assert [r.token_ids for r in verbalize(av_a, v, 1, gs)] == [r.token_ids for r in verbalize(av_b, v, 1, gs)]


def test_lora_run_writes_an_adapter_pack_that_rebuilds_the_pair(fixture_pairs, tmp_path):
    pair, corpus, final, pack = lora_run(fixture_pairs, tmp_path)
    assert (pack / "pack.yaml").is_file() and (pack / "av_adapter_0" / "adapter_model.safetensors").is_file()
    assert not (pack / "av_adapter_1").exists()  # SFT and RL train one adapter per role
    size = sum(f.stat().st_size for f in pack.rglob("*") if f.is_file())
    full = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
    assert size < full / 3
    av_dir, ar_dir = materialize_adapter_pack(pack, pair.target, tmp_path / "rebuilt")
    assert validate_pair(av_dir, ar_dir).ok
    assert_same_pair(final, tmp_path / "rebuilt", 1e-4)


def test_warm_start_continues_an_adapter_pack(fixture_pairs, tmp_path):
    """init_from loads a pack's adapters and value head into the SFT stages: with a zero learning rate (and no
    RL) the new run's pair is the pack's pair; a mismatched pack is refused before any model loads."""
    from nlalab.errors import NLALabError
    from nlalab.train import warm

    pair, corpus, first, pack = lora_run(fixture_pairs, tmp_path)
    sha = warm.check_pack(str(pack), pair.layer, 4, 8, None, True).sha256
    frozen = {"ar_sft.optim.lr": 0.0, "av_sft.optim.lr": 0.0, "rl.steps": 0}
    cfg2 = apply_overrides(tiny_config(tmp_path / "run2", pair, corpus, lora=True),
                           {**frozen, "eval.untrained": False, "init_from": str(pack), "init_from_sha256": sha})
    second = train_pair(cfg2)
    rec = json.loads((tmp_path / "run2" / "eval.json").read_text())["warm_start"]
    assert rec["sha256"] == sha and rec["init_from"] == str(pack)
    assert_same_pair(first, second, 1e-5)
    # ... and a cold run with the same zero learning rate is a different (untrained) pair
    cold = train_pair(apply_overrides(tiny_config(tmp_path / "run3", pair, corpus, lora=True),
                                      {**frozen, "eval.untrained": False}))
    ar_a, ar_c = load_ar(first / "ar", LoadOptions(device="cpu")), load_ar(cold / "ar", LoadOptions(device="cpu"))
    assert not torch.allclose(reconstruct(ar_c, ["A fox."]), reconstruct(ar_a, ["A fox."]), atol=1e-3)

    bad = {"lora.r": 8, "layer": pair.layer + 1, "init_from_sha256": "ab" * 32, "lora.enabled": False}
    for key, val in bad.items():
        c = apply_overrides(cfg2, {key: val, "out": str(tmp_path / f"bad_{key}"), "corpus.source": "/nonexistent"})
        with pytest.raises(NLALabError, match="init_from"):
            train_pair(c)  # refused from the pack's files: the corpus (which does not exist) is never read
    with pytest.raises(NLALabError, match="neither a folder nor a shipped pair"):
        train_pair(apply_overrides(cfg2, {"init_from": "no-such-pack", "out": str(tmp_path / "bad_name")}))
