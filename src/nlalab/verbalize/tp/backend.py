"""The ``tp`` generation backend: (vector, sample) rows through the tensor-parallel group, in micro-batches.

Rows keep their per-row noise streams (``sampling.stream_keys``), so they are the one-process engines'
rows whenever the logits agree; the micro-batch size changes nothing but speed."""

from __future__ import annotations

from typing import Optional

import torch

from nlalab.errors import UsageError
from nlalab.pairs import arch
from nlalab.verbalize.sampling import stream_keys
from nlalab.verbalize.tp.group import group_for, torchrun_env
from nlalab.verbalize.tp.shard import check_world, unsupported_reason


def tp_devices(spec, model) -> Optional[list]:
    """The devices of the group (rank r on the r-th), from ``GenerationSettings.devices``: ``auto``/``all``
    every visible GPU (the CPU: one process); a count N: GPUs 0..N-1 (on a CPU model: N CPU processes,
    gloo); a list (``"cuda:0,cuda:1"``, ``["cpu", "cpu"]``); ``none``: one device. None under torchrun
    (the launcher decides)."""
    if torchrun_env():
        return None
    home = arch.input_device(model)
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    key = spec.strip().lower() if isinstance(spec, str) else spec
    if isinstance(key, str) and key.isdigit():
        key = int(key)
    if key is None or key in ("", "none", "single", "off"):
        return [home if home.type == "cpu" else torch.device("cuda", 0)]
    if key in ("auto", "all"):
        return [torch.device("cuda", i) for i in range(n_gpu)] if home.type == "cuda" and n_gpu else [home]
    if isinstance(key, int):
        if key < 1:
            raise UsageError(f"tensor parallel: a device count must be >= 1, got {key}.")
        if home.type == "cpu":
            return [torch.device("cpu")] * key
        if key > n_gpu:
            raise UsageError(f"tensor parallel over {key} GPUs: only {n_gpu} visible.")
        return [torch.device("cuda", i) for i in range(key)]
    parts = [p.strip() for p in key.split(",") if p.strip()] if isinstance(key, str) else list(key)
    try:
        return [torch.device(p) for p in parts]
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"tensor parallel devices {spec!r}: {e}. Use a count or a list such as cuda:0,cuda:1.") from None


def _group(model, spec, what: str):
    """The group for ``model`` on the devices ``spec`` names, after the checks (a one-line UsageError)."""
    why = unsupported_reason(model)
    if why:
        raise UsageError(f"The tensor-parallel engine does not support this {what}: {why}. Use engine 'loop'.")
    devices = tp_devices(spec, model)
    if devices is not None:
        cfg = arch.text_config(model.config)
        check_world(int(cfg.num_attention_heads), int(cfg.num_key_value_heads), len(devices))
    return group_for(devices)


def _sampling(settings, eos_ids, pad) -> dict:
    return dict(max_new_tokens=int(settings.max_new_tokens), eos_ids=[int(e) for e in eos_ids], pad_id=int(pad),
                temperature=float(settings.temperature), top_k=int(settings.top_k or 0),
                top_p=float(settings.top_p), greedy=bool(settings.greedy))


def _pad_id(tokenizer, eos_ids) -> int:
    return tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else (
        eos_ids[0] if eos_ids else 0)


def _micro_batches(todo, keys_v, settings):
    """(row idx, sample idx, per-row sampling keys) per micro-batch of ``fast_batch_size`` or ``batch_size``."""
    bs = max(1, int(settings.fast_batch_size or settings.batch_size))
    for pos in range(0, len(todo), bs):
        chunk = todo[pos:pos + bs]
        vidx = [i for i, _ in chunk]
        sidx = [s for _, s in chunk]
        yield vidx, sidx, stream_keys(settings.seed, keys_v, vidx, sidx, "cpu")


def tp_rows(av, vectors, todo, keys_v, settings, stop=None):
    """The registry's ``rows`` for ``tp``: yields (vidx, sidx, tokens, done) per micro-batch, on the CPU."""
    model = av.model
    g = _group(model, settings.devices, "AV")
    sampling = dict(injection_scale=float(av.injection_scale),
                    **_sampling(settings, av.eos_ids, _pad_id(av.tokenizer, av.eos_ids)))
    for vidx, sidx, keys in _micro_batches(todo, keys_v, settings):
        toks, done = g.generate(model, av.prompt_ids, av.marker_pos, vectors[vidx], keys, sampling)
        yield vidx, sidx, toks, done
        if stop is not None and stop.is_set():
            return


def tp_plain_rows(model, tokenizer, prompts, eos_ids, todo, keys_v, settings):
    """The registry's ``plain_rows`` for ``tp`` (blind control, corpus texts): prompts of different lengths,
    no injection, in micro-batches of ``fast_batch_size`` or ``batch_size``; the prompts' common prefix is
    computed once on the group (``compute.generate_plain``). Yields (prompt idx, sample idx, tokens, done)."""
    from nlalab.verbalize.fast.plain import common_prefix

    if not todo:
        return
    g = _group(model, settings.devices, "model")
    sampling = _sampling(settings, eos_ids, _pad_id(tokenizer, eos_ids))
    P = common_prefix([prompts[i] for i, _ in todo])
    prefix = list(prompts[todo[0][0]][:P])
    for vidx, sidx, keys in _micro_batches(todo, keys_v, settings):
        toks, done = g.plain(model, prefix, [list(prompts[i][P:]) for i in vidx], keys, sampling)
        yield vidx, sidx, toks, done


def _torchrun_world() -> int:
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def tp_forward_group(model, devices):
    """The group that runs ``model``'s block forwards (capture, the AR), or None where they stay in this
    process: fewer than two devices outside torchrun, or a model the shards cannot split (a warning says
    why; the one-process path gives the same vectors, on one device or layer-sharded)."""
    import warnings

    why = unsupported_reason(model, head=False)
    if why is None:
        devs = tp_devices(devices if devices is not None else "auto", model)
        if devs is not None and len(devs) < 2:
            return None
        cfg = arch.text_config(model.config)
        try:
            check_world(int(cfg.num_attention_heads), int(cfg.num_key_value_heads),
                        len(devs) if devs is not None else _torchrun_world())
        except UsageError as e:
            why = str(e)
    if why is not None:
        warnings.warn(f"tensor parallel: block forward stays in this process ({why}).")
        return None
    return group_for(devs)


def tp_run_to_block(model, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    devices=None, select: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``nlalab.capture.run_to_block`` on the tensor-parallel group: block ``layer``'s output [B, T, d]
    (right-padded ids, positions 0..T-1 per row), or only the (row, position) pairs ``select`` [N, 2] names
    ([N, d]: less to send back), on the CPU. For models that do not fit one device: capture, and the AR's
    forward up to its last block (a model without LM head or final norm is sharded without them)."""
    why = unsupported_reason(model, head=False)
    if why:
        raise UsageError(f"The tensor-parallel engine does not support this model: {why}.")
    devs = tp_devices(devices if devices is not None else "auto", model)
    if devs is not None:
        cfg = arch.text_config(model.config)
        check_world(int(cfg.num_attention_heads), int(cfg.num_key_value_heads), len(devs))
    g = group_for(devs)
    return g.hidden(model, input_ids, attention_mask, layer + 1, select=select)
