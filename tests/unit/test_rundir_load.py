"""nlalab.rundir.load on hand-written run directories: migration of schema 0, refusal of newer schemas,
one-line errors, and the accessors report/ relies on."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from nlalab.errors import NLALabError
from nlalab.rundir import io
from nlalab.rundir.load import Run, _unique_names, item_means, load_run, load_runs, migrate
from nlalab.rundir.schema import (SCHEMA_VERSION, BaselinesSection, RecallPermutationSection, Results, SampleRow,
                                  SeedsSection)

EST = {"mean": 0.25, "lo": 0.1, "hi": 0.4, "n": 4, "p": None, "n_clusters": 2}
FLOOR = {"real": 0.5, "n_rows": 4, "n_items": 2, "floor_within": {"mean": 0.1, "lo": 0.0, "hi": 0.2, "n": 10},
         "floor_cross": {"mean": 0.05, "lo": 0.0, "hi": 0.1, "n": 10}, "gap_within": 0.4, "gap_cross": 0.45,
         "p_within": 0.09, "p_cross": 0.09}


def results_v0() -> dict:
    """A schema-0 results.json: control sections top-level, keyword permutation under ``permutation``."""
    return copy.deepcopy({
        "b_rv": 0.8, "b_rv_source": "this run's 2 activations", "n_samples": 4, "n_items": 2, "k": 2,
        "categories": ["chat", "code"],
        "settings": {"seed": 7, "n_perm": 10, "n_boot": 20},
        "per_category": {"chat": {"n": 2, "n_items": 1, "cos": EST}, "OVERALL": {"n": 4, "n_items": 2, "cos": EST}},
        "permutation": {"unit": "item", "n_perm": 10, "n_items": 2, "overall": FLOOR, "per_category": {"chat": None}},
        "random_gaussian": None,
        "baselines": {"real_pair": {"cos": EST, "fve_nrm": EST},
                      "mean_direction": {"cos": {**EST, "gap_real_minus_this": 0.1}, "fve_nrm": EST, "note": "n"},
                      "blind_explanation": {"cos": {**EST, "n": 6, "gap_real_minus_this": -0.2}, "fve_nrm": EST},
                      "untrained_pair": {"note": "run with --untrained-baseline"}},
        "prefix": {"1": {"cos": 0.1, "fve_nrm": -1.0, "n": 2}, "full": {"cos": 0.2, "fve_nrm": -0.9, "n": 2}},
        "grounding": {"true": {"fve_nrm": EST}, "true_minus_false": {"fve_nrm": EST}},
        "seeds": {"seeds": [7, 1007], "spread": {"cos": {"mean": 0.1, "std": 0.01, "min": 0.09, "max": 0.11,
                                                          "n_seeds": 2, "values": [0.09, 0.11]}}},
        "warnings": ["w1"],
        "mse_scale": 8.0,
    })


def config_record(pair_name=None) -> dict:
    return {"identity": {"seed": 7}, "config": {"seed": 7, "av": "cfg/av", "temperature": 1.0, "max_new_tokens": 12,
                                                "positions": "last"},
            "pair": {"name": pair_name, "av": {"ref": "dirs/av", "revision": None, "path": "/abs/av"}, "layer": 3},
            "corpus": {"ref": "seed50_v1", "n_items": 2, "categories": ["chat", "code"], "sha256": "abc"},
            "started_at": "2026-12-01T00:00:00+0000"}


SAMPLES = [
    {"item_id": "chat-01", "category": "chat", "prompt": "p1", "vector_index": 0, "sample": 0, "explanation": "e",
     "cos": 0.1, "fve_nrm": -1.0, "recall": 0.5, "hit": True},
    {"item_id": "chat-01", "category": "chat", "prompt": "p1", "vector_index": 0, "sample": 1, "explanation": "f",
     "cos": 0.3, "fve_nrm": -0.5, "recall": None, "hit": False, "my_scorer_col": 3.5},
    {"item_id": "code-01", "category": "code", "prompt": "p2", "vector_index": 1, "sample": 0, "explanation": "g",
     "cos": 0.5, "fve_nrm": 0.5, "recall": 0.0, "hit": False},
]


def write_run(d: Path, results: dict | None = None, config: dict | None = None, samples=SAMPLES) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    io.atomic_write_json(d / "results.json", results if results is not None else results_v0())
    if config is not False:
        io.atomic_write_json(d / "config.json", config if config is not None else config_record())
    io.write_jsonl(d / "samples.jsonl", samples)
    return d


# ----------------------------------------------------------------------------- migrate


def test_migrate_schema0_moves_controls():
    old = results_v0()
    before = copy.deepcopy(old)
    new = migrate(old)
    assert old == before  # the argument is not changed
    assert new["schema_version"] == 1
    moved = ("permutation", "random_gaussian", "baselines", "seeds", "prefix", "grounding")
    assert set(new["controls"]) == {"recall_permutation", "random_gaussian", "baselines", "seeds", "prefix",
                                    "grounding", "blind"}
    c = new["controls"]
    assert c["recall_permutation"] == before["permutation"]
    assert c["random_gaussian"] is None and c["seeds"] == before["seeds"]
    # schema 1's wrapper keys
    assert c["baselines"] == {"rungs": {k: v for k, v in before["baselines"].items() if k != "untrained_pair"}}
    assert c["prefix"] == {"curve": before["prefix"]}
    assert c["grounding"] == {"deltas": before["grounding"]}
    # the blind rung, which schema 0 kept only in the ladder, becomes the blind section
    assert c["blind"] == {"n": 6, "rung": before["baselines"]["blind_explanation"]}
    for k in moved:
        assert k not in new
    assert {k: v for k, v in new.items() if k not in ("controls", "schema_version")} == {
        k: v for k, v in before.items() if k not in moved}


def test_migrate_prefers_a_section_already_under_controls():
    old = results_v0()
    old["controls"] = {"seeds": {"seeds": [1]}}
    assert migrate(old)["controls"]["seeds"] == {"seeds": [1]}


def test_migrate_leaves_current_schema_alone():
    cur = {"schema_version": SCHEMA_VERSION, "controls": {"prefix": {"1": {"cos": 0.1, "fve_nrm": 0.2, "n": 3}}},
           "permutation": "a key of a future scorer, not a control"}
    assert migrate(cur) == cur


def test_migrate_refuses_newer_schema():
    with pytest.raises(NLALabError) as e:
        migrate({"schema_version": SCHEMA_VERSION + 1})
    assert "upgrade nlalab" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- load_run


def test_load_schema0_run_typed(tmp_path):
    run = load_run(write_run(tmp_path / "r0"))
    assert run.schema_version == 0 and run.results.schema_version == 1
    rp = run.results.controls["recall_permutation"]
    assert isinstance(rp, RecallPermutationSection)
    assert rp.overall.floor_within.mean == 0.1 and rp.overall.gap_cross == 0.45 and rp.per_category == {"chat": None}
    bl = run.results.control("baselines")
    assert isinstance(bl, BaselinesSection)
    assert bl.rungs.mean_direction.cos.gap_real_minus_this == 0.1 and bl.rungs.mean_direction.note == "n"
    assert bl.rungs.empty_explanation is None
    assert run.results.controls["blind"].rung.cos.gap_real_minus_this == -0.2
    assert run.results.controls["prefix"].curve["full"].fve_nrm == -0.9
    assert run.results.controls["grounding"].deltas.true_minus_false["fve_nrm"].mean == 0.25
    assert isinstance(run.results.controls["seeds"], SeedsSection)
    assert run.results.controls["seeds"].spread["cos"].values == [0.09, 0.11]
    assert run.results.control("random_gaussian") is None
    assert run.section("random_gaussian") is None and run.section("absent") is None
    assert run.section("recall_permutation") == results_v0()["permutation"]  # the plain-dict view
    assert run.results.per_category["OVERALL"].cos.mean == 0.25
    assert run.results.per_category["chat"].n == 2
    assert [type(s) for s in run.samples] == [SampleRow] * 3
    assert run.samples[1].my_scorer_col == 3.5  # scorer columns survive


def test_results_dump_reproduces_the_migrated_file(tmp_path):
    raw = results_v0()
    run = load_run(write_run(tmp_path / "r", results=raw))
    assert run.results_dict() == migrate(raw)
    assert run.config_dict() == config_record()


def test_schema1_run_loads(tmp_path):
    run = load_run(write_run(tmp_path / "r1", results=migrate(results_v0()),
                             config={**config_record(), "schema_version": 1}))
    assert run.schema_version == 1 and run.config.schema_version == 1
    assert run.results.controls["recall_permutation"].overall.real == 0.5


def test_schema1_sections_as_the_writer_writes_them(tmp_path):
    res = migrate(results_v0())
    res["capture"] = {"layer": 3, "hook": "blocks.3.hook_resid_post", "positions": "last"}
    res["controls"]["blind"] = {"n": 4, "rung": {"fve_nrm": {**EST, "gap_real_minus_this": 0.05}},
                                "per_category": {"chat": {"cos": 0.1, "fve_nrm": -1.5, "recall": None, "n": 2}},
                                "verdict": "v", "generator": "g"}
    res["controls"]["recall_permutation"]["warnings"] = ["few items"]
    cfg = {**config_record(), "schema_version": 1, "controls": ["blind", "baselines"]}
    d = write_run(tmp_path / "r", results=res, config=cfg)
    io.write_jsonl(d / "controls" / "blind.jsonl", [{"vector_index": 0, "sample": 0, "item_id": "chat-01",
                                                     "category": "chat", "recall": 0.0, "hit": False}])
    run = load_run(d)
    b = run.results.controls["blind"]
    assert b.rung.fve_nrm.gap_real_minus_this == 0.05 and b.per_category["chat"].fve_nrm == -1.5
    assert b.per_category["chat"].n == 2 and b.per_category["chat"].recall is None and b.verdict == "v"
    assert run.results.controls["recall_permutation"].warnings == ["few items"]
    assert run.results.capture.hook == "blocks.3.hook_resid_post"
    assert run.config.controls == ["blind", "baselines"]
    assert run.control_rows("blind")[0]["item_id"] == "chat-01"
    assert run.results_dict() == res


@pytest.mark.parametrize("which", ["results.json", "config.json"])
def test_newer_schema_refused(tmp_path, which):
    d = write_run(tmp_path / "new")
    p = d / which
    p.write_text(json.dumps({**json.loads(p.read_text()), "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(NLALabError) as e:
        load_run(d)
    msg = str(e.value)
    assert msg.startswith(f"{p}: written with run-directory schema {SCHEMA_VERSION + 1}")
    assert "Fix: upgrade nlalab" in msg and "\n" not in msg


def test_missing_files(tmp_path):
    with pytest.raises(NLALabError, match="not a directory. Fix:"):
        load_run(tmp_path / "absent")
    d = write_run(tmp_path / "r")
    (d / "samples.jsonl").unlink()
    with pytest.raises(NLALabError, match=r"samples\.jsonl: not found\. Fix: complete the run"):
        load_run(d)
    (d / "results.json").unlink()
    with pytest.raises(NLALabError, match=r"results\.json: not found; the run is not finished\. Fix:"):
        load_run(d)


def test_missing_config_is_tolerated(tmp_path):
    run = load_run(write_run(tmp_path / "r", config=False))
    assert run.pair_label == "?" and run.layer is None and run.seed == 7  # seed from results' settings
    assert run.categories == ["chat", "code"]


def test_malformed_files_are_one_line(tmp_path):
    d = write_run(tmp_path / "r")
    (d / "results.json").write_text('{"b_rv": 0.8,\n', encoding="utf-8")
    with pytest.raises(NLALabError) as e:
        load_run(d)
    assert str(e.value).startswith(f"{d / 'results.json'}: malformed JSON at line") and "\n" not in str(e.value)
    (d / "results.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(NLALabError, match="expected a JSON object, found list"):
        load_run(d)


def test_wrong_type_names_the_key(tmp_path):
    bad = results_v0()
    bad["per_category"]["chat"]["cos"]["mean"] = "high"
    d = write_run(tmp_path / "r", results=bad)
    with pytest.raises(NLALabError) as e:
        load_run(d)
    msg = str(e.value)
    assert msg.startswith(f"{d / 'results.json'}: per_category.chat.cos.mean: ") and "'high'" in msg
    assert "Fix:" in msg and "\n" not in msg


def test_wrong_type_in_a_control_section_names_the_full_path(tmp_path):
    bad = migrate(results_v0())
    bad["controls"]["recall_permutation"]["overall"]["p_cross"] = "small"
    with pytest.raises(NLALabError, match=r"results\.json: controls\.recall_permutation\.overall\.p_cross: Input "
                                          r"should be a valid number.*'small'"):
        load_run(write_run(tmp_path / "r", results=bad))


def test_bad_sample_row_names_the_line(tmp_path):
    rows = [dict(SAMPLES[0]), {**SAMPLES[1], "sample": "second"}]
    d = write_run(tmp_path / "r", samples=rows)
    with pytest.raises(NLALabError, match=r"samples\.jsonl line 2: sample: Input should be a valid integer"):
        load_run(d)


# ----------------------------------------------------------------------------- accessors


def test_accessors(tmp_path):
    run = load_run(write_run(tmp_path / "r"), name="mine")
    assert run.name == "mine"
    assert run.pair_label == "dirs/av"  # no pair name: the AV as given
    assert run.layer == 3 and run.seed == 7 and run.corpus_sha256 == "abc"
    assert run.categories == ["chat", "code"]
    assert run.settings["n_perm"] == 10
    info = run.info()
    assert info["pair"] == "dirs/av" and info["corpus"] == "seed50_v1" and info["n_items"] == 2
    assert info["position"] == "last"  # from config (schema 0 has no capture record)
    assert info["temperature"] == 1.0 and info["max_new_tokens"] == 12 and info["n_boot"] == 20
    assert info["b_rv"] == 0.8 and info["mse_scale"] == 8.0 and info["scorers"] == [] and info["warnings"] == ["w1"]
    named = load_run(write_run(tmp_path / "n", config=config_record("qwen-l20")))
    assert named.pair_label == "qwen-l20"
    cfg = config_record()
    cfg["pair"]["av"]["ref"] = "/models/qwen-nla/av"
    assert load_run(write_run(tmp_path / "p", config=cfg)).pair_label == "qwen-nla/av"
    cfg["pair"]["av"]["ref"] = "org-av"
    assert load_run(write_run(tmp_path / "q", config=cfg)).pair_label == "org-av"
    res = results_v0()
    res["capture"] = {"layer": 3, "hook": "blocks.3.hook_resid_post", "positions": "all"}
    assert load_run(write_run(tmp_path / "c", results=res)).position == "all"  # the capture record wins


def test_corpus_falls_back_to_provenance(tmp_path):
    res = results_v0()
    res["categories"] = []
    res["provenance"] = {"corpus": {"ref": "c", "sha256": "fromprov", "categories": ["x", "y"]}}
    run = load_run(write_run(tmp_path / "r", results=res, config=False))
    assert run.corpus_sha256 == "fromprov" and run.categories == ["x", "y"]


def test_samples_df_and_dicts(tmp_path):
    run = load_run(write_run(tmp_path / "r"))
    assert run.sample_dicts() == SAMPLES  # exactly the file's keys
    df = run.samples_df()
    assert len(df) == 3 and list(df["item_id"]) == ["chat-01", "chat-01", "code-01"]
    assert df["cos"].sum() == pytest.approx(0.9)
    assert math.isnan(df["my_scorer_col"].iloc[0]) and df["my_scorer_col"].iloc[1] == 3.5


def test_control_rows_and_vectors(tmp_path):
    d = write_run(tmp_path / "r")
    rows = [{"vector_index": 0, "sample": 0, "cos": 0.1, "paired_item_id": "chat-01"}]
    io.write_jsonl(d / "controls" / "random_gaussian.jsonl", rows)
    run = load_run(d)
    assert run.control_rows("random_gaussian") == rows
    assert run.control_rows("directions") == []
    assert run.random_rows == rows and run.direction_rows is None
    with pytest.raises(NLALabError, match=r"vectors\.safetensors: not found\. Fix: rerun"):
        run.vectors()
    acts = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    io.atomic_save_tensors(d / "vectors.safetensors", {"activations": acts})
    assert torch.equal(run.vectors()["activations"], acts)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_score_warnings(tmp_path):
    d = write_run(tmp_path / "r")
    res = results_v0()
    res["scorers"] = {"keyword": {"scorer": "keyword", "samples_sha256": _sha(d / "samples.jsonl")},
                      "retrieval": {"scorer": "retrieval", "samples_sha256": "0" * 64}}
    io.atomic_write_json(d / "results.json", res)
    io.write_jsonl(d / "scores" / "keyword.jsonl", [{"item_id": "chat-01", "sample": 0, "recall": 0.5}])
    io.write_jsonl(d / "scores" / "embedding.jsonl", [{"item_id": "chat-01", "sample": 0, "sim": 0.5}])
    run = load_run(d)
    assert run.scores["keyword"] == [{"item_id": "chat-01", "sample": 0, "recall": 0.5}]
    w = run.score_warnings()
    assert len(w) == 2
    assert w[0].startswith("r: scorer 'retrieval' in results.json was computed from another samples.jsonl")
    assert w[1].startswith("r: scores/embedding.jsonl exists but results.json has no scorers.embedding section")


def test_item_means_known_answer():
    rows = [{"item_id": "a", "cos": 1.0}, {"item_id": "a", "cos": 3.0}, {"item_id": "b", "cos": float("nan")},
            {"item_id": "b", "cos": None}, {"item_id": "c", "cos": True}, {"item_id": "d"}]
    assert item_means(rows, "cos") == {"a": 2.0, "c": 1.0}
    typed = [SampleRow.model_validate(r) for r in SAMPLES]
    assert item_means(typed, "cos") == pytest.approx({"chat-01": 0.2, "code-01": 0.5})
    assert item_means(typed, "my_scorer_col") == {"chat-01": 3.5}


def test_unique_names():
    assert _unique_names(["x", "y", "x", "x"]) == ["x#1", "y", "x#2", "x#3"]
    assert _unique_names(["a", "b"]) == ["a", "b"]


def test_load_runs_labels(tmp_path):
    a = write_run(tmp_path / "a", config=config_record("pairA"))
    b = write_run(tmp_path / "b", config=config_record("pairA"))
    c = write_run(tmp_path / "c")
    runs = load_runs([a, b, c])
    assert [r.name for r in runs] == ["pairA#1", "pairA#2", "c"]
    assert all(isinstance(r, Run) for r in runs)
    assert [r.name for r in load_runs([a, c], names=["x", "y"])] == ["x", "y"]
    with pytest.raises(NLALabError, match="got 1 names for 2 run directories"):
        load_runs([a, c], names=["x"])
    with pytest.raises(NLALabError, match="no run directories given"):
        load_runs([])


def test_results_type_checks_plugin_free():
    # a control name nobody registered is kept as it is (a newer or third-party control)
    r = Results.model_validate({"controls": {"my_control": {"x": 1}}})
    assert r.controls["my_control"] == {"x": 1} and r.control("my_control") is None
