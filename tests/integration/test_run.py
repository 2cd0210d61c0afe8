"""`nlalab run` on fixture pairs: full run directory, resume after kill -9, config guard, --force."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nlalab.cli import app
from nlalab.errors import NLALabError
from nlalab.study.config import RunConfig
from nlalab.study.pipeline import run_study
from nlalab.rundir.io import JsonlLog, load_tensors

from runhelpers import FAST, cfg_for, stable



@pytest.fixture(scope="module")
def reference_run(fixture_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref_run")
    res = run_study(cfg_for(fixture_pairs["qwen2"], out, batch_size=1))
    return out, res


def test_run_directory_contract(reference_run):
    out, res = reference_run
    for f in ("config.json", "samples.jsonl", "vectors.safetensors", "results.json", "report.md",
              "controls/random_gaussian.jsonl", "controls/directions.jsonl"):
        assert (out / f).is_file(), f
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 16 * 2
    need = {"item_id", "category", "prompt", "sample", "explanation", "raw_output", "cos", "mse_nrm", "fve_nrm_seed",
            "fve_nrm", "recall", "hit"}
    assert need <= set(rows[0])
    t, _ = load_tensors(out / "vectors.safetensors")
    assert t["activations"].shape == (16, 64) and t["activations"].dtype == torch.float32
    assert t["reconstructions"].shape == (32, 64)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["environment"]["versions"]["torch"] and "git_commit" in cfg["environment"]
    assert cfg["pair"]["layer"] == 2 and cfg["corpus"]["n_items"] == 16
    results = json.loads((out / "results.json").read_text())
    assert {"per_category", "spread", "stability", "controls", "confabulation", "b_rv", "b_rv_source",
            "schema_version"} <= set(results)
    from nlalab.study.controls import names

    assert list(results["controls"]) == names()  # every registered control has a key (None when skipped)
    per = results["per_category"]
    assert set(per) >= {"chat", "code", "agent", "reasoning", "OVERALL"}
    assert per["OVERALL"]["fve_nrm"]["n"] == 32
    # results agree with the per-sample rows they summarise
    mean_cos = sum(r["cos"] for r in rows) / len(rows)
    assert per["OVERALL"]["cos"]["mean"] == pytest.approx(mean_cos, abs=1e-9)
    report = (out / "report.md").read_text()
    assert "OVERALL" in report and "Spread" in report and "B_rv" in report
    # reconstruction-side controls: rows in results.json and a section (with one verdict per category) in report.md
    ctl = results["controls"]
    for key in names():
        assert ctl[key] or key == "contrast_directions", key  # contrast directions need --directions
    assert set(ctl["baselines"]["rungs"]) >= {"real_pair", "mean_direction", "empty_explanation", "source_text",
                                              "blind_explanation"}
    assert ctl["seeds"]["seeds"] == [42, 1042, 2042]
    assert "## Item-specific reconstruction" in report
    for c in ("chat", "code", "agent", "reasoning"):  # one verdict per category
        assert ctl["recon_permutation"]["verdicts"][c] in report
    blind = [json.loads(x) for x in (out / "stages" / "control_blind.jsonl").read_text().splitlines()]
    assert len(blind) == 16 * 2
    # fve_nrm is consistent with the recorded B_rv
    r0 = rows[0]
    assert r0["fve_nrm"] == pytest.approx(1 - r0["mse_nrm"] / results["b_rv"], rel=1e-9)


def test_rerun_skips_and_is_identical(reference_run, fixture_pairs):
    out, res = reference_run
    before = (out / "stages" / "verbalize.jsonl").stat().st_mtime_ns
    again = run_study(cfg_for(fixture_pairs["qwen2"], out, batch_size=1))
    assert (out / "stages" / "verbalize.jsonl").stat().st_mtime_ns == before
    assert stable(again) == stable(res)


def test_kill_9_mid_verbalization_then_resume(reference_run, fixture_pairs, tmp_path):
    ref_out, ref = reference_run
    p = fixture_pairs["qwen2"]
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "nlalab.cli", "run", "--av", str(p.av), "--ar", str(p.ar), "--target", str(p.target),
            "--out", str(out), "--k", "2", "--max-new-tokens", "12", "--n-random", "4", "--n-perm", "200",
            "--n-boot", "200", "--limit-per-category", "4", "--batch-size", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "stages" / "verbalize.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and 3 <= log.read_bytes().count(b"\n") < 32:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = log.read_bytes().count(b"\n") if log.exists() else 0
    assert 0 < n_done < 32, f"kill landed outside verbalization ({n_done} rows)"
    # simulate a torn write on top of the kill
    with open(log, "ab") as f:
        f.write(b'{"vector_index": 9, "sample"')
    res = run_study(cfg_for(p, out, batch_size=4))  # a different batch size must not change anything
    rows = JsonlLog(log).read()
    assert len(rows) == 32 and len({(r["vector_index"], r["sample"]) for r in rows}) == 32
    assert stable(res) == stable(ref)
    assert (out / "samples.jsonl").read_text() == (ref_out / "samples.jsonl").read_text()


def test_config_guard_and_force(reference_run, fixture_pairs, tmp_path):
    p = fixture_pairs["qwen2"]
    out = tmp_path / "guard"
    run_study(cfg_for(p, out, controls=[]))
    with pytest.raises(NLALabError, match="different settings.*seed"):
        run_study(cfg_for(p, out, controls=[], seed=7))
    log = out / "stages" / "verbalize.jsonl"
    first = log.read_text()
    run_study(cfg_for(p, out, controls=[], force=["verbalize"]))
    assert log.read_text() == first  # redone, same seed -> same rows
    res = run_study(cfg_for(p, out, controls=[], seed=7), overwrite=True)
    assert log.read_text() != first
    # controls=[] runs only the always-on ones
    assert {n for n, v in res["controls"].items() if v} == {"recall_permutation"}
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 7


def test_bad_inputs_are_clear(fixture_pairs, tmp_path):
    p = fixture_pairs["qwen2"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(NLALabError, match="empty"):
        run_study(cfg_for(p, tmp_path / "e", corpus=str(empty)))
    with pytest.raises(NLALabError, match="(?i)unknown control"):
        run_study(cfg_for(p, tmp_path / "c", controls=["nope"]))
    res = CliRunner().invoke(app, ["run", "--av", str(p.av), "--ar", str(p.ar), "--target", str(p.target),
                                   "--out", str(tmp_path / "x"), "--force", "bogus"])
    assert res.exit_code == 2 and "unknown stage" in res.output.lower()


def test_untrained_baseline_and_custom_corpus(fixture_pairs, tmp_path):
    p = fixture_pairs["llama"]
    corpus = tmp_path / "c.csv"
    corpus.write_text("prompt,category\nWhat is the capital of Peru?,geo\nName a river in Peru.,geo\n"
                      "Sort a list in Python.,code\nReverse a string in Python.,code\n")
    res = run_study(RunConfig(av=str(p.av), ar=str(p.ar), target=str(p.target), out=str(tmp_path / "u"),
                              corpus=str(corpus), untrained_baseline=True, **{**FAST, "limit_per_category": None}))
    assert set(res["per_category"]) >= {"geo", "code", "OVERALL"}
    assert (tmp_path / "u" / "untrained_pair" / "ar" / "value_head.safetensors").is_file()


def test_cli_score_compare_report_on_runs(reference_run, fixture_pairs, tmp_path):
    """The thin CLI over rescore/compare/html: scorer sections survive a rerun with unchanged samples."""
    out, _ = reference_run
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(out), "--scorer", "quote", "--n-perm", "50", "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "quote" in json.loads((out / "results.json").read_text())["scorers"]
    run_study(cfg_for(fixture_pairs["qwen2"], out, batch_size=1))  # unchanged samples: the section is kept
    assert "quote" in json.loads((out / "results.json").read_text())["scorers"]
    other = tmp_path / "other"
    run_study(cfg_for(fixture_pairs["llama"], other, controls=[]))
    res = runner.invoke(app, ["compare", str(out), str(other), "--format", "csv", "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "fve_nrm" in res.output
    res = runner.invoke(app, ["report", str(other), "--out", str(tmp_path / "r.html"), "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64") >= 1


def test_fast_engine_gives_the_same_run(fixture_pairs, tmp_path):
    """engine=fast (the GPU default) writes the same samples as the loop engine (CPU fp32, same sampling keys)."""
    p = fixture_pairs["gemma3_text"]
    a = run_study(cfg_for(p, tmp_path / "loop", engine="loop", controls=["random_gaussian"]))
    b = run_study(cfg_for(p, tmp_path / "fast", engine="fast", controls=["random_gaussian"]))
    rows = lambda d: [{k: r[k] for k in ("item_id", "sample", "raw_output")}  # noqa: E731
                      for r in map(json.loads, (d / "samples.jsonl").read_text().splitlines())]
    assert rows(tmp_path / "loop") == rows(tmp_path / "fast")
    assert a["per_category"]["OVERALL"]["cos"]["mean"] == pytest.approx(b["per_category"]["OVERALL"]["cos"]["mean"])


def test_two_verbalization_devices_write_the_same_logs(reference_run, fixture_pairs, tmp_path):
    """--verbalize-devices cpu,cpu (two worker threads with a replica each, as on two GPUs) writes the
    verbalization logs byte for byte as one device does: same rows, same order of incremental writes."""
    ref_out, ref = reference_run
    one = ref["verbalize_devices_this_invocation"]  # one device: recorded too
    assert one and all(v == ["cpu"] for v in one.values()), one
    out = tmp_path / "two"
    res = run_study(cfg_for(fixture_pairs["qwen2"], out, batch_size=1, controls=["random_gaussian"],
                            verbalize_devices="cpu,cpu"))
    assert res["verbalize_devices_this_invocation"] == {"corpus": ["cpu", "cpu"], "random_gaussian": ["cpu", "cpu"]}
    for name in ("verbalize.jsonl", "control_random_gaussian.jsonl"):
        assert (out / "stages" / name).read_bytes() == (ref_out / "stages" / name).read_bytes(), name
    from nlalab.verbalize.parallel import last_info

    assert last_info()["devices"] == ["cpu", "cpu"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["verbalize_devices"] == "cpu,cpu" and "verbalize_devices" not in cfg["identity"]
