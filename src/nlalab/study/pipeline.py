"""`nlalab run`: the seed study as resumable stages over one run directory.

capture (target; target-model generation for controls such as blind) -> verbalize (AV: the corpus and
every control's vectors) -> reconstruct (AR: every job and every control text) -> score -> controls ->
files. Each model is loaded once, for its stage, and released before the next
(``nlalab.study.models.DiskModels``); ``models=Preloaded(...)`` runs the same study on models already in
memory. Controls are plug-ins (``nlalab.study.controls``): the pipeline asks each for its jobs and texts
and never names one. Generation rows are appended per batch; sampling is keyed per (vector, sample), so a
resumed run reproduces an uninterrupted one. One lock per run directory: a second run into it is refused.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import torch

from nlalab.corpus import categories as corpus_categories
from nlalab.corpus import corpus_digest, load_corpus
from nlalab.errors import NLALabError, UsageError
from nlalab.rundir.io import (atomic_save_tensors, atomic_write_json, atomic_write_text, clean_tmp,
                              dir_lock, jsonl_text, read_json, write_jsonl)
from nlalab.rundir.layout import SCHEMA_VERSION, RunLayout
from nlalab.rundir.provenance import environment
from nlalab.study import stages as ST
from nlalab.study import degenerate
from nlalab.study.config import RunConfig
from nlalab.study.identity import check_identity, corpus_record, record_started
from nlalab.study.controls import Control, GenJob, StudyContext, registry, selectable
from nlalab.study.models import ModelSource, Preloaded  # noqa: F401  (Preloaded: public API)
from nlalab.study.resolve import disk_models, offline_default_pair, resolve_run_pair  # noqa: F401  (public API)
from nlalab.verbalize import GenerationSettings

log = logging.getLogger(__name__)

STAGES = ("capture", "verbalize", "reconstruct", "controls")


def selected_controls(cfg: RunConfig) -> list[Control]:
    """The controls ``cfg`` asks for (always-on ones included), in registry order."""
    reg = registry()
    bad = [c for c in cfg.controls if c not in reg or reg[c].always]
    if bad:
        raise UsageError(f"Unknown control(s) {bad}; available: {', '.join(selectable())} (or none).")
    return [c for n, c in reg.items() if c.always or n in cfg.controls]


def _force(layout: RunLayout, stages: list[str]) -> None:
    """Delete a stage's outputs and everything downstream of it."""
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise UsageError(f"Unknown stage(s) {bad} for --force; stages are {', '.join(STAGES)}.")
    if not stages:
        return
    first = min(STAGES.index(s) for s in stages)
    st = layout.stages
    files = {"capture": [st / ST.CAPTURE], "verbalize": [st / ST.CORPUS_LOG],
             "reconstruct": [st / ST.CORPUS_RECON, st / ST.EXTRAS_RECON], "controls": list(st.glob("control_*"))}
    for s in STAGES[first:]:
        for f in files.get(s, []):
            f.unlink(missing_ok=True)


def _carry_scorers(layout: RunLayout, samples: list[dict]) -> dict:
    """Keep `nlalab score` sections of a previous results.json whose samples are unchanged."""
    if not (layout.results.exists() and layout.samples.exists()):
        return {}
    try:
        old = read_json(layout.results).get("scorers") or {}
    except NLALabError:
        return {}
    if jsonl_text(samples).encode() != layout.samples.read_bytes():
        return {}  # the explanations changed: those scores are stale, rerun `nlalab score`
    return old


def _select_items(cfg: RunConfig) -> list:
    items = load_corpus(cfg.corpus)
    if cfg.limit_per_category:
        seen: dict[str, int] = {}
        kept = []
        for it in items:
            if seen.get(it.category, 0) < cfg.limit_per_category:
                kept.append(it)
                seen[it.category] = seen.get(it.category, 0) + 1
        items = kept
    return items


