"""Generation without injection from prompts of different lengths, with the AV path's per-row sampling.

Used by the blind-explanation control: the AV's base model reads the prompt *text* in the AV's
template and writes an explanation with no activation at all. Prompts are left-padded with explicit
position ids, so a row's tokens do not depend on what it was batched with.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import torch

from nlalab.batching import left_padded
from nlalab.pairs.arch import input_device
from nlalab.verbalize.generate import (GenerationSettings, Verbalization, cache_arg_name, cache_of, stream_keys,
                                      to_records)
from nlalab.verbalize.sampling import sample_next


def generate_batch(model, tokenizer, prompts: Sequence[Sequence[int]], eos_ids: list[int], keys: torch.Tensor,
                   settings: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor]:
    device = input_device(model)
    B = len(prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    ids, mask = left_padded(prompts, pad, device)
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    eos = torch.tensor(eos_ids, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    keys = keys.to(device)
    toks = []
    cache_arg = cache_arg_name(model)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        last = pos[:, -1:]
        for step in range(settings.max_new_tokens):
            nxt = sample_next(out.logits[:, -1, :], keys, step, settings.temperature, settings.top_k,
                              settings.top_p, settings.greedy)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            toks.append(nxt)
            done = done | torch.isin(nxt, eos)
            if bool(done.all()) or step == settings.max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], 1)
            last = last + 1
            out = model(input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=last, use_cache=True,
                        **{cache_arg: cache_of(out)})
    return torch.stack(toks, 1), done


def loop_plain_rows(model, tokenizer, prompts: Sequence[Sequence[int]], eos_ids: list[int],
                    todo: Sequence[tuple[int, int]], keys_v: Sequence, settings: GenerationSettings):
    """The loop backend's plain mode: left-padded batches of ``settings.batch_size`` rows over the model's
    own forward."""
    bs = max(1, settings.batch_size)
    for a in range(0, len(todo), bs):
        chunk = todo[a:a + bs]
        vidx = [i for i, _ in chunk]
        sidx = [s for _, s in chunk]
        keys = stream_keys(settings.seed, keys_v, vidx, sidx, "cpu")
        toks, done = generate_batch(model, tokenizer, [prompts[i] for i in vidx], eos_ids, keys, settings)
        yield vidx, sidx, toks.cpu(), done.cpu()


def fast_plain_rows(model, tokenizer, prompts, eos_ids, todo, keys_v, settings: GenerationSettings):
    """The fast backend's plain mode (``nlalab.verbalize.fast.plain``); with ``engine="auto"`` a model the
    engine cannot run falls back to ``loop``."""
    from nlalab.errors import NLALabError
    from nlalab.verbalize.fast import plain as fplain

    try:
        rows = fplain.iter_plain(model, tokenizer, prompts, eos_ids, todo, keys_v, settings)
        first = next(rows, None)
    except NLALabError as e:
        if settings.engine != "auto":
            raise
        import warnings

        warnings.warn(f"fast engine unavailable for plain generation ({e}); using the loop engine.")
        yield from loop_plain_rows(model, tokenizer, prompts, eos_ids, todo, keys_v, settings)
        return
    if first is not None:
        yield first
        yield from rows


def generate_texts(model, tokenizer, prompts: Sequence[Sequence[int]], eos_ids: list[int], k: int,
                   vector_keys: Sequence[int], settings: GenerationSettings,
                   skip: set[tuple[int, int]] = frozenset(), on_batch=None) -> list[Verbalization]:
    """``k`` samples per prompt; sample s of prompt i uses the stream (seed, vector_keys[i], s).

    Runs on the backend ``settings.engine`` resolves to in plain mode (``backends.resolve(..., plain=True)``);
    rows are length-bucketed (longest first), so batches carry little padding."""
    from nlalab.verbalize import backends

    shim = SimpleNamespace(model=model, tokenizer=tokenizer, eos_ids=eos_ids,
                           sidecar=SimpleNamespace(tokens=SimpleNamespace(injection_char=None)))
    todo = [(i, s) for i in range(len(prompts)) for s in range(k) if (i, s) not in skip]
    todo.sort(key=lambda t: -len(prompts[t[0]]))  # length bucketing keeps padding small
    out: list[Verbalization] = []
    name = backends.resolve(settings.engine, model, plain=True)
    with backends.generation_threads(input_device(model).type):
        for vidx, sidx, toks, done in backends.get(name).plain_rows(model, tokenizer, prompts, eos_ids, todo,
                                                                    list(vector_keys), settings):
            recs = to_records(shim, toks, done, vidx, sidx)
            out.extend(recs)
            if on_batch is not None:
                on_batch(recs)
    out.sort(key=lambda r: (r.vector_index, r.sample))
    return out
