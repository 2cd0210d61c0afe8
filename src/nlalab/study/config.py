"""One typed config: the CLI flags of `nlalab run`, and the record saved as ``config.json``.

Every setting carries its range here, so a bad value is refused before any model loads (issue 14):
constructing a :class:`RunConfig` with a bad or unknown setting raises :class:`nlalab.errors.UsageError`
with one line per problem, naming the setting, what was found, what is allowed and the flag to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nlalab.errors import UsageError
from nlalab.settings import (DEFAULT_GREEDY, DEFAULT_MAX_NEW_TOKENS, DEFAULT_SEED, DEFAULT_TEMPERATURE,
                             DEFAULT_TOP_P, POSITION_HELP, MaxNewTokens, SamplingSettings, Seed, StudyPosition,
                             Temperature, TopP, nearest as _nearest, settings_error_line)
from nlalab.settings import field_range as _field_range



def control_names() -> list[str]:
    """The selectable controls: every registered control plug-in but the always-on ones (the recall
    permutation control costs no model call and always runs)."""
    from nlalab.study.controls import selectable

    return selectable()

# Stages --force can redo (the same names as nlalab.study.pipeline.STAGES).
STAGES = ("capture", "verbalize", "reconstruct", "controls")
DTYPES = ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32")

# Values that change results: a rerun into an existing run dir must match them (or pass --overwrite).
NON_IDENTITY = {"out", "batch_size", "capture_batch_size", "ar_batch_size", "ar_share_prefix", "device", "dtype",
                "device_map", "max_memory", "progress", "force", "verbalize_devices"}

class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # pair
    pair: Optional[str] = Field(None, description="Registered pair name (nlalab ls).")
    av: Optional[str] = Field(None, description="AV dir or hub id.")
    ar: Optional[str] = Field(None, description="AR dir or hub id.")
    target: Optional[str] = Field(None, description="Target model dir or hub id.")
    layer: Optional[int] = Field(None, ge=0, description="Layer K (default from sidecars).")
    revision: Optional[str] = Field(None, description="Hub revision for AV and AR.")
    untrained_baseline: bool = Field(False, description="Evaluate the untrained NLA built from the target instead.")
    # study
    out: str = Field(..., min_length=1, description="Run directory.")
    corpus: str = Field("seed50_v1", min_length=1, description="Shipped corpus name or a JSONL/JSON/CSV file.")
    limit_per_category: Optional[int] = Field(None, ge=1, description="Use only the first N items of each category.")
    positions: StudyPosition = Field("last", description=f"Capture position: {POSITION_HELP}.")
    reply_tokens: int = Field(32, ge=1, description="With --position reply: greedy reply tokens the target writes.")
    k: int = Field(3, ge=1, description="Samples per activation.")
    # sampling: defaults and ranges from nlalab.settings (one declaration, shared with generation and GRPO)
    temperature: Temperature = DEFAULT_TEMPERATURE
    top_p: TopP = DEFAULT_TOP_P
    greedy: bool = DEFAULT_GREEDY
    max_new_tokens: MaxNewTokens = DEFAULT_MAX_NEW_TOKENS
    seed: Seed = DEFAULT_SEED
    engine: Literal["auto", "fast", "loop", "hf", "tp"] = Field(
        "auto", description="auto (fast wherever it supports the model, else loop), fast, loop, hf "
                            "(transformers.generate, the reference) or tp (tensor parallel over "
                            "--verbalize-devices, one process per device: verbalization, the blind control, and "
                            "the capture and AR forwards).")
    controls: list[str] = Field(default_factory=control_names, description="Controls to run (nlalab.study.controls).")
    n_random: int = Field(30, ge=1, description="Random-Gaussian vectors.")
    n_seeds: int = Field(2, ge=1, description="Extra verbalization seeds for the noise-floor control.")
    max_prefix_sentences: int = Field(5, ge=1, description="Longest explanation prefix (sentences) in the prefix control.")
    n_perm: int = Field(1000, ge=1, description="Permutations for the permutation controls.")
    n_boot: int = Field(2000, ge=1, description="Bootstrap resamples for CIs.")
    brv: Optional[str] = Field(None, description="B_rv, fve_nrm's denominator: registry (the pair's training-set "
                               "constant; the default for registered pairs), own (this run's activations; the default "
                               "otherwise), a number, or a vector file whose rows define it.")
    brv_reference: Optional[str] = Field(None, description="Vector file whose rows define B_rv (same as --brv FILE).")
    score_incomplete: bool = Field(False, description="Count explanations without a closing tag (or truncated, or "
                                   "empty) in the headline metrics; by default they are left out, as the release "
                                   "measures, and the all-rows figures are reported beside.")
    ar_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="AR precision: auto (fp32 where its weights fit: bf16 AR outputs move ~1% with batch "
                            "composition), fp32 or bf16.")
    lexicon: Optional[str] = Field(None, description="Category lexicon JSON for direction injection.")
    untrained_run: Optional[str] = Field(None, description="A finished run of the same pair's untrained NLA on the "
                                         "same corpus (--untrained-baseline into another --out): the baseline "
                                         "ladder's untrained rung, compared item by item.")
    directions: list[str] = Field(default_factory=list, description="Contrast sets for directions beyond the "
                                  "corpus categories (shipped valence_v1, factuality_v1, or JSON files): each "
                                  "direction is the difference of two sets' mean activations.")
    # execution (do not change results)
    batch_size: Optional[int] = Field(None, ge=1, description="Rows per generation micro-batch, for every engine. "
                                      "Default: 32 for loop and hf; the fast engine sizes its own (as many as GPU "
                                      "memory allows; 64 on the CPU).")
    capture_batch_size: int = Field(8, ge=1)
    ar_batch_size: int = Field(16, ge=1)
    ar_share_prefix: Literal["auto", "on", "off"] = Field(
        "auto", description="AR forwards compute token prefixes shared by several inputs once (the template, the "
                            "prefix control's sentence prefixes): auto (fp32 ARs), on (any precision) or off. A row "
                            "moves by summation order only, as with another batch size (~1e-6 relative on the "
                            "CPU, up to 2e-5 for a 7B-shape fp32 AR on an H200, padded or shared alike).")
    device: str = Field("auto", min_length=1)
    dtype: str = "auto"
    device_map: Optional[str] = None
    max_memory: Optional[str] = Field(None, description="Per-device caps with device_map, e.g. '0=70GiB,1=70GiB'.")
    verbalize_devices: str = Field("auto", description="Data-parallel verbalization: auto (every visible GPU when "
                                   "the AV fits on one), all, none, a GPU count, or a list such as cuda:0,cuda:1.")
    progress: bool = True
    force: list[str] = Field(default_factory=list, description="Stages to redo: capture, verbalize, reconstruct, controls.")

    def __init__(self, **data: Any) -> None:
        """Bad settings are a usage error (exit 2) with one line per problem, never a pydantic dump."""
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise UsageError(config_error_line(e)) from None

    @field_validator("controls", mode="before")
    @classmethod
    def _controls_text(cls, v: Any) -> Any:
        """A config file may say `controls: all`, `none` or a comma list, like the flag."""
        if isinstance(v, str):
            v = v.strip()
            return control_names() if v == "all" else [] if v in ("none", "") else [
                c.strip() for c in v.split(",") if c.strip()]
        return v

    @field_validator("controls")
    @classmethod
    def _known_controls(cls, v: list[str]) -> list[str]:
        known = control_names()
        bad = [c for c in v if c not in known]
        if bad:
            raise ValueError(f"unknown control {bad[0]!r}{_nearest(bad[0], known)}; "
                             f"allowed: all, none, or a comma list of {', '.join(known)}")
        return v

    @field_validator("force")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage {bad[0]!r}{_nearest(bad[0], STAGES)}; allowed: {', '.join(STAGES)}")
        return v

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"unknown dtype {v!r}{_nearest(v, DTYPES)}; allowed: auto, bf16, fp16, fp32")
        return v

    def identity(self) -> dict:
        """The settings that change results (a rerun into the same directory must match them); the set of
        controls, not their order."""
        out = {k: v for k, v in self.model_dump().items() if k not in NON_IDENTITY}
        out["controls"] = sorted(out["controls"])
        return out

    @classmethod
    def identity_defaults(cls) -> dict:
        """Each identity setting's default: a run saved before a setting existed ran with its default."""
        return {k: f.get_default(call_default_factory=True) for k, f in cls.model_fields.items()
                if k not in NON_IDENTITY}

    def sampling(self) -> SamplingSettings:
        """The sampling settings of this run, as the one shared type."""
        return SamplingSettings(temperature=self.temperature, top_p=self.top_p, greedy=self.greedy,
                                max_new_tokens=self.max_new_tokens, seed=self.seed)