def _score_corpus(ctx: StudyContext, cap_meta: list[dict], unit_extra: list[dict]) -> list[dict]:
    from nlalab.scorers.keyword import keyword_hit, keyword_recall

    samples = []
    for r in ctx.scored_rows("corpus", ctx.acts):
        it = ctx.items[r["vector_index"]]
        rec = {"item_id": it.id, "category": it.category, "prompt": it.prompt, **r,
               "token_index": cap_meta[r["vector_index"]]["token_index"], "act_norm": cap_meta[r["vector_index"]]["norm"]}
        rec["recall"] = keyword_recall(it.prompt, r["explanation"])
        rec["hit"] = keyword_hit(it.prompt, r["explanation"])
        rec["n_words"] = len(r["explanation"].split())
        rec.update(unit_extra[r["vector_index"]])
        samples.append(rec)
    return samples


def _b_rv(cfg: RunConfig, acts: torch.Tensor, mse_scale: float, provenance: dict):
    """The B_rv choice (``--brv``; a registered pair's training-set constant by default), with the run's own."""
    from nlalab.pairs.registry import find_pair
    from nlalab.study.brv import resolve_brv

    choice = cfg.brv if cfg.brv is not None else cfg.brv_reference
    entry = (find_pair(cfg.pair) if cfg.pair else None) or provenance.get("name")  # shipped pairs by name
    return resolve_brv(choice, entry, acts, mse_scale)


def _headline_analysis(samples: list[dict], cats: list[str], b_rv: float, b_rv_source: str, cfg: RunConfig) -> dict:
    """The core tables over the headline rows: explanations without a closing tag, truncated or empty leave
    them (the release's policy) unless ``score_incomplete``; the all-rows table and the excluded share per
    category are reported beside. The controls read every row."""
    from nlalab.study.analysis import analyze
    from nlalab.study.incomplete import excluded_share, headline_mask

    mask = headline_mask(samples, cfg.score_incomplete)
    for row, keep in zip(samples, mask):
        row["headline"] = bool(keep)
    head = [r for r, keep in zip(samples, mask) if keep]
    kw = dict(categories=cats, b_rv=b_rv, b_rv_source=b_rv_source, n_perm=cfg.n_perm, n_boot=cfg.n_boot, seed=cfg.seed)
    results = analyze(head or samples, **kw)
    if len(head) < len(samples):  # failure flags describe every row, the excluded ones above all
        from nlalab.study.analysis import flag_counts

        results["flags"] = flag_counts(samples)
    share = excluded_share(samples, cats)
    results["incomplete"] = {
        "policy": ("every row counts (--score-incomplete)" if cfg.score_incomplete else
                   "rows without a closing tag, truncated or empty leave the headline tables (as the release "
                   "measures); the controls read every row"),
        "score_incomplete": bool(cfg.score_incomplete), "fallback_to_all_rows": not head,
        "n_headline": len(head) if head else len(samples), "n_all": len(samples), "per_category": share}
    if not head:
        results["warnings"].append(f"no explanation of the {len(samples)} is complete (closing tag, not truncated, "
                                   "not empty): the headline tables use every row. Fix: raise --max-new-tokens, or "
                                   "check the AV's output format.")
    elif len(head) < len(samples):
        results["per_category_all_rows"] = analyze(samples, **kw)["per_category"]
    return results


def _by_role(samples: list[dict], cats: list[str], b_rv: float, b_rv_source: str, cfg: RunConfig) -> dict:
    """Per position role (prompt / reply tokens): the per-category table of that role's rows."""
    out = {}
    for role in sorted({r.get("role") for r in samples if r.get("role")}):
        rows = [r for r in samples if r.get("role") == role]
        rcats = [c for c in cats if any(r["category"] == c for r in rows)]
        out[role] = _headline_analysis([dict(r) for r in rows], rcats, b_rv, b_rv_source, cfg)["per_category"]
    return out


