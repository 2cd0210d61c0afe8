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
from nlalab.verbalize.generate import GenerationSettings, Verbalization, cache_arg_name, cache_of, to_records
from nlalab.verbalize.sampling import row_keys, sample_next


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


def generate_texts(model, tokenizer, prompts: Sequence[Sequence[int]], eos_ids: list[int], k: int,
                   vector_keys: Sequence[int], settings: GenerationSettings,
                   skip: set[tuple[int, int]] = frozenset(), on_batch=None) -> list[Verbalization]:
    """``k`` samples per prompt; sample s of prompt i uses the stream (seed, vector_keys[i], s)."""
    shim = SimpleNamespace(model=model, tokenizer=tokenizer, eos_ids=eos_ids,
                           sidecar=SimpleNamespace(tokens=SimpleNamespace(injection_char=None)))
    todo = [(i, s) for i in range(len(prompts)) for s in range(k) if (i, s) not in skip]
    todo.sort(key=lambda t: -len(prompts[t[0]]))  # length bucketing keeps padding small
    out: list[Verbalization] = []
    bs = max(1, settings.batch_size)
    for a in range(0, len(todo), bs):
        chunk = todo[a:a + bs]
        keys = row_keys(settings.seed, torch.tensor([vector_keys[i] for i, _ in chunk]),
                        torch.tensor([s for _, s in chunk]))
        toks, done = generate_batch(model, tokenizer, [prompts[i] for i, _ in chunk], eos_ids, keys, settings)
        recs = to_records(shim, toks.cpu(), done.cpu(), [i for i, _ in chunk], [s for _, s in chunk])
        out.extend(recs)
        if on_batch is not None:
            on_batch(recs)
    out.sort(key=lambda r: (r.vector_index, r.sample))
    return out
