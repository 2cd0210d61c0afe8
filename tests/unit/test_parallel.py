"""Data-parallel verbalization on the CPU: replicas, sharding, ordered merge, resume, errors.

``devices=["cpu", "cpu"]`` runs two worker threads, each with its own replica of the AV, exactly as
several GPUs would (one thread per device); only the device differs. tests/gpu/test_gpu_engine.py
checks 1 GPU vs 2 GPUs with the fast engine.
"""

import threading

import pytest
import torch

from nlalab.errors import NLALabError
from nlalab.pairs.load import load_av, release
from nlalab.testing import torch_threads
from nlalab.verbalize import GenerationSettings, verbalize
from nlalab.verbalize import fast
from nlalab.verbalize import generate
from nlalab.verbalize import parallel


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _gs(**kw):
    return GenerationSettings(**{"max_new_tokens": 12, "engine": "loop", **kw})


def _dicts(recs):
    return [r.to_dict(with_tokens=True) for r in recs]


def _no_workers_left():
    return not [t for t in threading.enumerate() if t.name.startswith("nlalab-verbalize-")]


@pytest.mark.parametrize("name", ["qwen2", "gemma3_mm"])
def test_two_and_three_workers_equal_one_device(fixture_pairs, name):
    """Same records, same order, and the same sequence of records through on_batch, from this thread."""
    av = load_av(fixture_pairs[name].av)
    torch.manual_seed(0)
    vecs = torch.randn(5, av.d_model)
    keys = [100 + i for i in range(5)]
    for gs in (dict(temperature=1.0, seed=3), dict(greedy=True)):
        seen1 = []
        ref = verbalize(av, vecs, k=3, settings=_gs(batch_size=4, **gs), vector_keys=keys, on_batch=seen1.extend)
        assert len({tuple(r.token_ids) for r in ref}) > 1
        for devices in (["cpu", "cpu"], "cpu,cpu,cpu"):
            seen, callers = [], set()

            def on_batch(recs):
                callers.add(threading.get_ident())
                seen.extend(recs)

            got = verbalize(av, vecs, k=3, settings=_gs(batch_size=4, devices=devices, **gs), vector_keys=keys,
                            on_batch=on_batch)
            assert _dicts(got) == _dicts(ref)
            assert _dicts(seen) == _dicts(seen1)  # incremental writes in the one-device order
            assert callers == {threading.get_ident()}
            info = parallel.last_info()
            n_dev = 2 if isinstance(devices, list) else 3
            assert info["devices"] == ["cpu"] * n_dev and sum(info["rows"]) == 15
            assert max(info["rows"]) - min(info["rows"]) <= 1 and all(s is not None for s in info["seconds"])
    assert _no_workers_left()
    # the AV itself is untouched by its replicas being made and freed
    again = verbalize(av, vecs, k=3, settings=_gs(batch_size=4, greedy=True), vector_keys=keys)
    assert _dicts(again) == _dicts(verbalize(av, vecs, k=3, settings=_gs(batch_size=7, greedy=True),
                                             vector_keys=keys))


def test_fast_engine_workers_and_resume(fixture_pairs):
    """The fast engine's CPU path per worker (one engine per replica), with skip/resume."""
    av = load_av(fixture_pairs["llama"].av)
    torch.manual_seed(1)
    vecs = torch.randn(4, av.d_model)
    gs = dict(engine="fast", seed=5, fast_batch_size=3)
    ref = verbalize(av, vecs, k=2, settings=_gs(**gs))
    got = verbalize(av, vecs, k=2, settings=_gs(devices=["cpu", "cpu"], **gs))
    assert _dicts(got) == _dicts(ref)
    assert av.model not in fast._ENGINES  # engines of the AV and of its replica dropped at the end
    assert not list(parallel._LIVE.keys())  # replicas freed
    skip = {(0, 1), (1, 0), (3, 1)}
    rest = verbalize(av, vecs, k=2, settings=_gs(devices="cpu,cpu,cpu", **gs), skip=skip)
    assert _dicts(rest) == [d for d in _dicts(ref) if (d["vector_index"], d["sample"]) not in skip]
    # resume with the loop engine too (same keys -> same rows as the fast engine on the CPU)
    rest = verbalize(av, vecs, k=2, settings=_gs(devices=["cpu", "cpu"], seed=5), skip=skip)
    assert _dicts(rest) == [d for d in _dicts(ref) if (d["vector_index"], d["sample"]) not in skip]


