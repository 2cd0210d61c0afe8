"""Where `run_study` gets its three models: from disk (the default), or already in memory.

``DiskModels`` is what `nlalab run` does: each model is loaded for its stage and released after it, so
target, AV and AR of a pair that fills one GPU run one after another. ``Preloaded`` hands the study
objects that are already loaded (a benchmark of "the whole study, weights loaded", a notebook that keeps
its models) and never frees them: the caller owns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, runtime_checkable

from nlalab.errors import NLALabError
from nlalab.pairs.load import AR, AV, LoadOptions, Target, load_ar, load_av, load_target, release
from nlalab.pairs.resolve import PairDirs
from nlalab.pairs.sidecar import DEFAULT_AV_TEMPLATE, read_sidecar


@runtime_checkable
class ModelSource(Protocol):
    """The study's view of a pair: the layer K, three models on demand, and their provenance."""

    @property
    def layer(self) -> int: ...

    def target(self, truncate: bool = True) -> Target:
        """The target LM; ``truncate`` allows blocks after K to be left out (capture never runs them)."""
        ...

    def av(self) -> AV: ...

    def ar(self) -> AR: ...

    def release(self, obj: Any) -> None:
        """Done with ``obj`` (a Target, AV or AR) for this study."""
        ...

    def provenance(self) -> dict:
        """What config.json and results.json record under ``pair``."""
        ...

    def av_template(self) -> str:
        """The AV's prompt template (the blind control writes it around the prompt text, no AV loaded)."""
        ...


@dataclass
class DiskModels:
    """Today's behaviour: load each model from its directory for its stage, free it afterwards."""

    dirs: PairDirs
    opts: LoadOptions = field(default_factory=LoadOptions)
    ar_dtype: str = "auto"  # AR precision (nlalab.reconstruct.choose_ar_dtype): fp32 where it fits
    ar_dtype_reason: Optional[str] = None

    @property
    def layer(self) -> int:
        return self.dirs.layer

    def target(self, truncate: bool = True) -> Target:
        if self.dirs.target is None:
            raise NLALabError("The study needs the target model to capture activations: pass --target.")
        return load_target(self.dirs.target, self.dirs.layer, self.opts, truncate=truncate)

    def av(self) -> AV:
        return load_av(self.dirs.av, self.opts)

    def ar(self) -> AR:
        import dataclasses

        from nlalab.reconstruct import choose_ar_dtype

        opts = self.opts
        if self.opts.dtype == "auto" or self.ar_dtype != "auto":
            dt, self.ar_dtype_reason = choose_ar_dtype(self.dirs.ar, self.ar_dtype, self.opts.device)
            opts = dataclasses.replace(self.opts, dtype=dt)
        return load_ar(self.dirs.ar, opts, layer=self.dirs.layer)

    def release(self, obj: Any) -> None:
        release(obj)

    def provenance(self) -> dict:
        out = self.dirs.provenance()
        if self.ar_dtype_reason:
            out["ar_dtype"] = self.ar_dtype_reason
        return out

    def av_template(self) -> str:
        return read_sidecar(self.dirs.av).av_template or DEFAULT_AV_TEMPLATE

    def context_length(self) -> Optional[int]:
        """The target's context (max_position_embeddings), read from its config without loading weights."""
        if self.dirs.target is None:
            return None
        try:
            from transformers import AutoConfig

            from nlalab.study.degenerate import context_length

            return context_length(AutoConfig.from_pretrained(self.dirs.target))
        except Exception:  # an unreadable config only switches the long-prompt check off
            return None


@dataclass
class Preloaded:
    """Models already in memory. ``release`` leaves them untouched, so they can be reused after the study.

    The target must be the full model (``truncated=False``) when the blind control runs (it generates
    with the target). ``name`` and ``info`` go into the recorded provenance.
    """

    target_model: Target
    av_model: AV
    ar_model: AR
    name: str = "preloaded"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = self.target_model.layer
        if self.ar_model.layer != k:
            raise NLALabError(f"Preloaded models disagree on the layer: target K={k}, AR K={self.ar_model.layer}.")
        d_t, d_av, d_ar = self.target_model.d_model, self.av_model.d_model, self.ar_model.d_model
        if not d_t == d_av == d_ar:
            raise NLALabError(f"Preloaded models disagree on d_model: target {d_t}, AV {d_av}, AR {d_ar}.")

    @property
    def layer(self) -> int:
        return self.target_model.layer

    def target(self, truncate: bool = True) -> Target:
        if not truncate and self.target_model.truncated:
            raise NLALabError(
                "The blind control generates with the target, but the preloaded target holds only blocks 0..K. "
                "Fix: preload the full target (load_target(..., truncate=False)) or leave out the blind control."
            )
        return self.target_model

    def av(self) -> AV:
        return self.av_model

    def ar(self) -> AR:
        return self.ar_model

    def release(self, obj: Any) -> None:
        """The models stay (the caller owns them); only the allocator's cache is emptied, as between stages
        of a disk run, so the next stage sees the same free memory."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def av_template(self) -> str:
        return self.av_model.sidecar.av_template or DEFAULT_AV_TEMPLATE

    def provenance(self) -> dict:
        def one(path: Any, revision: Optional[str], model: Any) -> dict:
            return {"ref": None if path is None else str(path), "revision": revision,
                    "path": None if path is None else str(path), "class": type(model).__name__}

        t, av, ar = self.target_model, self.av_model, self.ar_model
        return {"name": self.name, "preloaded": True,
                "av": one(av.path, av.revision, av.model), "ar": one(ar.path, ar.revision, ar.model),
                "target": {**one(t.path, t.revision, t.model), "truncated": t.truncated},
                "layer": self.layer, **self.info}
