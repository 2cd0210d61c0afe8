"""The study's model stages, each resumable from its files: capture (and target-model generation),
verbalize (every AV job, the AV loaded once), reconstruct (every job and every control text, the AR loaded
once). A stage output is reused when the content it was computed from is unchanged."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from nlalab.errors import NLALabError
from nlalab.rundir.io import JsonlLog, atomic_save_tensors, load_tensors
from nlalab.study.controls.base import GenJob, PlainJob
from nlalab.verbalize import GenerationSettings, verbalize

CAPTURE = "capture.safetensors"
CORPUS_LOG = "verbalize.jsonl"
CORPUS_RECON = "reconstruct.safetensors"
EXTRAS_RECON = "reconstruct_extras.safetensors"
FORCE_FIX = "Fix: rerun with --force {stage} to recompute it."


def digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()


def job_log(stages: Path, name: str) -> JsonlLog:
    return JsonlLog(stages / (CORPUS_LOG if name == "corpus" else f"control_{name}.jsonl"))


def job_recon_path(stages: Path, name: str) -> Path:
    return stages / (CORPUS_RECON if name == "corpus" else f"control_{name}.safetensors")


def done_keys(log: JsonlLog) -> set[tuple[int, int]]:
    return {(r["vector_index"], r["sample"]) for r in log.read()}


def sorted_rows(log: JsonlLog, n_vectors: int, k: int) -> list[dict]:
    """A job's rows in (vector, sample) order, deduplicated; exactly n_vectors × k or an error."""
    uniq = {(r["vector_index"], r["sample"]): r for r in log.read()}
    rows = [uniq[key] for key in sorted(uniq)]
    if len(rows) != n_vectors * k:
        raise NLALabError(f"{log.path} has {len(rows)} rows, expected {n_vectors * k}. "
                          + FORCE_FIX.format(stage="verbalize"))
    return rows


def forward_devices(cfg) -> Optional[str]:
    """Devices for the capture and reconstruct forwards: the study's ``--verbalize-devices`` when its engine is
    ``tp`` (the target's and the AR's blocks then run tensor-parallel too, not layer-sharded), else None (this
    process). One device, or a model the shards cannot split, also stays in this process (same vectors)."""
    return str(cfg.verbalize_devices) if getattr(cfg, "engine", None) == "tp" else None


def capture_activations(tg, items, layer: int, cfg, path: Path) -> None:
    """Block-K activations of the corpus at ``cfg.positions``: one row per item (``last``, an index), or one
    per (item, token) (``all``, ``random``; ``reply``: the target's own greedy reply, which needs the full
    target), each meta row keyed by item_id and token_index with its token text and role."""
    from nlalab.capture import capture
    from nlalab.settings import Position

    pos = Position.parse(cfg.positions)
    if pos.kind == "reply":
        from nlalab.capture_reply import capture_with_reply

        cap = capture_with_reply(tg.model, tg.tokenizer, [it.prompt for it in items], layer, positions="reply",
                                 reply_tokens=cfg.reply_tokens, ids=[it.id for it in items], progress=cfg.progress)
    else:
        cap = capture(tg.model, tg.tokenizer, [it.prompt for it in items], layer, ids=[it.id for it in items],
                      positions=pos.capture_arg(), seed=cfg.seed, batch_size=cfg.capture_batch_size,
                      progress=cfg.progress, tensor_parallel=forward_devices(cfg))
        if pos.one_per_item and [m["item_id"] for m in cap.meta] != [it.id for it in items]:
            raise NLALabError("Capture must give one vector per item at this position. Fix: use --position last.")
        if not pos.one_per_item:
            for m in cap.meta:
                m.setdefault("role", "prompt")
                if "token_text" not in m and m.get("token_id") is not None:
                    m["token_text"] = tg.tokenizer.decode([m["token_id"]])
    atomic_save_tensors(path, {"activations": cap.vectors},
                        {"meta": json.dumps(cap.meta, ensure_ascii=False), "hook": cap.hook_name})


