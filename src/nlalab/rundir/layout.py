"""Where each file of a run directory lives: one place for every name, so writers and readers agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
RESULTS = "results.json"
SAMPLES = "samples.jsonl"
VECTORS = "vectors.safetensors"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
CONTROLS_DIR = "controls"
SCORES_DIR = "scores"
STAGES_DIR = "stages"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def samples(self) -> Path:
        return self.root / SAMPLES

    @property
    def vectors(self) -> Path:
        return self.root / VECTORS

    @property
    def report_md(self) -> Path:
        return self.root / REPORT_MD

    @property
    def stages(self) -> Path:
        return self.root / STAGES_DIR

    @property
    def controls(self) -> Path:
        return self.root / CONTROLS_DIR

    @property
    def scores(self) -> Path:
        return self.root / SCORES_DIR

    def control_rows(self, name: str) -> Path:
        """``controls/<name>.jsonl``: the rows a control generated, with their metrics."""
        return self.controls / f"{name}.jsonl"

    def scorer_rows(self, name: str) -> Path:
        return self.scores / f"{name}.jsonl"

    def stage(self, name: str) -> Path:
        return self.stages / name

#: Version of the run-directory format written now (config.json, results.json, vectors.safetensors
#: metadata). 0: before the field existed (control sections top-level); 1: sections under ``controls``.
SCHEMA_VERSION = 1
