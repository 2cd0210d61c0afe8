"""The schema documents every key a real run writes, and docs/run-directory.md is the generated text."""

from __future__ import annotations

import importlib.util
import json
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from nlalab.rundir import schema as S
from nlalab.rundir.load import load_run, migrate
from nlalab.rundir.reference import (actual_paths, extra_type, field_reference, key_paths, path_documented,
                                     type_text)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    """A real run of the tiny fixture pair with every built-in control, plus an added keyword scorer."""
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    try:
        from runhelpers import cfg_for
    finally:
        sys.path.pop(0)
    from nlalab.scorers.rescore import score_run
    from nlalab.study.pipeline import run_study
    from nlalab.testing import build_fixture_pair

    root = tmp_path_factory.mktemp("rundir_schema")
    pair = build_fixture_pair(root / "pair", "qwen2")
    run_study(cfg_for(pair, root / "run", directions=["valence_v1"]))  # every built-in control runs
    score_run(root / "run", "keyword")
    return root / "run"


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _undocumented(obj, model) -> list[str]:
    doc = key_paths(model)
    return sorted(".".join(p) for p in actual_paths(obj) if not path_documented(p, doc))


def test_every_key_of_a_real_run_is_documented(fixture_run):
    res = json.loads((fixture_run / "results.json").read_text(encoding="utf-8"))
    res = migrate(res)  # a schema-0 writer; a no-op once the writer writes schema 1
    assert set(res["controls"]) == set(S.CONTROL_SECTIONS)  # every built-in control ran
    assert "keyword" in res["scorers"]
    assert _undocumented(res, S.Results) == []
    assert _undocumented(json.loads((fixture_run / "config.json").read_text(encoding="utf-8")), S.ConfigRecord) == []
    for row in _jsonl(fixture_run / "samples.jsonl"):
        assert _undocumented(row, S.SampleRow) == []
    files = sorted((fixture_run / "controls").glob("*.jsonl"))
    assert {"random_gaussian.jsonl", "directions.jsonl"} <= {p.name for p in files}
    for p in files:
        for row in _jsonl(p):
            assert _undocumented(row, S.ControlRow) == [], p.name
    # scorer metrics are data keys of ScoreRow; its fixed keys must be the file's
    rows = _jsonl(fixture_run / "scores" / "keyword.jsonl")
    assert set(rows[0]) - set(S.ScoreRow.model_fields) == {"recall"}


def test_real_run_loads_typed_and_lossless(fixture_run):
    run = load_run(fixture_run)
    raw = migrate(json.loads((fixture_run / "results.json").read_text(encoding="utf-8")))
    assert run.results.model_dump(mode="json", exclude_unset=True) == raw
    for name, sec in run.results.controls.items():
        assert type(sec) is S.CONTROL_SECTIONS[name], name
    r = run.results
    assert r.per_category["OVERALL"].n == r.n_samples == len(run.samples)
    assert r.scorers["keyword"].per_category["OVERALL"].recall.mean == pytest.approx(
        r.per_category["OVERALL"].recall.mean)
    assert run.config.pair.layer == run.layer == 2
    c = r.controls
    assert c["blind"].rung == c["baselines"].rungs.blind_explanation  # one rung, reported in both places
    assert c["blind"].n == c["blind"].rung.cos.n == r.n_samples  # one blind text per corpus sample
    assert c["prefix"].curve["1"].n == r.n_items  # first sample of each item, every one has >= 1 sentence


def test_undocumented_key_is_reported():
    """The coverage check can fail: a key nobody documented is found, at any depth."""
    res = {"schema_version": 1, "per_category": {"chat": {"n": 1, "cos": {"mean": 0.1, "new_stat": 2}}},
           "controls": {"baselines": {"rungs": {"real_pair": {"cos": {"mean": 1}}, "new_rung": {}}},
                        "my_control": {"x": 1}},
           "new_top": 1}
    assert _undocumented(res, S.Results) == ["controls.baselines.rungs.new_rung", "controls.my_control",
                                             "controls.my_control.x", "new_top", "per_category.chat.cos.new_stat"]


