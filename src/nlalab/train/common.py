"""Shared training machinery: devices and autocast, LoRA, batches, optimizers, checkpoints, curves, loss."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from nlalab.errors import NLALabError


class LoraSettings(BaseModel):
    """LoRA on every linear layer of the decoder (peft ``all-linear``; the AV's lm_head is left out)."""

    enabled: bool = False
    r: int = 32
    alpha: int = 64
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


class OptimSettings(BaseModel):
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (fp32 master weights), nothing on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def apply_lora(model: nn.Module, settings: LoraSettings):
    """Inject LoRA layers into ``model`` in place; returns the peft handle (to save or merge adapters).

    The caller keeps using ``model`` itself (its linears now carry the adapters): that keeps every
    nlalab function that takes a transformers model working unchanged.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:  # pragma: no cover - depends on the environment
        raise NLALabError("LoRA needs peft. Fix: pip install 'nlalab[train]' (or pip install peft).") from None
    cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                     target_modules=settings.target_modules, bias="none")
    pm = get_peft_model(model, cfg)
    return pm


def merged_copy(model: nn.Module, peft_handle) -> nn.Module:
    """A plain transformers model with the adapters merged (the training model is left untouched)."""
    import copy

    if peft_handle is None:
        return model
    pm = copy.deepcopy(peft_handle)
    return pm.merge_and_unload()


def trainable_named(modules: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    out = {}
    for prefix, mod in modules.items():
        for n, p in mod.named_parameters():
            if p.requires_grad:
                out[f"{prefix}.{n}"] = p
    return out


def count_params(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def make_optimizer(params: list[nn.Parameter], s: OptimSettings) -> torch.optim.Optimizer:
    if not params:
        raise NLALabError("No trainable parameters.")
    return torch.optim.AdamW(params, lr=s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay)


def set_lr(opt: torch.optim.Optimizer, s: OptimSettings, step: int) -> float:
    """Linear warmup then constant (kitft forces a constant LR)."""
    lr = s.lr * min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps > 0 else s.lr
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def clip_and_step(opt: torch.optim.Optimizer, params: list[nn.Parameter], clip: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip and clip > 0 else float("inf"))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


def batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """Rows of batch ``step`` from an endless stream of seeded per-epoch permutations.

    A pure function of (n, batch, step, seed), so a resumed run sees exactly the batches it would
    have seen without the interruption.
    """
    if n <= 0:
        raise NLALabError("batch_indices: no rows to sample from.")
    out: list[int] = []
    start = step * batch
    while len(out) < batch:
        epoch, off = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(batch - len(out), n - off)
        out.extend(int(i) for i in perm[off:off + take])
    return out


class KindSampler:
    """Seeded batches with a fixed share of one kind of row (chat last tokens) in every batch.

    Why: the study captures at the chat template's last token, but those rows are a few percent of a
    training split (one per prompt against up to 8 per document), so a pair trained on the natural mix
    sees them rarely. Each stratum draws from its own endless seeded permutation stream and the batch is
    shuffled with a (seed, step) generator, so batches stay a pure function of (step, seed) and resume
    exactly. ``round(batch * share)`` rows per batch come from the kind.
    """

    def __init__(self, kinds: Sequence[str], kind: str, share: float, seed: int):
        if not 0.0 <= share <= 1.0:
            raise NLALabError(f"share of {kind!r} rows must be in [0, 1]; got {share}.")
        self.kind, self.share, self.seed = kind, float(share), int(seed)
        self.strata = ([i for i, k in enumerate(kinds) if k == kind], [i for i, k in enumerate(kinds) if k != kind])
        if share > 0 and not self.strata[0]:
            raise NLALabError(f"a share of {share} {kind!r} rows was asked for, but the split has none; "
                              f"set the stage's chat_fraction to null (natural mix) or add prompts to the corpus.")
        if share < 1 and not self.strata[1]:
            raise NLALabError(f"a share of {share} {kind!r} rows leaves {1 - share:.2f} for other rows, but the "
                              f"split has only {kind!r} rows; set chat_fraction to 1 or null.")

    def counts(self, batch: int) -> tuple[int, int]:
        n_kind = int(round(batch * self.share))
        return n_kind, batch - n_kind

    def __call__(self, batch: int, step: int) -> list[int]:
        out: list[int] = []
        for s, (rows, n) in enumerate(zip(self.strata, self.counts(batch))):
            if n:
                out.extend(rows[i] for i in batch_indices(len(rows), n, step, self.seed * 1_000_003 + 17 * (s + 1)))
        perm = np.random.default_rng([self.seed, step, 7]).permutation(len(out))
        return [out[i] for i in perm]


def batch_sampler(n_rows: int, kinds: Optional[Sequence[str]], chat_fraction: Optional[float],
                  seed: int) -> Callable[[int, int], list[int]]:
    """A stage's ``(batch, step) -> row indices``: :class:`KindSampler` when a chat share is set (and the
    rows' kinds are known), else the natural mix of :func:`batch_indices`."""
    if chat_fraction is None or kinds is None:
        return lambda batch, step: batch_indices(n_rows, batch, step, seed)
    return KindSampler(kinds, "chat_last", chat_fraction, seed)


# The batch-mix setting of every stage (SFT and RL), bounds checked where the config is read.
ChatFraction = Annotated[Optional[float], Field(
    ge=0.0, le=1.0, description="share of chat-last-token rows in every batch (RL: of every step's prompts); "
                                "null = the split's natural mix")]


def mse_nrm_per_sample(pred: torch.Tensor, gold: torch.Tensor, scale: float) -> torch.Tensor:
    """kitft's AR loss / reward: ``mean_d (n(pred) - n(gold))^2`` with ``n(x) = x * s / ||x||`` (fp32)."""
    p = pred.float()
    g = gold.float().to(p.device)
    np_ = p * (scale / p.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    ng = g * (scale / g.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return (np_ - ng).pow(2).mean(-1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------ checkpoints


class Checkpointer:
    """``{dir}/ckpt.pt``: trainable tensors, optimizer states, step, curves length; written atomically."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.path = self.dir / "ckpt.pt"

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, step: int, params: dict[str, nn.Parameter], optimizers: dict[str, torch.optim.Optimizer],
             extra: Optional[dict] = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "step": step,
            "params": {k: v.detach().cpu().clone() for k, v in params.items()},
            "optim": {k: o.state_dict() for k, o in optimizers.items()},
            "extra": extra or {},
            "saved_at": time.time(),
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self, params: dict[str, nn.Parameter], optimizers: dict[str, torch.optim.Optimizer]) -> tuple[int, dict]:
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        missing = set(params) - set(state["params"])
        if missing:
            raise NLALabError(f"{self.path}: checkpoint lacks {sorted(missing)[:3]}; it belongs to another setup. "
                              "Fix: delete it or use another output dir.")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state["params"][k].to(p.device, p.dtype))
        for k, o in optimizers.items():
            if k in state["optim"]:
                o.load_state_dict(state["optim"][k])
        return int(state["step"]), state.get("extra", {})


# ---------------------------------------------------------------------------------------- curves


class CurveLog:
    """One JSON object per logged step in ``{dir}/curves.jsonl``; resuming drops rows past the resume step.

    When the ``tensorboard`` package is installed (``nlalab[train]``) every numeric value is also written as a
    TensorBoard scalar ``<stage dir>/<key>`` under ``{dir}/tensorboard`` (``tensorboard --logdir OUT``);
    ``NLALAB_TENSORBOARD=0`` turns that off. The JSONL stays the record that plots and resumes read."""

    def __init__(self, path: Path, tensorboard: Optional[bool] = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tensorboard = (os.environ.get("NLALAB_TENSORBOARD", "1") != "0") if tensorboard is None else tensorboard
        self._tb = None
        self._purge: Optional[int] = None

    @property
    def tb_dir(self) -> Path:
        return self.path.parent / "tensorboard"

    def _writer(self):
        """The SummaryWriter, opened on first use (None without the tensorboard package)."""
        if self._tb is None and self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the optional extra is not installed: JSONL only
                self.tensorboard = False
                return None
            self._tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=self._purge)
        return self._tb

    def rows(self) -> list[dict]:
        from nlalab.rundir.io import read_jsonl

        return read_jsonl(self.path, repair=True, missing_ok=True)

    def truncate(self, step: int) -> None:
        """Keep the rows of steps 1..``step`` (what the checkpoint at ``step`` has done) and step-0 evals."""
        keep = [r for r in self.rows() if r.get("step", -1) <= step] if step > 0 else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        # TensorBoard drops the events a resumed run will log again (purge_step: steps >= it are discarded)
        self._purge = step + 1 if step > 0 else 0
        self.close()

    def log(self, row: dict) -> None:
        clean = {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        tb = self._writer()
        if tb is not None and isinstance(clean.get("step"), int):
            stage = self.path.parent.name
            for k, v in clean.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    tb.add_scalar(f"{stage}/{k}", v, clean["step"])
            tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_curves(out_dir: Path, stages: dict[str, Path], png: Optional[Path] = None) -> Optional[Path]:
    """All stage curves in one PNG (matplotlib, Agg) plus ``curves.json``; None if matplotlib is missing."""
    data = {name: CurveLog(p).rows() for name, p in stages.items() if Path(p).is_file()}
    out_dir = Path(out_dir)
    (out_dir / "curves.json").write_text(json.dumps(data, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    panels = [
        ("ar_sft", ["loss", "eval_mse_nrm"], "AR SFT: mse_nrm (train, held-out)"),
        ("ar_sft", ["fve_nrm", "eval_fve_nrm"], "AR SFT: fve_nrm"),
        ("av_sft", ["loss", "eval_ce_real", "eval_ce_shuffled"], "AV SFT: cross-entropy"),
        ("av_sft", ["eval_gap"], "AV SFT: shuffled - real CE gap"),
        ("rl", ["reward", "reward_valid"], "RL: reward"),
        ("rl", ["fve_nrm", "fve_nrm_valid", "eval_fve_nrm", "eval_fve_nrm_chat"], "RL: fve_nrm"),
        ("rl", ["response_len", "fail_frac"], "RL: response length / failures"),
        ("rl", ["kl_ref", "ar_loss", "clipfrac"], "RL: KL to SFT, AR loss, clip fraction"),
        ("rl", ["eval_recall_chat", "eval_hit_chat"], "RL: held-out chat keyword recall / hit"),
    ]
    panels = [p for p in panels if p[0] in data and data[p[0]]]
    if not panels:
        return None
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.2 * rows), squeeze=False)
    for ax, (stage, keys, title) in zip(axes.flat, panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in data[stage] if r.get(k) is not None and isinstance(r.get(k), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="." if len(pts) < 30 else None, label=k)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    png = png or out_dir / "curves.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


@contextlib.contextmanager
def timer(store: dict, key: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - t


@dataclass
class StageResult:
    """What a stage hands on: its output dir, final step and last logged metrics."""

    out_dir: Path
    steps: int
    metrics: dict[str, Any]


class SFTSettings(BaseModel):
    """What both supervised stages share (each stage sets its own defaults)."""

    steps: int = 300
    batch_size: int = 64
    micro_batch_size: int = 64
    optim: OptimSettings = Field(default_factory=lambda: OptimSettings(lr=3e-5, warmup_steps=10))
    eval_every: int = 50
    eval_size: int = 256
    ckpt_every: int = 100
    log_every: int = 1
    seed: int = 42
    chat_fraction: ChatFraction = None


def run_sft(stage: str, opt_key: str, modules: dict[str, nn.Module], n_rows: int, settings: SFTSettings,
            out_dir: str | Path, step_loss: Callable[[Sequence[int], int], dict],
            evaluate: Optional[Callable[[], dict]] = None, resume: bool = True, on_log=None,
            kinds: Optional[Sequence[str]] = None) -> StageResult:
    """The loop of both SFT stages: optimizer, LR schedule, seeded batches, checkpoints and resume, curves.

    ``step_loss(batch_indices, micro_batch)`` runs one batch's forward and backward passes and returns its
    logged metrics (``loss`` first); ``evaluate()`` the held-out metrics, at step 0, every ``eval_every``
    steps and at the end. Optimizer state is checkpointed under ``opt_key``. ``kinds`` (one per row) with
    ``settings.chat_fraction`` fixes the share of chat-last-token rows per batch (:class:`KindSampler`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = trainable_named(modules)
    plist = list(params.values())
    opt = make_optimizer(plist, settings.optim)
    ck = Checkpointer(out / "ckpt")
    curves = CurveLog(out / "curves.jsonl")
    start = 0
    if resume and ck.exists():
        start, _ = ck.load(params, {opt_key: opt})
    curves.truncate(start)
    if start == 0 and evaluate is not None:
        curves.log({"step": 0, **evaluate()})
    last: dict = {}
    mb = max(1, min(settings.micro_batch_size, settings.batch_size))
    sample = batch_sampler(n_rows, kinds, settings.chat_fraction, settings.seed)
    for step in range(start, settings.steps):
        t0 = time.perf_counter()
        lr = set_lr(opt, settings.optim, step)
        metrics = step_loss(sample(settings.batch_size, step), mb)
        grad_norm = clip_and_step(opt, plist, settings.optim.grad_clip)
        row = {"step": step + 1, **metrics, "lr": lr, "grad_norm": grad_norm, "time_s": time.perf_counter() - t0}
        evaluated = evaluate is not None and ((step + 1) % settings.eval_every == 0 or step + 1 == settings.steps)
        if evaluated:
            row.update(evaluate())
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps or evaluated:
            curves.log(row)
            if on_log:
                on_log(stage, row)
        last = row
        if settings.ckpt_every and (step + 1) % settings.ckpt_every == 0 and step + 1 < settings.steps:
            ck.save(step + 1, params, {opt_key: opt})
    if settings.steps > start:
        ck.save(settings.steps, params, {opt_key: opt})
    return StageResult(out_dir=out, steps=settings.steps, metrics=last)