def position_units(items, cap_meta: list[dict]) -> tuple[list, list[dict]]:
    """The study's units: the corpus items themselves (one activation each), or one unit per captured
    (item, token) — ``item@token_index`` — carrying the item's category and prompt, so every table,
    control and permutation works per position. Returns (units, per-unit extra fields for samples.jsonl)."""
    from nlalab.corpus import Item

    if [m["item_id"] for m in cap_meta] == [it.id for it in items]:
        return list(items), [{} for _ in items]
    by_id = {it.id: it for it in items}
    units, extra = [], []
    for m in cap_meta:
        it = by_id[m["item_id"]]
        units.append(Item(id=f"{it.id}@{m['token_index']}", category=it.category, prompt=it.prompt))
        extra.append({"source_item_id": it.id, "position": m["token_index"], "role": m.get("role", "prompt"),
                      "token_text": m.get("token_text")})
    return units, extra


def capture_prompts(tg, prompts: list[str], ids: list[str], layer: int, cfg, path: Path) -> None:
    """A control's extra prompts, captured like the corpus (same layer, same position)."""
    from nlalab.capture import capture
    from nlalab.settings import Position

    pos = Position.parse(cfg.positions)
    # one vector per prompt: the run's position where it gives one, else the last token (a contrast set's
    # mean direction is defined per prompt, not per token of a reply)
    arg = pos.capture_arg() if pos.one_per_item else "last"
    cap = capture(tg.model, tg.tokenizer, prompts, layer, ids=ids, positions=arg, seed=cfg.seed,
                  batch_size=cfg.capture_batch_size, progress=cfg.progress, tensor_parallel=forward_devices(cfg))
    atomic_save_tensors(path, {"activations": cap.vectors},
                        {"meta": json.dumps(cap.meta, ensure_ascii=False), "hook": cap.hook_name,
                         "prompts_sha256": digest(prompts)})


def extra_capture_current(path: Path, prompts: list[str]) -> bool:
    if not path.exists():
        return False
    try:
        return load_tensors(path)[1].get("prompts_sha256") == digest(prompts)
    except NLALabError:
        return False


def load_capture(path: Path) -> tuple[torch.Tensor, list[dict], dict]:
    tensors, meta = load_tensors(path, fix=FORCE_FIX.format(stage="capture")[5:])
    if "activations" not in tensors or "meta" not in meta:
        raise NLALabError(f"{path}: not a capture file of nlalab. " + FORCE_FIX.format(stage="capture"))
    return tensors["activations"], json.loads(meta["meta"]), meta


def run_plain(tg, template: str, job: PlainJob, k: int, gs: GenerationSettings, log: JsonlLog,
              on_rows: Optional[Callable[[int], None]] = None) -> None:
    """Target-model texts in the AV's format from ``job.prompts`` (no activation), appended per batch."""
    from nlalab.pairs.load import av_eos_ids
    from nlalab.pairs.markers import av_prompt_ids
    from nlalab.verbalize.plain import generate_texts

    prompts = [av_prompt_ids(tg.tokenizer, p, template) for p in job.prompts]
    generate_texts(tg.model, tg.tokenizer, prompts, av_eos_ids(tg.tokenizer, tg.model), k,
                   [job.key_base + i for i in range(len(prompts))], gs, skip=done_keys(log),
                   on_batch=lambda recs: (log.append([r.to_dict() for r in recs]), on_rows and on_rows(len(recs))))


@dataclass
class PlannedJob:
    """One AV job's rows still to generate: its vectors occupy ``offset .. offset + n`` of its group."""

    job: GenJob
    log: JsonlLog
    done: set
    k: int
    offset: int = 0

    @property
    def pending(self) -> int:
        return self.job.vectors.shape[0] * self.k - len(self.done)


