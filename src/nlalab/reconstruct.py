"""AR side: explanation text -> vector.

The AR reads ``template.format(explanation=...)`` tokenized with ``add_special_tokens=True`` (BOS for
Gemma/Llama: dropping it took Gemma's fve_nrm from 0.77 to 0.31), and its value head is applied to
the rightmost real token, whatever the padding side.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from nlalab.batching import length_buckets, right_padded
from nlalab.errors import NLALabError
from nlalab.pairs import arch


def ar_input_ids(ar, explanations: Sequence[str]) -> list[list[int]]:
    texts = [ar.template.format(explanation=e) for e in explanations]
    return [list(x) for x in ar.tokenizer(texts, add_special_tokens=True)["input_ids"]]


def last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost 1 in each row (correct under left or right padding)."""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values


def reconstruct(ar, explanations: Sequence[str], batch_size: int = 16, max_length: Optional[int] = None,
                progress: bool = False) -> torch.Tensor:
    """fp32 [N, d] reconstructions on CPU, rows in the order of ``explanations``."""
    if len(explanations) == 0:
        raise NLALabError("Nothing to reconstruct: no explanations.")
    ids = ar_input_ids(ar, explanations)
    if max_length is not None:
        too_long = [i for i, x in enumerate(ids) if len(x) > max_length]
        if too_long:
            raise NLALabError(f"{len(too_long)} AR inputs exceed max_length={max_length} tokens (first: row {too_long[0]}).")
    pad = ar.tokenizer.pad_token_id if ar.tokenizer.pad_token_id is not None else 0
    device = arch.input_device(ar.model)
    inner = arch.inner_model(ar.model)
    out = torch.empty(len(ids), ar.d_model, dtype=torch.float32)
    for batch in length_buckets(ids, batch_size, "reconstruct" if progress else None):
        input_ids, mask = right_padded([ids[i] for i in batch], pad, device)
        with torch.inference_mode():
            h = inner(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
            last = last_real_index(mask)
            hl = h[torch.arange(len(batch), device=h.device), last.to(h.device)]
            v = ar.value_head(hl.to(ar.value_head.weight.device, torch.float32))
        out[torch.tensor(batch)] = v.float().cpu()
    if not torch.isfinite(out).all():
        raise NLALabError("AR reconstructions contain NaN/Inf. Fix: check that the final norm was replaced "
                          "(nlalab does this) and that the AR runs in bf16/fp32, not fp16.")
    return out
