"""`nlalab sidecar write`: a fixture pair stripped of its sidecars gets back the ones nlalab built for it."""

import shutil

import pytest
import yaml
from typer.testing import CliRunner

from nlalab.cli import app
from nlalab.pairs.sidecar import SIDECAR_NAME, read_sidecar

runner = CliRunner()
COMPARED = ("d_model", "extraction", "tokens", "prompt_templates", "extraction_layer_index", "critic", "role",
            "base_checkpoint")


@pytest.fixture()
def bare_pair(fixture_pairs, tmp_path):
    """Copies of the qwen2 fixture AV and AR without nla_meta.yaml, and the originals' sidecars."""
    p = fixture_pairs["qwen2"]
    out = {}
    for role, d in (("av", p.av), ("ar", p.ar)):
        dst = tmp_path / role
        shutil.copytree(d, dst)
        out[role] = (dst, yaml.safe_load((dst / SIDECAR_NAME).read_text()))
        (dst / SIDECAR_NAME).unlink()
    return out


def test_rebuilds_the_fixture_sidecars_and_validates(bare_pair):
    (av, av_orig), (ar, ar_orig) = bare_pair["av"], bare_pair["ar"]
    res = runner.invoke(app, ["sidecar", "write", "--av", str(av), "--ar", str(ar), "--layer", "2",
                              "--injection-scale", str(av_orig["extraction"]["injection_scale"]),
                              "--base", av_orig["base_checkpoint"], "--stage", "init"])
    assert res.exit_code == 0, res.output
    assert "0 failed" in res.output
    for d, orig in ((av, av_orig), (ar, ar_orig)):
        new = yaml.safe_load((d / SIDECAR_NAME).read_text())
        for key in COMPARED:
            assert new.get(key) == orig.get(key), (d.name, key)
    # the AR's suffix ids were derived from the tokenizer (not copied): they match what build_untrained_pair wrote
    assert read_sidecar(ar).tokens.critic_suffix_ids == ar_orig["tokens"]["critic_suffix_ids"]
    assert read_sidecar(av).mse_scale == 8.0  # sqrt(64)


def test_refuses_to_replace_and_needs_the_av_scale(bare_pair):
    av, _ = bare_pair["av"]
    res = runner.invoke(app, ["sidecar", "write", "--av", str(av), "--layer", "2"])
    assert res.exit_code == 2 and "--injection-scale is needed" in res.output
    assert not (av / SIDECAR_NAME).exists()
    ok = runner.invoke(app, ["sidecar", "write", "--av", str(av), "--layer", "2", "--injection-scale", "sqrt_d_model"])
    assert ok.exit_code == 0, ok.output
    assert read_sidecar(av).injection_scale == 8.0
    again = runner.invoke(app, ["sidecar", "write", "--av", str(av), "--layer", "2", "--injection-scale", "50"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    over = runner.invoke(app, ["sidecar", "write", "--av", str(av), "--layer", "2", "--injection-scale", "50",
                               "--overwrite"])
    assert over.exit_code == 0 and read_sidecar(av).injection_scale == 50.0


def test_bad_marker_and_wrong_layer(bare_pair):
    (av, _), (ar, _) = bare_pair["av"], bare_pair["ar"]
    res = runner.invoke(app, ["sidecar", "write", "--av", str(av), "--layer", "2", "--injection-scale", "9",
                              "--marker", "xyzzy"])
    assert res.exit_code == 2 and "--marker 'xyzzy' is not one token" in res.output
    # K=1 for an AR with 3 blocks: written, then the pair check fails (exit 1) naming the layer count
    res = runner.invoke(app, ["sidecar", "write", "--av", str(av), "--ar", str(ar), "--layer", "1",
                              "--injection-scale", "9"])
    assert res.exit_code == 1, res.output
    assert "num_hidden_layers: found 3, expected 2" in res.output
