"""Train an NLA pair (AV + AR) for any base model and layer on one GPU, or on a CPU for tiny models.

Library first; ``nlalab train`` is a thin layer over :func:`train_pair`. Stages (nla-recipe §4-§7):

- :mod:`nlalab.train.corpus`: a real offline corpus from installed packages (or written by the base model).
- :mod:`nlalab.train.data`: raw-text random positions + chat last tokens, document-level splits, fp32 storage.
- :mod:`nlalab.train.explainers`: ``context`` (self-supervised), ``api`` (OpenAI-compatible), ``local``.
- :mod:`nlalab.train.ar_sft`, :mod:`nlalab.train.av_sft`, :mod:`nlalab.train.grpo`: the three stages.
- :mod:`nlalab.train.export`: the release layout (and LoRA adapter packs).
- :mod:`nlalab.train.pipeline`: :class:`TrainConfig` and :func:`train_pair`.
"""

from nlalab.train.ar_sft import ARSFTSettings, train_ar_sft
from nlalab.train.av_sft import AVSFTSettings, train_av_sft
from nlalab.train.common import LoraSettings, OptimSettings
from nlalab.train.grpo import GRPOSettings, GRPOTrainer, train_grpo
from nlalab.train.pipeline import (
    CorpusSettings, DataSettings, EvalSettings, ExplainerSettings, TrainConfig, apply_overrides, build_config,
    train_pair,
)

__all__ = [
    "ARSFTSettings", "AVSFTSettings", "CorpusSettings", "DataSettings", "EvalSettings", "ExplainerSettings",
    "GRPOSettings", "GRPOTrainer", "LoraSettings", "OptimSettings", "TrainConfig", "apply_overrides", "build_config",
    "train_ar_sft", "train_av_sft", "train_grpo", "train_pair",
]
