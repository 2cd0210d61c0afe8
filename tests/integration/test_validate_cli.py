"""`nlalab validate` accepts correct pairs and names each defect; the CLI fails cleanly on bad input."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nlalab.cli import app
from nlalab.pairs.validate import validate_pair
from nlalab.testing import make_defect

runner = CliRunner()


def test_validate_accepts_each_architecture(fixture_pair):
    rep = validate_pair(fixture_pair.av, fixture_pair.ar, fixture_pair.target, fixture_pair.layer)
    assert rep.ok, rep.lines()
    assert len(rep.passed) >= 12


@pytest.mark.parametrize("defect,needle", [
    ("missing_value_head", "value_head.safetensors: found no such file"),
    ("wrong_marker_id", "tokens.injection_token_id"),
    ("ar_k_plus_2", "num_hidden_layers: found 4, expected 3 (K+1 for K=2)"),
    ("d_model_mismatch", "d_model: found 65, expected 64"),
    ("missing_sidecar", "nla_meta.yaml: found no such file"),
])
def test_validate_refuses_each_defect(fixture_pairs, tmp_path, defect, needle):
    bad = make_defect(fixture_pairs["qwen2"], defect, tmp_path / defect)
    rep = validate_pair(bad.av, bad.ar, bad.target, bad.layer)
    assert not rep.ok
    lines = [p.line() for p in rep.problems]
    assert any(needle in ln for ln in lines), lines
    assert all("Fix:" in ln and "\n" not in ln for ln in lines)
    res = runner.invoke(app, ["validate", "--av", str(bad.av), "--ar", str(bad.ar), "--target", str(bad.target)])
    assert res.exit_code == 1
    assert "FAIL" in res.output and needle in res.output


def test_cli_validate_ok_and_ls(fixture_pairs):
    p = fixture_pairs["llama"]
    res = runner.invoke(app, ["validate", "--av", str(p.av), "--ar", str(p.ar), "--target", str(p.target)])
    assert res.exit_code == 0, res.output
    assert "0 failed" in res.output
    res = runner.invoke(app, ["ls", "--json"])
    reg = json.loads(res.output)
    assert set(reg) == {"qwen2.5-7b-L20", "gemma3-12b-L32", "gemma3-27b-L41", "llama3.3-70b-L53"}
    assert reg["gemma3-27b-L41"]["layer"] == 41 and reg["llama3.3-70b-L53"]["d_model"] == 8192


def test_cli_explain_vectors_and_prompts(fixture_pairs, tmp_path):
    p = fixture_pairs["gemma3_text"]
    vec = tmp_path / "probe.npy"
    np.save(vec, np.random.default_rng(0).standard_normal(64).astype(np.float32))
    args = ["--av", str(p.av), "--ar", str(p.ar), "--max-new-tokens", "6", "--k", "2"]
    res = runner.invoke(app, ["explain", "--vectors", str(vec), *args, "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.output.strip().splitlines()]
    assert len(rows) == 2 and {"cos", "mse_nrm", "fve_nrm_seed", "explanation"} <= set(rows[0])
    res = runner.invoke(app, ["explain", "-p", "What is the capital of Brazil?", "-p", "Hi", "--target",
                              str(p.target), *args])
    assert res.exit_code == 0, res.output
    assert res.output.count("cos=") == 4


@pytest.mark.parametrize("vec,needle", [
    (np.zeros(65, np.float32), "d=65"),
    (np.array([np.nan] + [1.0] * 63, np.float32), "NaN"),
])
def test_cli_explain_rejects_bad_vectors(fixture_pairs, tmp_path, vec, needle):
    p = fixture_pairs["qwen2"]
    f = tmp_path / "v.npy"
    np.save(f, vec)
    res = runner.invoke(app, ["explain", "--vectors", str(f), "--av", str(p.av), "--ar", str(p.ar)])
    assert res.exit_code == 2
    assert needle in res.output and "Traceback" not in res.output


def test_cli_reports_missing_pair_cleanly(tmp_path):
    res = runner.invoke(app, ["validate", "--av", str(tmp_path / "nope"), "--ar", str(tmp_path / "nope2")])
    assert res.exit_code == 2 and "neither an existing directory" in res.output


def test_vector_files_all_formats(tmp_path):
    from safetensors.torch import save_file

    from nlalab.vectors_io import load_vectors

    v = torch.randn(3, 8)
    np.save(tmp_path / "a.npy", v.numpy())
    torch.save(v, tmp_path / "b.pt")
    save_file({"dirs": v, "other": v[:1].clone()}, str(tmp_path / "c.safetensors"))
    assert torch.equal(load_vectors(tmp_path / "a.npy"), v)
    assert torch.equal(load_vectors(tmp_path / "b.pt"), v)
    assert torch.equal(load_vectors(tmp_path / "c.safetensors", "dirs"), v)
    from nlalab.errors import NLALabError

    with pytest.raises(NLALabError, match="several tensors"):
        load_vectors(tmp_path / "c.safetensors")


def test_schema_v1_training_names_validate_and_load(fixture_pairs, tmp_path):
    """Training-output sidecars (schema v1, actor/critic, critic.num_hidden_layers meaning K) still work."""
    import shutil

    import yaml

    from nlalab.pairs.load import load_ar, load_av

    p = fixture_pairs["llama"]
    av, ar = tmp_path / "av", tmp_path / "ar"
    shutil.copytree(p.av, av)
    shutil.copytree(p.ar, ar)
    for d, role in ((av, "actor"), (ar, "critic")):
        raw = yaml.safe_load((d / "nla_meta.yaml").read_text())
        raw.update(schema_version=1, role=role)
        raw["prompt_templates"] = {"actor": raw["prompt_templates"]["av"], "critic": raw["prompt_templates"]["ar"]}
        raw.pop("extraction_layer_index", None)
        raw.pop("critic", None)
        if role == "critic":
            raw["critic"] = {"num_hidden_layers": p.layer}
        (d / "nla_meta.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    rep = validate_pair(av, ar, p.target, p.layer)
    assert rep.ok, rep.lines()
    assert load_ar(ar).layer == p.layer and load_av(av).sidecar.role == "av"