def test_error_in_one_worker_surfaces_and_finished_rows_are_kept(fixture_pairs, monkeypatch):
    av = load_av(fixture_pairs["qwen2"].av)
    torch.manual_seed(2)
    vecs = torch.randn(6, av.d_model)
    ref = verbalize(av, vecs, k=2, settings=_gs(batch_size=2))
    real = generate.decode_loop
    replica_batches = []

    def flaky(av_, embeds, keys, gs):
        if av_.model is not av.model:  # the replica's worker (second shard) fails at its second batch
            replica_batches.append(1)
            if len(replica_batches) == 2:
                raise RuntimeError("boom on the replica")
        return real(av_, embeds, keys, gs)

    monkeypatch.setattr(generate, "decode_loop", flaky)
    seen = []
    with pytest.raises(RuntimeError, match="boom on the replica") as ei:
        verbalize(av, vecs, k=2, settings=_gs(batch_size=2, devices=["cpu", "cpu"]), on_batch=seen.extend)
    assert any("worker on cpu" in n for n in getattr(ei.value, "__notes__", []))
    assert _no_workers_left()
    assert not list(parallel._LIVE.keys())
    # what the workers finished before the error (the replica's first batch, rows (3, 0) and (3, 1), and
    # whatever the first worker did before it was stopped) was handed over, in order, and is right
    by_key = {(d["vector_index"], d["sample"]): d for d in _dicts(ref)}
    keys = [(d["vector_index"], d["sample"]) for d in _dicts(seen)]
    assert {(3, 0), (3, 1)} <= set(keys) and keys == sorted(keys)
    assert _dicts(seen) == [by_key[k_] for k_ in keys]
    monkeypatch.setattr(generate, "decode_loop", real)
    # a failing on_batch (e.g. a full disk) stops the workers too, and raises here
    calls = []

    def bad(recs):
        calls.append(len(recs))
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        verbalize(av, vecs, k=2, settings=_gs(batch_size=2, devices=["cpu", "cpu"]), on_batch=bad)
    assert calls == [2] and _no_workers_left() and not list(parallel._LIVE.keys())


def test_resolve_devices(fixture_pairs, monkeypatch):
    av = load_av(fixture_pairs["qwen2"].av)
    cpu = torch.device("cpu")
    R = parallel.resolve_devices
    assert R("auto", av, "loop") == [cpu] and R(None, av, "loop") == [cpu] and R("none", av, "fast") == [cpu]
    monkeypatch.delenv("NLALAB_VERBALIZE_DEVICES", raising=False)
    assert GenerationSettings().devices == "auto"  # the default (tests/conftest.py sets "none" for the suite)
    monkeypatch.setenv("NLALAB_VERBALIZE_DEVICES", "cpu,cpu")
    assert GenerationSettings().devices == "cpu,cpu"
    assert R("cpu,cpu", av, "loop") == [cpu, cpu] and R(["cpu"] * 3, av, "fast", n_rows=2) == [cpu, cpu]
    with pytest.raises(NLALabError, match="not on a CUDA device"):
        R("all", av, "loop")
    with pytest.raises(NLALabError, match="not on a CUDA device"):
        R("2", av, "loop")
    with pytest.raises(NLALabError, match="hf"):
        R(["cpu", "cpu"], av, "hf")
    with pytest.raises(NLALabError, match="not visible"):
        R("cuda:7,cuda:8", av, "fast")
    with pytest.raises(NLALabError, match="verbalize-devices"):
        R("gpu0,gpu1", av, "fast")
    assert parallel.split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert parallel.split(list(range(2)), 3) == [[0], [1]]


def test_replica_is_a_separate_copy_with_tied_weights(fixture_pairs):
    av = load_av(fixture_pairs["gemma3_text"].av)
    rep = parallel.replicate_av(av, "cpu")
    assert rep.model is not av.model and rep.tokenizer is av.tokenizer and rep.prompt_ids == av.prompt_ids
    src = dict(av.model.named_parameters(remove_duplicate=False))
    dst = dict(rep.model.named_parameters(remove_duplicate=False))
    assert src.keys() == dst.keys()
    for n_, p in src.items():
        assert dst[n_] is not p and torch.equal(dst[n_], p), n_
    tied = av.model.lm_head.weight is av.model.get_input_embeddings().weight
    assert (rep.model.lm_head.weight is rep.model.get_input_embeddings().weight) == tied
    torch.manual_seed(3)
    vecs = torch.randn(2, av.d_model)
    ref = verbalize(av, vecs, k=2, settings=_gs(greedy=True))
    assert _dicts(verbalize(rep, vecs, k=2, settings=_gs(greedy=True))) == _dicts(ref)
    release(rep)  # freeing the replica leaves the AV working
    assert _dicts(verbalize(av, vecs, k=2, settings=_gs(greedy=True))) == _dicts(ref)


def test_a_device_without_room_for_a_replica_is_left_out(fixture_pairs, monkeypatch):
    av = load_av(fixture_pairs["qwen2"].av)
    torch.manual_seed(4)
    vecs = torch.randn(3, av.d_model)
    ref = verbalize(av, vecs, k=2, settings=_gs(seed=9))
    real = parallel.replicate_av
    tries = []

    def tight(av_, device):
        tries.append(device)
        if len(tries) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(av_, device)

    monkeypatch.setattr(parallel, "replicate_av", tight)
    with pytest.warns(UserWarning, match="does not fit"):
        got = verbalize(av, vecs, k=2, settings=_gs(seed=9, devices="cpu,cpu,cpu"))
    assert _dicts(got) == _dicts(ref) and len(tries) == 2
    assert parallel.last_info()["devices"] == ["cpu", "cpu"]
    tries.clear()
    with pytest.warns(UserWarning, match="does not fit"):  # no replica at all: the AV alone
        got = verbalize(av, vecs, k=2, settings=_gs(seed=9, devices="cpu,cpu"))
    assert _dicts(got) == _dicts(ref) and parallel.last_info()["devices"] == ["cpu"]