def test_key_paths_known_answers():
    assert key_paths(S.Estimate) == {"mean", "lo", "hi", "n", "p", "n_clusters"}
    assert {"curve", "curve.*", "curve.*.cos", "curve.*.fve_nrm", "curve.*.n", "curve.*.n_carried_full", "verdict",
            "full_minus_first.*.mean", "full_minus_first.*.p"} <= key_paths(S.PrefixSection)
    assert key_paths(S.StabilityEntry) == {"within", "cross", "ratio", "n_items", "ddof"}
    assert key_paths(S.BlindCategory) == {"n", "*"}
    kp = key_paths(S.Results)
    for p in ("per_category.*.n", "per_category.*.*.lo", "stability.*.*.ratio",
              "confabulation.per_category.*.[].item_id", "controls.recall_permutation.overall.floor_within.mean",
              "controls.baselines.rungs.mean_direction.*.gap_real_minus_this", "controls.seeds.spread.*.values.[]",
              "controls.random_gaussian.format_templates.*.*.top.[].phrase", "provenance.config.*.**",
              "scorers.*.permutation.metrics.*.per_category.*.p_within", "warnings.[]"):
        assert p in kp, p
    assert "controls.*" not in kp  # control names are documented one by one
    assert path_documented(("provenance", "config", "max_memory", "0"), kp)
    assert not path_documented(("provenance", "config"), {"provenance.config.*.**"})


def test_type_text():
    assert type_text(typing.Optional[float]) == "number or null"
    assert type_text(dict[str, typing.Optional[S.Estimate]]) == "{key: [Estimate](#estimate) or null}"
    assert type_text(list[int]) == "[integer]"
    assert type_text(dict[str, typing.Any]) == "{key: any}"


def _all_models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    todo = list(S.FILE_MODELS.values()) + list(S.CONTROL_SECTIONS.values())
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.append(m)
        anns = [f.annotation for f in m.model_fields.values()] + [extra_type(m)]
        while anns:
            a = anns.pop()
            if isinstance(a, type) and issubclass(a, BaseModel):
                todo.append(a)
            anns += list(typing.get_args(a))
    return seen


def test_every_field_is_described():
    models = _all_models()
    assert S.FloorBlock in models and S.Phrase in models and S.NullDistribution in models
    missing = [f"{m.__name__}.{k}" for m in models for k, f in m.model_fields.items() if not f.description]
    assert missing == []
    assert [m.__name__ for m in models if not (m.__doc__ or "").strip()] == []


def test_models_keep_unknown_keys():
    r = S.Results.model_validate({"future_key": {"a": 1}, "per_category": {"chat": {"n": 1, "x": {"mean": 2}}}})
    assert r.future_key == {"a": 1} and r.per_category["chat"].x.mean == 2.0


def test_a_control_plugin_can_replace_or_add_a_section(monkeypatch):
    class MyPrefix(BaseModel):
        """A replacement prefix section."""

        points: list[float] = []

    class NewControl(BaseModel):
        """A third-party control."""

        score: float = 0.0

    monkeypatch.setitem(S.CONTROL_SECTIONS, "prefix", MyPrefix)
    r = S.Results.model_validate({"schema_version": 1, "controls": {"prefix": {"points": [1, 2]}}})
    assert isinstance(r.controls["prefix"], MyPrefix) and r.controls["prefix"].points == [1.0, 2.0]
    kp = key_paths(S.Results, extra_sections={"new_control": NewControl})
    assert {"controls.prefix.points", "controls.prefix.points.[]", "controls.new_control.score"} <= kp
    md = field_reference(extra_sections={"new_control": NewControl})
    assert "### controls.new_control\n\nModel `NewControl`. A third-party control." in md


def _gen_module():
    path = ROOT / "scripts" / "gen_run_directory_doc.py"
    spec = importlib.util.spec_from_file_location("gen_run_directory_doc", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_doc_is_in_sync():
    text = _gen_module().render()
    doc = (ROOT / "docs" / "run-directory.md").read_text(encoding="utf-8")
    assert doc == text, "docs/run-directory.md is out of date. Fix: python scripts/gen_run_directory_doc.py"
    for name in S.CONTROL_SECTIONS:
        assert f"### controls.{name}\n" in text
    for fname in S.FILE_MODELS:
        assert f"## {fname}\n" in text
