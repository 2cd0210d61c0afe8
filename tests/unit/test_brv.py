"""Training-set B_rv in the registry, and resolve_brv's choice between registry / own / number / file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nlalab import metrics
from nlalab.errors import UsageError
from nlalab.pairs.registry import EXTRA_PAIRS_ENV, find_pair, registered, registry, spec_from_args
from nlalab.study.brv import BrvChoice, resolve_brv, training_brv

RELEASE = {"qwen2.5-7b-L20": 0.7335, "gemma3-12b-L32": 0.0302, "gemma3-27b-L41": 0.0579, "llama3.3-70b-L53": 0.9169}


def test_registry_carries_the_four_training_constants():
    reg = registry()
    for name, value in RELEASE.items():
        assert reg[name].b_rv == value
        assert "examples/" in reg[name].b_rv_source and "nla_inference.py" in reg[name].b_rv_source


def test_ls_json_shows_the_constants():
    from nlalab.cli import app

    res = CliRunner().invoke(app, ["ls", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert {k: got[k]["b_rv"] for k in RELEASE} == RELEASE
    assert all(got[k]["b_rv_source"] for k in RELEASE)


def _acts(n=10, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + 3.0  # a shared mean direction: B_rv clearly below 1


def test_default_is_registry_and_own_is_reported_beside_it():
    acts = _acts()
    s = math.sqrt(16)
    with registered("tiny-test", av="a", ar="b", target="t", layer=2, n_layers=4, d_model=16,
                    b_rv=0.25, b_rv_source="a known value") as entry:
        c = resolve_brv(None, entry, acts, s)
    assert isinstance(c, BrvChoice)
    assert c.choice == "registry" and c.value == 0.25 and "a known value" in c.source
    assert c.own_value == pytest.approx(metrics.brv(acts, s)) and c.own_source == "this run's 10 activations"
    assert c.training_value == 0.25
    # by hand: B_rv = 1 - ||mean of unit rows||^2 at s = sqrt(d)
    u = acts.double() / acts.double().norm(dim=1, keepdim=True)
    assert c.own_value == pytest.approx(1 - float(u.mean(0).norm() ** 2), rel=1e-9)


def test_unregistered_pair_defaults_to_own():
    acts = _acts()
    c = resolve_brv(None, None, acts, 4.0)
    assert c.choice == "own" and c.value == c.own_value and c.training_value is None


def test_number_string_and_file(tmp_path):
    acts = _acts()
    assert resolve_brv(0.5, None, acts, 4.0).value == 0.5
    c = resolve_brv("0.125", "qwen2.5-7b-L20", acts, 4.0)
    assert c.value == 0.125 and c.choice == "number" and c.training_value is not None
    ref = _acts(n=6, seed=3)
    f = tmp_path / "train.npy"
    np.save(f, ref.numpy())
    c = resolve_brv(str(f), None, acts, 4.0)
    assert c.choice == "file" and c.value == pytest.approx(metrics.brv(ref, 4.0)) and "6 rows" in c.source


def test_rescaled_when_mse_scale_is_not_sqrt_d():
    entry = find_pair("qwen2.5-7b-L20")
    c = resolve_brv("registry", entry, None, 2 * math.sqrt(3584))
    assert c.value == pytest.approx(4 * 0.7335) and "rescaled" in c.source
    assert resolve_brv("registry", entry, None, math.sqrt(3584)).value == 0.7335


@pytest.mark.parametrize("choice,needle", [
    ("registry", "no training-set B_rv"),
    ("own", "needs at least 2"),
    (-1.0, "positive"),
    ("0", "positive"),
    ("nope.npy", "neither registry, own"),
])
def test_one_line_usage_errors(choice, needle):
    with pytest.raises(UsageError) as e:
        resolve_brv(choice, None, _acts(n=1), 4.0)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_file_of_other_width_is_refused(tmp_path):
    f = tmp_path / "v.npy"
    np.save(f, np.ones((4, 8), dtype=np.float32))
    with pytest.raises(UsageError, match="width 8"):
        resolve_brv(str(f), None, _acts(), 4.0)


def test_registered_fixture_pair_resolves_to_its_constant(fixture_pairs, tmp_path, monkeypatch):
    """A fixture pair registered through $NLALAB_EXTRA_PAIRS behaves like a released one: its name resolves
    to its dirs and the run's B_rv defaults to its training constant, with the run's own beside it."""
    from nlalab.capture import capture
    from nlalab.pairs.load import load_ar, load_target
    from nlalab.pairs.resolve import resolve_pair

    p = fixture_pairs["qwen2"]
    extra = tmp_path / "extra.yaml"
    extra.write_text(json.dumps({"pairs": {"tiny-qwen2": {
        "av": str(p.av), "ar": str(p.ar), "target": str(p.target), "layer": p.layer, "n_layers": 4, "d_model": 64,
        "b_rv": 0.4, "b_rv_source": "fixture constant"}}}))
    monkeypatch.setenv(EXTRA_PAIRS_ENV, str(extra))
    spec = spec_from_args(pair="tiny-qwen2")
    dirs = resolve_pair(spec)
    ar = load_ar(dirs.ar, layer=dirs.layer)
    tg = load_target(dirs.target, dirs.layer)
    acts = capture(tg.model, tg.tokenizer, ["one", "two words", "three more words"], dirs.layer).vectors
    c = resolve_brv(None, find_pair(spec.name), acts, ar.mse_scale)
    assert ar.mse_scale == pytest.approx(8.0)  # sqrt(64): no rescaling
    assert (c.choice, c.value) == ("registry", 0.4) and "fixture constant" in c.source
    assert c.own_value == pytest.approx(metrics.brv(acts, 8.0))
    assert training_brv("tiny-qwen2").value == 0.4
    monkeypatch.delenv(EXTRA_PAIRS_ENV)
    assert find_pair("tiny-qwen2") is None


def test_shipped_pair_has_its_recorded_training_brv():
    t = training_brv("smollm2-135m-L20 (nlalab-trained)")
    assert t is not None and 0 < t.value < 1 and "eval.json" in t.source
    assert training_brv("smollm2-135m-L20-untrained") is None