def run_study(cfg: RunConfig, overwrite: bool = False, on_stage: Optional[Callable[[str], None]] = None,
              models: Optional[ModelSource] = None, progress=None) -> dict:
    """The whole study into ``cfg.out``. ``models``: where the target, AV and AR come from (default: the
    pair named by ``cfg``, loaded from disk stage by stage); the pair fields of ``cfg`` are then unused.
    ``progress``: a reporter with ``stage(name, total)`` and ``advance(n)`` (``nlalab.progress.Progress``):
    per-stage counts, elapsed time and ETA; it replaces the per-call bars of ``cfg.progress``."""
    layout = RunLayout(cfg.out)
    controls = selected_controls(cfg)
    if progress is not None:
        cfg = cfg.model_copy(update={"progress": False})
    with dir_lock(layout.root, wait=0, what="nlalab run"):
        clean_tmp(layout.root)
        return _run(cfg, layout, controls, overwrite, on_stage, models, progress)


def _run(cfg: RunConfig, layout: RunLayout, controls: list[Control], overwrite: bool,
         on_stage: Optional[Callable[[str], None]], models: Optional[ModelSource], progress=None) -> dict:
    t0 = time.time()
    items = _select_items(cfg)
    check_identity(layout.root, {"identity": cfg.identity()}, items, overwrite)
    if overwrite:
        _force(layout, ["capture"])
    _force(layout, list(cfg.force))
    cats = corpus_categories(items)
    if models is None:
        models = disk_models(cfg)
    layer = models.layer
    provenance = models.provenance()
    # --batch-size caps every engine's micro-batches; unset, each engine keeps its own default
    sizes = {"batch_size": cfg.batch_size, "fast_batch_size": cfg.batch_size} if cfg.batch_size else {}
    gs = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            greedy=cfg.greedy, seed=cfg.seed, engine=cfg.engine, devices=cfg.verbalize_devices,
                            **sizes)
    record = {"schema_version": SCHEMA_VERSION, "identity": cfg.identity(), "config": cfg.model_dump(),
              "pair": provenance,
              "corpus": {"ref": cfg.corpus, "n_items": len(items), "categories": cats, "sha256": corpus_digest(items),
                         **corpus_record(items)},
              "controls": [c.name for c in controls],
              "environment": environment(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record_started(layout.root, record)  # binds a rerun only once a stage has written output
    stages = layout.stages
    timings: dict[str, float] = {}
    last: list = [time.time(), None]

    def note(stage: str, total: Optional[int] = None) -> None:
        """Record how long the previous stage took (results.json: timings_s) and announce the next."""
        now = time.time()
        if last[1] is not None:
            timings[last[1]] = round(timings.get(last[1], 0.0) + now - last[0], 2)
        last[0], last[1] = now, stage
        if on_stage is not None:
            on_stage(stage)
        if progress is not None:
            progress.on_stage(stage, total)

    def advance(n: int) -> None:
        if progress is not None:
            progress.advance(n)

    k = cfg.k
    ctx = StudyContext(cfg=cfg, items=items, categories=cats, acts=None)

    # ---- capture, and target-model generation (needs the full target) ----------------------------
    cap_path = stages / ST.CAPTURE
    plain_jobs = [j for c in controls for j in c.plain(ctx)]
    plain_todo = [j for j in plain_jobs if len(ST.done_keys(ST.job_log(stages, j.name))) < len(j.prompts) * k]
    extra = {c.name: pr for c in controls if (pr := c.prompts(ctx))}
    extra_path = {n: stages / f"control_{n}_capture.safetensors" for n in extra}
    extra_todo = [n for n in extra if not ST.extra_capture_current(extra_path[n], extra[n])]
    full_target = bool(plain_todo) or (not cap_path.exists() and str(cfg.positions) == "reply")
    if not cap_path.exists() or plain_todo or extra_todo:
        note("capture", (0 if cap_path.exists() else len(items)) + sum(len(extra[n]) for n in extra_todo))
        tg = models.target(truncate=not full_target)
        if not cap_path.exists():
            ST.capture_activations(tg, items, layer, cfg, cap_path)
            advance(len(items))
        for n in extra_todo:
            ST.capture_prompts(tg, extra[n], [f"{n}/{i}" for i in range(len(extra[n]))], layer, cfg, extra_path[n])
            advance(len(extra[n]))
        for job in plain_todo:
            log_j = ST.job_log(stages, job.name)
            note(f"{job.name} explanations", len(job.prompts) * k - len(ST.done_keys(log_j)))
            ST.run_plain(tg, models.av_template(), job, k, gs, log_j, on_rows=advance)
        models.release(tg)
        del tg
    acts, cap_meta, cmeta = ST.load_capture(cap_path)
    # several positions per item: every (item, token) is a unit of the study, keyed item@token_index
    units, unit_extra = ST.position_units(items, cap_meta)
    if len(units) != len(items):
        items = ctx.items = units
        cats = ctx.categories = corpus_categories(units)
    ctx.acts = acts
    for n in extra:
        ctx.extra_acts[n] = ST.load_capture(extra_path[n])[0]
    for job in plain_jobs:
        ctx.plain_rows[job.name] = ST.sorted_rows(ST.job_log(stages, job.name), len(job.prompts), k)

    # ---- verbalize (AV loaded once for every job) ------------------------------------------------
    jobs = [GenJob("corpus", acts, cfg.seed, 0)] + [j for c in controls for j in c.generation(ctx)]
    for job in jobs:
        ctx.vectors[job.name] = job.vectors
    verbalize_devices: dict[str, list] = {}
    todo = sum(max(0, j.vectors.shape[0] * k - len(ST.done_keys(ST.job_log(stages, j.name)))) for j in jobs)
    if todo:
        note("verbalize", todo)
        av = models.av()
        verbalize_devices = ST.run_verbalize(av, jobs, stages, k, gs, cfg.progress, on_rows=advance)
        models.release(av)
        del av
    for job in jobs:
        ctx.gen_rows[job.name] = ST.sorted_rows(ST.job_log(stages, job.name), job.vectors.shape[0], k)

    # ---- reconstruct (AR loaded once for every job and every control text) ----------------------
    texts = {c.name: c.texts(ctx) for c in controls}
    all_texts = [t for c in controls for t in texts[c.name]]
    extras_path = stages / ST.EXTRAS_RECON
    extras_dig = ST.digest(all_texts)
    need = [(j, d) for j in jobs if not ST.recon_current(ST.job_recon_path(stages, j.name),
                                                             d := ST.digest([r["explanation"] for r in ctx.gen_rows[j.name]]))]
    need_extras = bool(all_texts) and not ST.recon_current(extras_path, extras_dig)
    ar_forward: list[str] = []  # how each AR call of this invocation ran (provenance)
    if need or need_extras:
        note("reconstruct", sum(len(ctx.gen_rows[j.name]) for j, _ in need) + (len(all_texts) if need_extras else 0))
        from nlalab.reconstruct import reconstruct

        ar = models.ar()

        def recon(texts: list[str]):
            info: dict = {}
            rec = reconstruct(ar, texts, batch_size=cfg.ar_batch_size, progress=cfg.progress,
                              tensor_parallel=ST.forward_devices(cfg), share_prefix=cfg.ar_share_prefix, info=info)
            ar_forward.append(info["forward"])
            return rec

        for job, dig in need:
            rec = recon([r["explanation"] for r in ctx.gen_rows[job.name]])
            ST.save_recon(ST.job_recon_path(stages, job.name), rec, dig, ar.mse_scale)
            advance(rec.shape[0])
        if need_extras:
            rec = recon(all_texts)
            ST.save_recon(extras_path, rec, extras_dig, ar.mse_scale)
            advance(rec.shape[0])
        models.release(ar)
        del ar
    for job in jobs:
        ctx.recons[job.name], ctx.mse_scale = ST.load_recon(ST.job_recon_path(stages, job.name))
    if all_texts:
        extra_rec, _ = ST.load_recon(extras_path)
        off = 0
        for c in controls:
            ctx.text_recons[c.name] = extra_rec[off:off + len(texts[c.name])]
            off += len(texts[c.name])

    # ---- score and controls ---------------------------------------------------------------------
    note("score")
    from nlalab.rowstats import clean as _clean
    from nlalab.study.report import print_summary, render_report

    brv_choice = _b_rv(cfg, acts, ctx.mse_scale, provenance)
    b_rv, b_rv_source = brv_choice.value, brv_choice.source
    # a B_rv too small to divide by (identical activations) makes every fve_nrm n/a, never a huge number
    ctx.b_rv = degenerate.usable_brv(b_rv, ctx.mse_scale, acts.shape[1])
    ctx.center = acts.mean(0)
    samples = ctx.samples = _score_corpus(ctx, cap_meta, unit_extra)
    results = _headline_analysis(samples, cats, b_rv, b_rv_source, cfg)
    if unit_extra and unit_extra[0]:
        results["by_role"] = _by_role(samples, cats, b_rv, b_rv_source, cfg)
    degenerate.merge_warnings(results, degenerate.scan(
        acts, items, position=cfg.positions, b_rv=b_rv, mse_scale=ctx.mse_scale, brv_source=b_rv_source,
        n_tokens={m["item_id"]: m.get("n_tokens") for m in cap_meta if m.get("n_tokens") is not None},
        context=models.context_length() if hasattr(models, "context_length") else None))
    results = {"schema_version": SCHEMA_VERSION, **results, "mse_scale": ctx.mse_scale,
               "capture": {"layer": layer, "hook": cmeta.get("hook"), "positions": cfg.positions},
               "brv": brv_choice.to_dict(),
               "controls": {n: None for n in registry()}}
    ctx.results = results
    control_rows: dict[str, list[dict]] = {}
    for c in controls:
        note(f"control {c.name}")
        results["controls"][c.name] = _clean(c.analyze(ctx))
        rows = c.rows(ctx) if c.writes_rows else None
        if rows is not None:
            control_rows[c.name] = rows
        sec = results["controls"][c.name]
        if isinstance(sec, dict):
            results["warnings"] += [w for w in c.warnings(sec) if w not in results["warnings"]]
    if ctx.b_rv is None:  # degenerate B_rv: every fve_nrm is undefined, shown as n/a
        results = degenerate.without_fve_nrm(results)
        samples = degenerate.without_fve_nrm(samples)
        control_rows = degenerate.without_fve_nrm(control_rows)
    results["provenance"] = {k: record[k] for k in ("config", "pair", "corpus", "environment")}
    if getattr(models, "ar_dtype_reason", None):
        results["provenance"]["ar_dtype"] = models.ar_dtype_reason
    if ar_forward:
        results["provenance"]["ar_forward"] = "; ".join(dict.fromkeys(ar_forward))
    note("done")
    results["timings_s_this_invocation"] = timings
    if verbalize_devices:
        results["verbalize_devices_this_invocation"] = verbalize_devices
    results["elapsed_s_this_invocation"] = round(time.time() - t0, 2)

    # ---- files ----------------------------------------------------------------------------------
    old_scorers = _carry_scorers(layout, samples)
    if old_scorers:
        results["scorers"] = old_scorers
    write_jsonl(layout.samples, samples)
    for name, rows in control_rows.items():
        write_jsonl(layout.control_rows(name), rows)
    vec = {"activations": acts, "reconstructions": ctx.recons["corpus"]}
    for job in jobs[1:]:
        if not job.name.startswith("seed"):  # seed jobs re-verbalize the activations: no vectors of their own
            vec[f"{job.name}_vectors"] = job.vectors
        vec[f"{job.name}_reconstructions"] = ctx.recons[job.name]
    atomic_save_tensors(layout.vectors, vec, {"activations_rows": "corpus items in samples.jsonl order of item_id",
                                              "reconstructions_rows": "samples.jsonl rows",
                                              "hook": cmeta.get("hook", ""), "schema_version": str(SCHEMA_VERSION)})
    atomic_write_json(layout.results, results)
    meta = {"pair": provenance.get("name") or str((provenance.get("av") or {}).get("path")), "layer": layer,
            "corpus": cfg.corpus, "config": cfg.model_dump()}
    atomic_write_text(layout.report_md, render_report(results, meta))
    results["_summary"] = print_summary(results)
    return results


__all__ = ["run_study", "selected_controls", "STAGES", "offline_default_pair", "resolve_run_pair", "disk_models",
           "Preloaded"]