def plan_verbalize(jobs: list[GenJob], stages: Path, k: int, merge: bool = True) -> list[list[PlannedJob]]:
    """Every pending AV job of a study, grouped so that each group runs as one ``verbalize`` call (one engine
    session, micro-batches as large as memory allows, across job boundaries). Consecutive jobs share a
    group when their vectors have the same dtype, device and width (concatenating them is then exact), and
    only if ``merge`` (the backend samples per row; else a row's tokens depend on its batch: one job each)."""
    groups: list[list[PlannedJob]] = []
    prev = None
    for job in jobs:
        log = job_log(stages, job.name)
        done = done_keys(log)
        if len(done) >= job.vectors.shape[0] * k:
            continue
        sig = (job.vectors.dtype, job.vectors.device, job.vectors.shape[1])
        if not groups or sig != prev or not merge:
            groups.append([])
        pj = PlannedJob(job=job, log=log, done=done, k=k)
        pj.offset = sum(g.job.vectors.shape[0] for g in groups[-1])
        groups[-1].append(pj)
        prev = sig
    return groups


def run_group(av, group: list[PlannedJob], k: int, gs: GenerationSettings, progress: bool,
              on_rows: Optional[Callable[[int], None]] = None) -> None:
    """One ``verbalize`` call for a group: each row keeps its job's stream (job seed, job key, sample), and
    records are appended to their job's log per micro-batch, in (vector, sample) order, as one call per job
    would (same bytes: tests/unit/test_plan.py)."""
    if len(group) == 1:  # one job: its own seed, integer keys (exactly the per-job call)
        pj = group[0]
        verbalize(av, pj.job.vectors, k=k, settings=replace(gs, seed=pj.job.seed),
                  vector_keys=[pj.job.key_base + i for i in range(pj.job.vectors.shape[0])], skip=pj.done,
                  on_batch=lambda recs: (pj.log.append([r.to_dict() for r in recs]), on_rows and on_rows(len(recs))),
                  progress=progress)
        return
    vectors = torch.cat([pj.job.vectors for pj in group], 0)
    keys, owner, skip = [], [], set()
    for gi, pj in enumerate(group):
        n = pj.job.vectors.shape[0]
        keys.extend((pj.job.seed, pj.job.key_base + i) for i in range(n))
        owner.extend([gi] * n)
        skip.update((pj.offset + i, s) for i, s in pj.done)

    def on_batch(recs) -> None:
        by_job: dict[int, list] = {}
        for r in recs:
            gi = owner[r.vector_index]
            d = r.to_dict()
            d["vector_index"] = r.vector_index - group[gi].offset
            by_job.setdefault(gi, []).append(d)
        for gi in sorted(by_job):
            group[gi].log.append(by_job[gi])
        if on_rows is not None:
            on_rows(len(recs))

    verbalize(av, vectors, k=k, settings=gs, vector_keys=keys, skip=skip, on_batch=on_batch, progress=progress)


def run_verbalize(av, jobs: list[GenJob], stages: Path, k: int, gs: GenerationSettings, progress: bool,
                  on_rows: Optional[Callable[[int], None]] = None) -> dict[str, list]:
    """Every pending AV job, planned up front (``plan_verbalize``) and run in as few engine sessions as the
    jobs allow; returns the devices each job ran on."""
    from nlalab.verbalize import backends, parallel
    from nlalab.verbalize.generate import resolve_engine

    merge = backends.capabilities(resolve_engine(gs.engine, av)).per_row_sampling
    devices = {}
    for group in plan_verbalize(jobs, stages, k, merge=merge):
        run_group(av, group, k, gs, progress, on_rows)
        for pj in group:
            devices[pj.job.name] = parallel.last_info()["devices"]
    return devices


def recon_current(path: Path, dig: str) -> bool:
    if not path.exists():
        return False
    try:
        return load_tensors(path)[1].get("explanations_sha256") == dig
    except NLALabError:
        return False  # a torn or corrupt stage file is recomputed


def save_recon(path: Path, rec: torch.Tensor, dig: str, mse_scale: float) -> None:
    atomic_save_tensors(path, {"reconstructions": rec}, {"explanations_sha256": dig, "mse_scale": repr(mse_scale)})


def load_recon(path: Path) -> tuple[torch.Tensor, float]:
    t, meta = load_tensors(path, fix=FORCE_FIX.format(stage="reconstruct")[5:])
    return t["reconstructions"], float(meta["mse_scale"])