# ---------------------------------------------------------------------------------------- messages


def field_range(name: str, fields=None) -> str:
    """The declared range of a RunConfig setting, e.g. ``0 < top_p <= 1``; empty when it has none."""
    return _field_range(name, RunConfig.model_fields if fields is None else fields)


def config_error_line(e: ValidationError) -> str:
    """A pydantic ValidationError of RunConfig as one line per problem (joined by '; ')."""
    return settings_error_line(e, RunConfig.model_fields)


# ---------------------------------------------------------------------------------------- --config


def load_config_file(path: str | Path) -> dict:
    """The settings of a ``--config`` file (YAML or JSON), as a dict; every fault is one UsageError line.

    Keys are checked later, when the merged settings build a :class:`RunConfig` (unknown keys are refused
    there, naming the nearest valid key)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "not found"
        raise UsageError(f"--config {p}: {what}. Fix: pass a YAML or JSON file of run settings.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--config {p}: not valid UTF-8 (byte offset {e.start}). Fix: save it as UTF-8.") from None
    except OSError as e:
        raise UsageError(f"--config {p}: cannot read it ({e.strerror}). Fix: check its permissions.") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {p} line {e.lineno} column {e.colno}: malformed JSON ({e.msg}). "
                             "Fix: correct the syntax there.") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            why = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UsageError(f"--config {p}{where}: malformed YAML ({why}). Fix: correct the syntax there.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {p}: the file holds a {type(data).__name__}, expected a mapping of settings. "
                         "Fix: write one `setting: value` per line, e.g. `k: 3`.")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise UsageError(f"--config {p}: setting name {bad[0]!r} is not text. Fix: name settings as in "
                         "`nlalab run --help` (e.g. k, temperature).")
    return data
