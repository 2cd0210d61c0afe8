"""`run_study(models=...)`: preloaded models give the disk run's results and stay loaded; models dispatched
with accelerate hooks (the multi-device code path of a ``device_map`` load, here all on the CPU) too."""

import dataclasses
import json

import pytest
from nlalab.errors import NLALabError
from nlalab.pairs import arch
from nlalab.pairs.load import LoadOptions, load_ar, load_av, load_target, release
from nlalab.study.models import ModelSource, Preloaded
from nlalab.study.pipeline import run_study
from nlalab.testing import dispatch_layers, torch_threads

from runhelpers import cfg_for, stable
CPU = LoadOptions(device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield



def preload(pair, truncate: bool = False) -> Preloaded:
    return Preloaded(load_target(pair.target, pair.layer, CPU, truncate=truncate), load_av(pair.av, CPU),
                     load_ar(pair.ar, CPU, layer=pair.layer), name=f"preloaded-{pair.arch}", info={"test": True})


def on_meta(m) -> bool:
    return all(p.device.type == "meta" for p in m.parameters())


def test_preloaded_models_give_the_disk_results_and_stay_loaded(fixture_pairs, tmp_path):
    p = fixture_pairs["qwen2"]
    disk = run_study(cfg_for(p, tmp_path / "disk", batch_size=1))
    models = preload(p)
    assert isinstance(models, ModelSource)
    out = tmp_path / "pre"
    res = run_study(cfg_for(p, out, batch_size=4), models=models)
    assert stable(res) == stable(disk)
    assert (out / "samples.jsonl").read_text() == (tmp_path / "disk" / "samples.jsonl").read_text()
    assert json.loads((out / "results.json").read_text())["per_category"] == disk["per_category"]
    pair = json.loads((out / "config.json").read_text())["pair"]
    assert pair["preloaded"] is True and pair["name"] == "preloaded-qwen2" and pair["layer"] == p.layer
    assert pair["av"]["path"] == str(p.av) and pair["target"]["truncated"] is False and pair["test"] is True
    assert res["provenance"]["pair"] == pair
    # nothing was freed: the same objects run another study, which resumes (no stage redone)
    for obj in (models.target_model, models.av_model, models.ar_model):
        assert not on_meta(obj.model)
    before = (out / "stages" / "verbalize.jsonl").stat().st_mtime_ns
    again = run_study(cfg_for(p, out, batch_size=4), models=models)
    assert (out / "stages" / "verbalize.jsonl").stat().st_mtime_ns == before
    assert stable(again) == stable(disk)


def test_preloaded_checks(fixture_pairs, tmp_path):
    p = fixture_pairs["llama"]
    models = preload(p, truncate=True)
    with pytest.raises(NLALabError, match="blind control"):
        run_study(cfg_for(p, tmp_path / "r", controls=["blind"]), models=models)
    run_study(cfg_for(p, tmp_path / "r2", controls=[]), models=models)  # no blind control: a truncated target is enough
    with pytest.raises(NLALabError, match="layer"):
        Preloaded(models.target_model, models.av_model, dataclasses.replace(models.ar_model, layer=p.layer + 1))


def test_models_dispatched_with_hooks_give_the_same_run(fixture_pairs, tmp_path):
    p = fixture_pairs["gemma3_text"]  # tied embeddings, sliding-window layers, Gemma's embed scale
    controls = ["random_gaussian", "blind", "baselines"]
    disk = run_study(cfg_for(p, tmp_path / "disk", controls=controls))
    models = preload(p)
    for obj in (models.target_model, models.av_model, models.ar_model):
        dispatch_layers(obj.model, ["cpu", "cpu"])
        assert hasattr(obj.model, "_hf_hook") and hasattr(arch.decoder_layers(obj.model)[0], "_hf_hook")
    res = run_study(cfg_for(p, tmp_path / "hooked", controls=controls), models=models)
    assert stable(res) == stable(disk)
    for name in ("samples.jsonl",):
        assert (tmp_path / "hooked" / name).read_text() == (tmp_path / "disk" / name).read_text()
    # release() takes the hooks (and dispatch_model's wrapped .to) off and frees the weights
    for obj in (models.target_model, models.av_model, models.ar_model):
        release(obj)
        assert on_meta(obj.model)
        assert not any(hasattr(m, "_hf_hook") for m in obj.model.modules())
        assert "to" not in obj.model.__dict__
