"""One verbalization plan per study: every AV job in one engine session, stage files byte-identical to one
``verbalize`` call per job (the code before the plan), resume included."""

from dataclasses import replace

import pytest
import torch

from nlalab.pairs.load import load_av
from nlalab.study import stages as ST
from nlalab.study.controls.base import GenJob
from nlalab.testing import torch_threads
from nlalab.verbalize import GenerationSettings, verbalize


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _jobs(d):
    g = torch.Generator().manual_seed(0)
    return [GenJob("corpus", torch.randn(5, d, generator=g), 42, 0),
            GenJob("random_gaussian", torch.randn(3, d, generator=g), 1042, 1_000_000),
            GenJob("directions", torch.randn(2, d, generator=g).double(), 42, 2_000_000),
            GenJob("seed7", torch.randn(5, d, generator=g), 7, 0)]


def _per_job_reference(av, jobs, stages, k, gs):
    """The pre-plan ``run_verbalize``: one call per job, its own seed."""
    for job in jobs:
        log = ST.job_log(stages, job.name)
        done = ST.done_keys(log)
        verbalize(av, job.vectors, k=k, settings=replace(gs, seed=job.seed),
                  vector_keys=[job.key_base + i for i in range(job.vectors.shape[0])], skip=done,
                  on_batch=lambda recs, log=log: log.append([r.to_dict() for r in recs]))


def _files(stages):
    return {p.name: p.read_bytes() for p in sorted(stages.glob("*.jsonl"))}


def test_plan_groups_jobs_by_vector_kind(fixture_pairs, tmp_path):
    jobs = _jobs(16)
    groups = ST.plan_verbalize(jobs, tmp_path, k=2)
    assert [[pj.job.name for pj in g] for g in groups] == [["corpus", "random_gaussian"], ["directions"], ["seed7"]]
    assert [pj.offset for pj in groups[0]] == [0, 5] and groups[0][1].pending == 6
    assert len(ST.plan_verbalize(jobs, tmp_path, k=2, merge=False)) == 4
    ST.job_log(tmp_path, "corpus").append([{"vector_index": i, "sample": s} for i in range(5) for s in range(2)])
    assert [pj.job.name for g in ST.plan_verbalize(jobs, tmp_path, k=2) for pj in g][0] == "random_gaussian"


@pytest.mark.parametrize("engine", ["loop", "fast"])
def test_plan_writes_the_bytes_of_one_call_per_job(fixture_pairs, tmp_path, engine):
    av = load_av(fixture_pairs["qwen2"].av)
    jobs = _jobs(av.d_model)
    gs = GenerationSettings(max_new_tokens=10, batch_size=4, engine=engine, seed=123)
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir(), new.mkdir()
    _per_job_reference(av, jobs, ref, 2, gs)
    seen = []
    ST.run_verbalize(av, jobs, new, 2, gs, progress=False, on_rows=seen.append)
    assert sum(seen) == 10 + 6 + 4 + 10  # every row reported once to the progress hook
    a, b = _files(ref), _files(new)
    assert set(a) == {"verbalize.jsonl", "control_random_gaussian.jsonl", "control_directions.jsonl",
                      "control_seed7.jsonl"}
    assert a == b
    # the corpus and seed7 jobs share keys but not seeds: different rows
    assert a["verbalize.jsonl"] != a["control_seed7.jsonl"]


def test_plan_resume_is_byte_identical(fixture_pairs, tmp_path):
    av = load_av(fixture_pairs["llama"].av)
    jobs = _jobs(av.d_model)
    gs = GenerationSettings(max_new_tokens=8, batch_size=3, engine="loop")
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir(), new.mkdir()
    _per_job_reference(av, jobs, ref, 2, gs)
    # an interrupted run: corpus half done, random_gaussian's first batch done
    for name, n in (("verbalize.jsonl", 5), ("control_random_gaussian.jsonl", 3)):
        lines = (ref / name).read_bytes().splitlines(keepends=True)
        (new / name).write_bytes(b"".join(lines[:n]))
    ST.run_verbalize(av, jobs, new, 2, gs, progress=False)
    assert _files(new) == _files(ref)
    assert ST.run_verbalize(av, jobs, new, 2, gs, progress=False) == {}  # nothing left to do
