"""GPU paths of nlalab.train (bf16 autocast, fp32 LM head, bf16 rollout copies): run on the device machine.

Run there with: python -m pytest -q -m gpu tests/integration/test_train_gpu.py
"""

import pytest
import torch

from nlalab.pairs.validate import validate_pair
from nlalab.train import apply_overrides, train_pair

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("lora", [False, True])
def test_train_pair_on_cuda(fixture_pairs, tmp_path, lora):
    if lora:
        pytest.importorskip("peft")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_ttp", Path(__file__).with_name("test_train_pipeline.py"))
    ttp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ttp)
    tiny_config, write_corpus = ttp.tiny_config, ttp.write_corpus
    pair = fixture_pairs["qwen2"]
    cfg = apply_overrides(tiny_config(tmp_path / "run", pair, write_corpus(tmp_path / "c.jsonl"), lora=lora),
                          {"device": "cuda", "rl.steps": 3})
    final = train_pair(cfg)
    assert validate_pair(final / "av", final / "ar").ok
    import json

    rows = json.loads((tmp_path / "run" / "curves.json").read_text())["rl"]
    last = [r for r in rows if r["step"] == 3][0]
    assert last["t_rollout_s"] > 0 and last["kl_ref"] >= 0
