"""What a control is: a plug-in that declares what it needs generated and reconstructed, computes its
section of results.json with its verdict, and renders itself for the terminal, Markdown, HTML and compare.

The study pipeline knows no control by name: it asks each selected control for its generation jobs
(vectors the AV verbalizes K times, or prompts the target writes from, as the blind control does) and
for the texts the AR must read, runs them with the study's own generation and reconstruction API, then
calls :meth:`Control.analyze` with a :class:`StudyContext`. Renderers walk the registry. Adding a control
is one module that subclasses :class:`Control` and decorates it with :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import numpy as np
import torch

from nlalab.format import NOT_RUN, Table

__all__ = ["Control", "estimate_cell", "GenJob", "PlainJob", "StudyContext", "Figure", "register", "registry", "get", "names",
           "selectable", "NOT_RUN"]


def _finite(x) -> Optional[float]:
    x = float(x)
    return x if np.isfinite(x) else None


@dataclass
class GenJob:
    """Vectors for the AV to verbalize K times each; reconstructed by the AR like the corpus rows.
    ``name`` is the stage file stem (``stages/control_<name>.jsonl``); ``key_base`` keeps its sampling
    keys apart from every other job's."""

    name: str
    vectors: torch.Tensor
    seed: int
    key_base: int


@dataclass
class PlainJob:
    """Texts the *target* model writes (K per prompt) from ``prompts`` (already in the AV's format), with no
    activation injected."""

    name: str
    prompts: list[str]
    key_base: int


@dataclass
class Figure:
    path: Path
    alt: str
    caption: str


@dataclass
class StudyContext:
    """Everything a control may read. Fields fill in as the study advances: generation rows after
    verbalize, reconstructions and the score scale after reconstruct, scored samples and the core results
    before :meth:`Control.analyze`."""

    cfg: Any  # RunConfig
    items: list  # corpus Items, in corpus order (activation rows)
    categories: list[str]
    acts: torch.Tensor  # [items, d] fp32
    gen_rows: dict[str, list[dict]] = field(default_factory=dict)  # job name -> rows sorted (vector, sample)
    plain_rows: dict[str, list[dict]] = field(default_factory=dict)
    recons: dict[str, torch.Tensor] = field(default_factory=dict)  # job name -> reconstructions (rows order)
    text_recons: dict[str, torch.Tensor] = field(default_factory=dict)  # control name -> its texts' reconstructions
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # job name -> the vectors it verbalized
    extra_acts: dict[str, torch.Tensor] = field(default_factory=dict)  # control name -> its prompts' activations
    mse_scale: Optional[float] = None
    b_rv: Optional[float] = None
    center: Optional[torch.Tensor] = None
    samples: list[dict] = field(default_factory=list)  # scored corpus rows (samples.jsonl)
    results: dict = field(default_factory=dict)  # core results; results["controls"] fills in registry order
    state: dict = field(default_factory=dict)  # per-control scratch space between phases (keyed by control)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def corpus_rows(self) -> list[dict]:
        return self.gen_rows["corpus"]

    def score(self, rec: torch.Tensor, gold: torch.Tensor, centered: bool = True) -> dict[str, np.ndarray]:
        """The study's metrics of reconstructions against gold rows (same denominators as the main table)."""
        from nlalab import metrics

        # a degenerate B_rv: scored with the placeholder, then every fve_nrm is blanked (b_rv_for_stats's note)
        s = metrics.score_pairs(rec, gold, self.mse_scale, b_rv=self.b_rv_for_stats,
                                center=self.center if centered else None)
        return {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in s.items()}

    @property
    def b_rv_for_stats(self) -> float:
        """B_rv for the statistics helpers. When it is degenerate they run with a placeholder of 1.0 and the
        pipeline then blanks every fve_nrm number and every verdict that rests on one
        (``nlalab.study.degenerate.without_fve_nrm``): n/a, never a number computed through."""
        return 1.0 if self.b_rv is None else float(self.b_rv)

    def scored_rows(self, job: str, gold: torch.Tensor) -> list[dict]:
        """The rows of a generation job with their metrics against ``gold[vector_index]``."""
        rows = self.gen_rows[job]
        s = self.score(self.recons[job], gold[[r["vector_index"] for r in rows]])
        return [{**r, **{k: _finite(v[i]) for k, v in s.items()}} for i, r in enumerate(rows)]

    def section(self, name: str) -> Optional[dict]:
        return (self.results.get("controls") or {}).get(name)


