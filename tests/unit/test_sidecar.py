"""Sidecars of schema v1 and v2, with release (av/ar) and training (actor/critic) names."""

import math

import pytest
import yaml

from nlalab.errors import ValidationProblem
from nlalab.pairs.sidecar import (DEFAULT_AR_TEMPLATE, DEFAULT_AV_TEMPLATE, parse_sidecar, read_sidecar,
                                  sidecar_dict, write_sidecar)

V2_AR = {
    "kind": "nla_model", "schema_version": 2, "role": "ar", "stage": "sl", "d_model": 3584,
    "extraction": {"injection_scale": None, "mse_scale": 59.86651818838306},
    "tokens": {"injection_char": "㈎", "injection_token_id": 149705, "injection_left_neighbor_id": 29,
               "injection_right_neighbor_id": 522, "critic_suffix_ids": [1318, 29, 366, 1708, 29]},
    "prompt_templates": {"av": DEFAULT_AV_TEMPLATE, "ar": DEFAULT_AR_TEMPLATE},
    "critic": {"extraction_layer_index": 20}, "extraction_layer_index": 20,
}


def test_v2_release_names():
    sc = parse_sidecar(V2_AR)
    assert sc.role == "ar" and sc.layer == 20 and sc.d_model == 3584
    assert sc.mse_scale == pytest.approx(math.sqrt(3584))
    assert sc.tokens.critic_suffix_ids == [1318, 29, 366, 1708, 29]
    assert sc.ar_template == DEFAULT_AR_TEMPLATE


def test_v1_training_names_and_sentinels():
    raw = {
        "kind": "nla_model", "schema_version": 1, "role": "critic", "d_model": 16,
        "extraction": {"mse_scale": "sqrt_d_model", "injection_scale": "150"},
        "prompt_templates": {"actor": "A {injection_char}", "critic": "C {explanation}"},
        "critic": {"num_hidden_layers": 7},  # v1 meaning: K
    }
    sc = parse_sidecar(raw)
    assert sc.role == "ar" and sc.layer == 7
    assert sc.mse_scale == pytest.approx(4.0) and sc.injection_scale == 150.0
    assert sc.av_template == "A {injection_char}" and sc.ar_template == "C {explanation}"
    assert parse_sidecar({**raw, "role": "actor", "extraction": {"mse_scale": "raw"}}).mse_scale is None


@pytest.mark.parametrize("bad,field", [
    ({"role": "judge"}, "role"),
    ({"d_model": None}, "d_model"),
    ({"kind": "nla_dataset"}, "kind"),
    ({"extraction": {"mse_scale": "big"}}, "extraction.mse_scale"),
])
def test_bad_sidecars_name_the_field(bad, field):
    raw = {**V2_AR, **bad}
    with pytest.raises(ValidationProblem) as e:
        parse_sidecar(raw, where="x/nla_meta.yaml")
    assert e.value.field == field
    assert "x/nla_meta.yaml" in str(e.value) and "Fix:" in str(e.value)


def test_write_read_roundtrip(tmp_path):
    d = sidecar_dict(role="av", d_model=64, layer=2, injection_scale=58.0, mse_scale=8.0, injection_char="㈎",
                     injection_token_id=5, left_id=3, right_id=4)
    write_sidecar(tmp_path, d)
    assert yaml.safe_load((tmp_path / "nla_meta.yaml").read_text())["role"] == "av"
    sc = read_sidecar(tmp_path)
    assert (sc.role, sc.layer, sc.injection_scale, sc.tokens.injection_char) == ("av", 2, 58.0, "㈎")


def test_missing_sidecar_is_one_clear_line(tmp_path):
    with pytest.raises(ValidationProblem) as e:
        read_sidecar(tmp_path)
    assert "nla_meta.yaml" in str(e.value) and "\n" not in str(e.value)
