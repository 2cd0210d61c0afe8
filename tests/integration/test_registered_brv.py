"""A run of a registered pair divides by the pair's training-set B_rv by default and reports its own beside it;
--brv own / a number choose otherwise, and every choice is named with its source (issue 16)."""

from __future__ import annotations

import json

import pytest
from runhelpers import FAST

from nlalab.pairs.registry import registered
from nlalab.study.config import RunConfig
from nlalab.study.pipeline import run_study


def test_registered_pair_uses_its_training_brv_by_default(fixture_pairs, tmp_path):
    p = fixture_pairs["qwen2"]
    fields = dict(av=str(p.av), ar=str(p.ar), target=str(p.target), layer=p.layer, n_layers=4, d_model=64,
                  b_rv=0.4321, b_rv_source="fixture release, worked examples")
    kw = {**FAST, "controls": [], "limit_per_category": 2}
    with registered("fixture-qwen2-L2", **fields):
        res = run_study(RunConfig(pair="fixture-qwen2-L2", out=str(tmp_path / "reg"), **kw))
        own = run_study(RunConfig(pair="fixture-qwen2-L2", out=str(tmp_path / "own"), brv="own", **kw))
        num = run_study(RunConfig(pair="fixture-qwen2-L2", out=str(tmp_path / "num"), brv="0.5", **kw))
    assert res["b_rv"] == pytest.approx(0.4321) and "fixture release" in res["b_rv_source"]
    assert res["brv"]["choice"] == "registry" and res["brv"]["own_value"] == pytest.approx(own["b_rv"])
    assert own["brv"]["choice"] == "own" and own["brv"]["training_value"] == pytest.approx(0.4321)
    assert num["b_rv"] == 0.5 and num["brv"]["choice"] == "number"
    # the same rows: only the denominator differs, fve_nrm = 1 - mse_nrm / B_rv for each choice
    rows = [json.loads(x) for x in (tmp_path / "reg" / "samples.jsonl").read_text().splitlines()]
    assert rows[0]["fve_nrm"] == pytest.approx(1 - rows[0]["mse_nrm"] / 0.4321, rel=1e-9)
    md = (tmp_path / "reg" / "report.md").read_text()
    assert "fixture release" in md and "this run's own B_rv" in md
