"""The built-in generation backends (loop, hf, fast, tp), registered in :mod:`nlalab.verbalize.backends`.

Imported by the package ``nlalab.verbalize`` (so every import of a verbalize module registers them); the
registry itself imports none of the engines. A third-party backend registers itself the same way
(``backends.register(Backend(...))``) from its own module."""

from __future__ import annotations

from typing import Optional

import torch

from nlalab.verbalize import generate, plain
from nlalab.verbalize.backends import Backend, Capabilities, register


def _tp_unsupported(model) -> Optional[str]:
    from nlalab.verbalize.tp.shard import unsupported_reason

    return unsupported_reason(model)


def _tp_rows(*args, **kw):
    from nlalab.verbalize.tp.backend import tp_rows

    return tp_rows(*args, **kw)


def _tp_plain_rows(*args, **kw):
    from nlalab.verbalize.tp.backend import tp_plain_rows

    return tp_plain_rows(*args, **kw)


def _fast_unsupported(model) -> Optional[str]:
    from nlalab.verbalize.fast import unsupported_reason

    return unsupported_reason(model)


any_dtype = (torch.float32, torch.bfloat16, torch.float16)
register(Backend(
    name="loop", doc="our KV-cached decode loop over the model's own forward (the reference path)",
    caps=Capabilities(per_row_sampling=True, multi_gpu=True, devices=("cpu", "cuda"), dtypes=any_dtype,
                      plain=True, prefix_sharing=False),
    unsupported=lambda model: None, rows=generate.loop_rows, plain_rows=plain.loop_plain_rows))
register(Backend(
    name="hf", doc="transformers.generate (sampling depends on batch composition)",
    caps=Capabilities(per_row_sampling=False, multi_gpu=False, devices=("cpu", "cuda"), dtypes=any_dtype,
                      plain=False, prefix_sharing=False),
    unsupported=lambda model: None, rows=generate.hf_rows))
register(Backend(
    name="fast", doc="nlalab.verbalize.fast: shared prefix, static cache; CUDA graphs + compile on GPU",
    caps=Capabilities(per_row_sampling=True, multi_gpu=True, devices=("cpu", "cuda"), dtypes=any_dtype,
                      plain=True, prefix_sharing=True),
    unsupported=_fast_unsupported, rows=generate.fast_rows, plain_rows=plain.fast_plain_rows))
register(Backend(
    name="tp", doc="nlalab.verbalize.tp: tensor parallel, one process per device (torch.distributed)",
    caps=Capabilities(per_row_sampling=True, multi_gpu=True, devices=("cpu", "cuda"), dtypes=any_dtype,
                      plain=True, prefix_sharing=True, tensor_parallel=True),
    unsupported=_tp_unsupported, rows=_tp_rows, plain_rows=_tp_plain_rows))
