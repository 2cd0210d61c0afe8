"""Interval checkpoints of the RL stage (issue 19's training trace) and the held-out checkpoint selection.

Every ``rl.checkpoint_every`` RL steps, and at the last step, the *live* pair (the policy AV and the
co-trained AR as they are after that step's updates) is written to ``checkpoints/rl_step_{step:06d}/``:

    av/  ar/          release-layout pair (the writer ``export`` uses for ``pair/``, same ``export_dtype``)
    adapter_pack/     LoRA runs: the same pack format as the final ``adapter_pack/``
    checkpoint.json   stage, step, the held-out eval metrics at that step; written last (completion marker)

Why this shape: ``nlalab sweep`` expands ``checkpoints/<name>/{av,ar}`` into its ``checkpoint`` axis
(``nlalab.sweep.grid.expand_checkpoints``), so a training run becomes a training trace with no copying.
The SFT pair (RL step 0) is not duplicated: the sweep already has it as ``sft``.

Atomic and resumable: a checkpoint is built in ``checkpoints/.tmp/<name>`` and renamed into place; a
folder without ``checkpoint.json`` is incomplete and redone; a complete one is never rewritten.

Selection (``rl.select``): ``last`` exports the final pair; ``best`` exports the checkpoint chosen by
:func:`select_checkpoint`, which reads only the held-out (eval-split) metrics stored in ``checkpoint.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

CHECKPOINTS = "checkpoints"
MARKER = "checkpoint.json"
PAIR_RECORD = "checkpoint.json"  # in pair/: which checkpoint the exported pair is (for traces)
TMP = ".tmp"

# The held-out metrics the selection reads (eval split, chat-last-token rows: the study's position).
HIT = "eval_hit_chat"
FVE = "eval_fve_nrm_chat"
EVAL_KEYS = ("eval_fve_nrm", "eval_fve_nrm_chat", "eval_recall_chat", "eval_hit_chat", "eval_n_chat",
             "eval_keyword_n_chat")
TRAIN_KEYS = ("reward", "fve_nrm", "fail_frac", "kl_ref", "ar_loss")
BEST_RULE = ("highest held-out chat keyword hit rate among checkpoints with held-out chat fve_nrm > 0 "
             "(ties: higher held-out chat fve_nrm, then the later step); if none has fve_nrm > 0, the highest "
             "held-out chat fve_nrm")
LAST_RULE = "the last RL step"


def checkpoint_name(step: int) -> str:
    return f"rl_step_{int(step):06d}"


def is_due(step: int, every: int, steps: int) -> bool:
    """Every ``every`` RL steps and at the last step (never step 0: that is the SFT pair)."""
    return bool(every) and step > 0 and (step % every == 0 or step == steps)


def is_complete(d: Path) -> bool:
    return (Path(d) / MARKER).is_file() and (Path(d) / "av").is_dir() and (Path(d) / "ar").is_dir()


class IntervalCheckpoints:
    """The RL stage's interval checkpoints; ``write_pair(folder, step)`` exports the live pair into a folder.

    The GRPO trainer asks :meth:`due` after each step, and calls :meth:`write` (a no-op for a complete
    checkpoint, so a resumed run that replays steps does not rewrite it)."""

    def __init__(self, root: Path, every: int, steps: int, write_pair: Callable[[Path, int], None]):
        self.root, self.every, self.steps, self.write_pair = Path(root), int(every), int(steps), write_pair

    def due(self, step: int) -> bool:
        return is_due(step, self.every, self.steps)

    def path(self, step: int) -> Path:
        return self.root / checkpoint_name(step)

    def done(self, step: int) -> bool:
        return is_complete(self.path(step))

    def write(self, step: int, row: Optional[dict] = None) -> bool:
        """Write checkpoint ``step`` unless it is complete; returns whether it wrote."""
        if self.done(step):
            return False
        final = self.path(step)
        tmp = self.root / TMP / final.name
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.write_pair(tmp, step)
        row = row or {}
        record = {"stage": "rl", "step": int(step), "name": final.name, "eval_split": "eval",
                  "eval": {k: row.get(k) for k in EVAL_KEYS if k in row},
                  "train": {k: row.get(k) for k in TRAIN_KEYS if k in row}}
        (tmp / MARKER).write_text(json.dumps(record, indent=2, default=str))
        if final.exists():  # an incomplete leftover (no marker): redo it
            shutil.rmtree(final)
        os.replace(tmp, final)
        return True

    def records(self) -> list[dict]:
        return read_checkpoints(self.root.parent)


def read_checkpoints(train_dir: Path) -> list[dict]:
    """The complete checkpoints' records (``checkpoint.json``), by step."""
    root = Path(train_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if not d.name.startswith(".") and is_complete(d):
            rec = json.loads((d / MARKER).read_text())
            rec.setdefault("name", d.name)
            out.append(rec)
    return sorted(out, key=lambda r: int(r.get("step", 0)))


def _num(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def select_checkpoint(records: Sequence[dict], select: str = "best") -> tuple[Optional[dict], str]:
    """(the chosen checkpoint record, the rule applied) among ``records`` (from ``checkpoint.json``).

    Reads only ``record["eval"]``: the held-out eval-split metrics (``eval_hit_chat``, ``eval_fve_nrm_chat``),
    never training-batch figures, so the choice does not reward overfitting the RL batches."""
    recs = sorted(records, key=lambda r: int(r.get("step", 0)))
    if not recs:
        return None, "no checkpoints"
    if select == "last":
        return recs[-1], LAST_RULE

    def fig(r: dict, k: str) -> Optional[float]:
        return _num((r.get("eval") or {}).get(k))

    positive = [r for r in recs if (fig(r, FVE) is not None and fig(r, FVE) > 0)]
    if positive:
        best = max(positive, key=lambda r: (fig(r, HIT) if fig(r, HIT) is not None else float("-inf"),
                                            fig(r, FVE), int(r["step"])))
        return best, "best: highest held-out chat hit rate among checkpoints with held-out chat fve_nrm > 0"
    scored = [r for r in recs if fig(r, FVE) is not None]
    if scored:
        return (max(scored, key=lambda r: (fig(r, FVE), int(r["step"]))),
                "best: no checkpoint has held-out chat fve_nrm > 0; the highest held-out chat fve_nrm")
    return recs[-1], "best: no held-out chat metrics at any checkpoint; the last one"


def selection_record(records: Sequence[dict], select: str) -> dict:
    """What eval.json and summary.md say about the choice: rule, the chosen checkpoint, every candidate."""
    chosen, why = select_checkpoint(records, select)
    return {"select": select, "rule": BEST_RULE if select == "best" else LAST_RULE, "applied": why,
            "selected": chosen.get("name") if chosen else None, "step": chosen.get("step") if chosen else None,
            "candidates": [{"name": r.get("name"), "step": r.get("step"), **(r.get("eval") or {})} for r in records]}


def export_live_pair(tav, tar, dest: Path, *, stage: str, trained_on: list[str], training_av: dict,
                     training_ar: dict, dtype: str, pack: Optional[dict] = None) -> Path:
    """``dest/av``, ``dest/ar`` (release layout) and, for LoRA (``pack``: base_id, layer, pack_dtype),
    ``dest/adapter_pack``: the same writers as the final export, so a checkpoint is a pair like ``pair/``."""
    from nlalab.train.export import export_adapter_pack, export_ar, export_av

    dest = Path(dest)
    export_av(tav.av, dest / "av", peft=tav.peft, stage=stage, trained_on=trained_on, training=training_av,
              dtype=dtype)
    export_ar(tar.ar, dest / "ar", peft=tar.peft, stage="sl", trained_on=trained_on, training=training_ar,
              dtype=dtype)
    if pack is not None and tav.peft is not None and tar.peft is not None:
        ad = dest / ".adapters"
        tav.peft.save_pretrained(ad / "av")
        tar.peft.save_pretrained(ad / "ar")
        export_adapter_pack(dest / "adapter_pack", av_adapters=[ad / "av"], ar_adapters=[ad / "ar"],
                            value_head=dest / "ar" / "value_head.safetensors", av_sidecar=dest / "av" / "nla_meta.yaml",
                            ar_sidecar=dest / "ar" / "nla_meta.yaml", base_id=pack["base_id"], layer=pack["layer"],
                            adapter_dtype=pack["pack_dtype"])
        shutil.rmtree(ad)
    return dest


def copy_checkpoint_pair(ckpt_dir: Path, pair_dir: Path, pack_dir: Optional[Path]) -> None:
    """Export a selected checkpoint: its av/ar to ``pair_dir`` (and its adapter pack to ``pack_dir``)."""
    for role in ("av", "ar"):
        if (pair_dir / role).exists():
            shutil.rmtree(pair_dir / role)
        shutil.copytree(ckpt_dir / role, pair_dir / role)
    if pack_dir is not None and (ckpt_dir / "adapter_pack").is_dir():
        if pack_dir.exists():
            shutil.rmtree(pack_dir)
        shutil.copytree(ckpt_dir / "adapter_pack", pack_dir)


def write_pair_record(pair_dir: Path, record: dict) -> None:
    Path(pair_dir).mkdir(parents=True, exist_ok=True)
    (Path(pair_dir) / PAIR_RECORD).write_text(json.dumps(record, indent=2, default=str))
