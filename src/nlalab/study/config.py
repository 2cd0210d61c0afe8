"""One typed config: the CLI flags of `nlalab run`, and the record saved as ``config.json``."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

# Selectable controls. The recall permutation control is always computed (it costs no model call).
CONTROLS = ("random_gaussian", "directions", "recon_permutation", "baselines", "blind", "prefix", "grounding",
            "seeds")

# Values that change results: a rerun into an existing run dir must match them (or pass --overwrite).
NON_IDENTITY = {"out", "batch_size", "capture_batch_size", "ar_batch_size", "device", "dtype", "device_map",
                "max_memory", "progress", "force", "verbalize_devices"}


class RunConfig(BaseModel):
    # pair
    pair: Optional[str] = Field(None, description="Registered pair name (nlalab ls).")
    av: Optional[str] = Field(None, description="AV dir or hub id.")
    ar: Optional[str] = Field(None, description="AR dir or hub id.")
    target: Optional[str] = Field(None, description="Target model dir or hub id.")
    layer: Optional[int] = Field(None, description="Layer K (default from sidecars).")
    revision: Optional[str] = Field(None, description="Hub revision for AV and AR.")
    untrained_baseline: bool = Field(False, description="Evaluate the untrained NLA built from the target instead.")
    # study
    out: str = Field(..., description="Run directory.")
    corpus: str = Field("seed50_v1", description="Shipped corpus name or a JSONL/JSON/CSV file.")
    limit_per_category: Optional[int] = Field(None, description="Use only the first N items of each category.")
    positions: str = Field("last", description="Capture position: last (seed protocol).")
    k: int = Field(3, description="Samples per activation.")
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    max_new_tokens: int = 200
    seed: int = 42
    engine: str = Field("auto", description="auto (fast where it supports the model, else loop), fast, loop or hf "
                                            "(transformers.generate, the reference).")
    controls: list[str] = Field(default_factory=lambda: list(CONTROLS))
    n_random: int = Field(30, description="Random-Gaussian vectors.")
    n_seeds: int = Field(2, description="Extra verbalization seeds for the noise-floor control.")
    max_prefix_sentences: int = Field(5, description="Longest explanation prefix (sentences) in the prefix control.")
    n_perm: int = Field(1000, description="Permutations for the permutation controls.")
    n_boot: int = Field(2000, description="Bootstrap resamples for CIs.")
    brv_reference: Optional[str] = Field(None, description="Vector file whose rows define B_rv (default: the run's activations).")
    lexicon: Optional[str] = Field(None, description="Category lexicon JSON for direction injection.")
    # execution (do not change results)
    batch_size: int = 32
    capture_batch_size: int = 8
    ar_batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"
    device_map: Optional[str] = None
    max_memory: Optional[str] = Field(None, description="Per-device caps with device_map, e.g. '0=70GiB,1=70GiB'.")
    verbalize_devices: str = Field("auto", description="Data-parallel verbalization: auto (every visible GPU when "
                                   "the AV fits on one), all, none, a GPU count, or a list such as cuda:0,cuda:1.")
    progress: bool = True
    force: list[str] = Field(default_factory=list, description="Stages to redo: capture, verbalize, reconstruct, controls.")

    def identity(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if k not in NON_IDENTITY}
