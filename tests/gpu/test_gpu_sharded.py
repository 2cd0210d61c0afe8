"""Two GPUs: a pair sharded over them (accelerate hooks, as a ``device_map`` load gives) runs the same study
as on one GPU. Run on a machine with >= 2 GPUs: ``pytest -m gpu tests/gpu/test_gpu_sharded.py -o addopts=""``."""

import json

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available() or torch.cuda.device_count() < 2:  # pragma: no cover - CI has no GPU
    pytest.skip("needs 2 CUDA GPUs", allow_module_level=True)

from nlalab.pairs.load import LoadOptions, load_ar, load_av, load_target, release  # noqa: E402
from nlalab.study.config import RunConfig  # noqa: E402
from nlalab.study.models import Preloaded  # noqa: E402
from nlalab.study.pipeline import run_study  # noqa: E402
from nlalab.rundir.io import load_tensors  # noqa: E402
from nlalab.testing import dispatch_layers  # noqa: E402

# fp32 and the loop engine on both sides: the only difference is where each block runs
FP32 = LoadOptions(device="cuda:0", dtype="fp32")
STUDY = dict(k=2, max_new_tokens=12, n_random=4, n_perm=200, n_boot=200, limit_per_category=4, progress=False,
             engine="loop", controls=["random_gaussian", "blind", "baselines"])
if "verbalize_devices" in RunConfig.model_fields:
    STUDY["verbalize_devices"] = "none"  # no data-parallel replicas on the one-GPU side


def cfg_for(p, out, **kw):
    return RunConfig(av=str(p.av), ar=str(p.ar), target=str(p.target), out=str(out), **{**STUDY, **kw})


def rows(d):
    return [(r["item_id"], r["sample"], r["raw_output"])
            for r in map(json.loads, (d / "samples.jsonl").read_text().splitlines())]


def compare(one, two):
    a, b = rows(one), rows(two)
    assert len(a) == len(b) and [x[:2] for x in a] == [x[:2] for x in b]
    agree = sum(x == y for x, y in zip(a, b)) / len(a)
    assert agree >= 0.9, agree  # fp32, same kernels: expected 1.0
    ca = load_tensors(one / "stages" / "capture.safetensors")[0]["activations"]
    cb = load_tensors(two / "stages" / "capture.safetensors")[0]["activations"]
    torch.testing.assert_close(ca, cb, rtol=1e-5, atol=1e-5)
    ra = load_tensors(one / "stages" / "control_random_gaussian.safetensors")[0]["reconstructions"]
    rb = load_tensors(two / "stages" / "control_random_gaussian.safetensors")[0]["reconstructions"]
    if agree == 1.0:
        torch.testing.assert_close(ra, rb, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch_", ["qwen2", "gemma3_text"])
def test_blocks_alternating_over_two_gpus_give_the_one_gpu_run(fixture_pairs, tmp_path, arch_):
    p = fixture_pairs[arch_]

    def models(split: bool) -> Preloaded:
        m = Preloaded(load_target(p.target, p.layer, FP32, truncate=False), load_av(p.av, FP32),
                      load_ar(p.ar, FP32, layer=p.layer))
        if split:
            for o in (m.target_model, m.av_model, m.ar_model):
                dispatch_layers(o.model, [0, 1])  # block i on cuda:(i % 2)
            assert {q.device.index for q in m.av_model.model.parameters()} == {0, 1}
        return m

    one, two = models(False), models(True)
    run_study(cfg_for(p, tmp_path / "one"), models=one)
    run_study(cfg_for(p, tmp_path / "two"), models=two)
    compare(tmp_path / "one", tmp_path / "two")
    for m in (one, two):
        for o in (m.target_model, m.av_model, m.ar_model):
            release(o)


def test_device_map_disk_path_on_two_gpus(fixture_pairs, tmp_path):
    """`nlalab run --device-map balanced`: transformers places the blocks, nlalab loads, runs, frees."""
    p = fixture_pairs["llama"]
    opts = LoadOptions(device="cuda", dtype="fp32", device_map="balanced")
    av = load_av(p.av, opts)
    devs = set(getattr(av.model, "hf_device_map", {}).values())
    release(av)
    if len(devs) < 2:
        pytest.skip(f"device_map='balanced' kept the tiny fixture on {devs}")
    run_study(cfg_for(p, tmp_path / "one", device="cuda:0", dtype="fp32"))
    run_study(cfg_for(p, tmp_path / "two", device="cuda", dtype="fp32", device_map="balanced"))
    compare(tmp_path / "one", tmp_path / "two")
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["config"]["device_map"] == "balanced"
