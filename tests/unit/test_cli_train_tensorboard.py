"""Training curves reach TensorBoard when the package is installed; a resume drops the steps it redoes."""

import json

import pytest

from nlalab.train.common import CurveLog

pytest.importorskip("tensorboard")


def _scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_match_the_jsonl(tmp_path):
    log = CurveLog(tmp_path / "ar_sft" / "curves.jsonl")
    for step, loss in ((1, 3.0), (2, 2.0), (3, 1.0)):
        log.log({"step": step, "loss": loss, "lr": 1e-4, "note": "x", "ok": True})
    log.close()
    sc = _scalars(log.tb_dir)
    assert set(sc) == {"ar_sft/loss", "ar_sft/lr"}  # strings and booleans are not scalars
    assert sc["ar_sft/loss"] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert [json.loads(x)["loss"] for x in log.path.read_text().splitlines()] == [3.0, 2.0, 1.0]


def test_resume_purges_the_redone_steps(tmp_path):
    path = tmp_path / "rl" / "curves.jsonl"
    log = CurveLog(path)
    for step in (1, 2, 3, 4):
        log.log({"step": step, "reward": float(step)})
    log.close()
    resumed = CurveLog(path)
    resumed.truncate(2)  # the checkpoint was at step 2: steps 3 and 4 are redone with new values
    for step in (3, 4):
        resumed.log({"step": step, "reward": 10.0 * step})
    resumed.close()
    assert _scalars(resumed.tb_dir)["rl/reward"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_off_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("NLALAB_TENSORBOARD", "0")
    log = CurveLog(tmp_path / "s" / "curves.jsonl")
    log.log({"step": 1, "loss": 1.0})
    assert not log.tb_dir.exists()