class Control:
    """Base class of every control. Override what the control needs; the defaults do nothing."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    #: one line for ``--controls`` help and the docs
    help: ClassVar[str] = ""
    #: where in the seed paper (or "nlalab") the control comes from
    origin: ClassVar[str] = "nlalab"
    #: always computed, cannot be deselected (it costs no model call)
    always: ClassVar[bool] = False
    #: rows written to controls/<name>.jsonl (None: none)
    writes_rows: ClassVar[bool] = False

    # ---- what to generate and reconstruct -------------------------------------------------------
    def generation(self, ctx: StudyContext) -> list[GenJob]:
        """AV jobs, planned after capture (``ctx.acts`` is set)."""
        return []

    def prompts(self, ctx: StudyContext) -> list[str]:
        """Extra prompts to capture with the corpus (same layer and position), planned before capture; their
        activations arrive in ``ctx.extra_acts[name]``."""
        return []

    def plain(self, ctx: StudyContext) -> list[PlainJob]:
        """Target-model generation jobs, planned before capture (no activations yet)."""
        return []

    def texts(self, ctx: StudyContext) -> list[str]:
        """Texts for the AR, planned after verbalize (``ctx.gen_rows``/``ctx.plain_rows`` are set)."""
        return []

    # ---- results ----------------------------------------------------------------------------------
    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        """This control's section of ``results["controls"]`` (JSON-serialisable), with a ``verdict`` where
        the control answers a question."""
        return None

    def rows(self, ctx: StudyContext) -> Optional[list[dict]]:
        """Rows for ``controls/<name>.jsonl`` (each with its metrics), or None."""
        return None

    def warnings(self, section: dict) -> list[str]:
        return list(section.get("warnings") or [])

    # ---- rendering --------------------------------------------------------------------------------
    def tables(self, section: dict, results: dict) -> list[Table]:
        return []

    def verdicts(self, section: dict) -> list[str]:
        """The control's verdict sentences (each says what its statistic supports, with the numbers it rests
        on; docs/verdicts.md has their calibration)."""
        return [section["verdict"]] if section.get("verdict") else []

    def summary(self, section: dict, results: dict) -> list[str]:
        """Terminal lines: the verdicts."""
        return [f"{self.title}: {v}" for v in self.verdicts(section)]

    def figures(self, section: dict, results: dict, plots_dir: Path, run: Any = None) -> list[Figure]:
        """Figures saved under ``plots_dir`` (``run``: the loaded run, for row-level plots)."""
        return []

    def compare_rows(self, runs: list, row: Callable[..., dict]) -> list[dict]:
        """Rows of ``nlalab compare`` (``row(key, label, section, cells, kind=..., signed=...)``); one cell per
        run (None where the run lacks the control)."""
        return []

    def markdown(self, section: Optional[dict], results: dict) -> str:
        head = f"## {self.title}\n\n"
        if not section:
            return head + f"{self.title}: {NOT_RUN}.\n"
        parts = [head] + [f"**Verdict:** {v}\n\n" for v in self.verdicts(section)]
        parts += [t.to_markdown(3) + "\n" for t in self.tables(section, results)]
        parts += [f"**Warning:** {w}\n\n" for w in self.warnings(section)]
        return "".join(parts)


def estimate_cell(e: Optional[dict]) -> Optional[dict]:
    """A compare cell from a stored estimate (mean, interval, n), or None where it is missing."""
    return None if not e or e.get("mean") is None else {k: e.get(k) for k in ("mean", "lo", "hi", "n")}


_REGISTRY: dict[str, Control] = {}


def register(cls: type[Control]) -> type[Control]:
    """Class decorator: add a control to the registry (its ``name`` must be new)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a control needs a name")
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"control {cls.name!r} is registered twice ({type(_REGISTRY[cls.name]).__name__}, "
                         f"{cls.__name__})")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def registry() -> dict[str, Control]:
    """Every registered control, in registration order (the order they run and render in)."""
    from nlalab.study import controls  # noqa: F401  (registers the built-ins)

    return dict(_REGISTRY)


def get(name: str) -> Control:
    return registry()[name]


def names() -> list[str]:
    return list(registry())


def selectable() -> list[str]:
    """The names ``--controls`` accepts (the always-on controls are not selectable)."""
    return [n for n, c in registry().items() if not c.always]
