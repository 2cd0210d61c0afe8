"""Generation without injection, with the same decode loop and per-row sampling as the AV path.

Used by the blind-explanation control: the AV's base model reads the prompt *text* in the AV's
template and writes an explanation with no activation at all.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import torch

from nlalab.verbalize.generate import GenerationSettings, Verbalization, _decode_loop, _to_records
from nlalab.verbalize.sampling import row_keys


def generate_from_ids(model, tokenizer, prompt_ids: Sequence[int], eos_ids: list[int], n: int, key: int,
                      settings: GenerationSettings, index: int = 0) -> list[Verbalization]:
    """``n`` samples from one prompt; sample s uses the stream (seed, key, s)."""
    shim = SimpleNamespace(model=model, tokenizer=tokenizer, eos_ids=eos_ids,
                           sidecar=SimpleNamespace(tokens=SimpleNamespace(injection_char=None)))
    emb_mod = model.get_input_embeddings()
    ids = torch.tensor(list(prompt_ids), device=emb_mod.weight.device).unsqueeze(0).expand(n, -1)
    with torch.no_grad():
        embeds = emb_mod(ids)
    keys = row_keys(settings.seed, torch.full((n,), int(key), device=ids.device), torch.arange(n, device=ids.device))
    toks, done = _decode_loop(shim, embeds, keys, settings)
    return _to_records(shim, toks.cpu(), done.cpu(), [index] * n, list(range(n)))
