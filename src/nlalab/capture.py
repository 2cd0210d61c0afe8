"""Capture ``blocks.{K}.hook_resid_post`` — the output of decoder block K, i.e. HF ``hidden_states[K+1]``.

A forward hook on block K stores its output and stops the forward pass, so no block after K runs
(TransformerLens' ``stop_at_layer``). Batches are right-padded, so token indices are the same as in
the unpadded sequence.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional, Sequence, Union

import torch
from torch import nn

from nlalab.batching import length_buckets, right_padded
from nlalab.errors import NLALabError, UsageError
from nlalab.pairs import arch
from nlalab.pairs.markers import chat_ids

Positions = Union[Literal["last", "random", "all"], Sequence[int]]
Format = Literal["chat", "raw"]
MIN_RANDOM_POSITION = 50  # kitft _MIN_POSITION (counting BOS)


def hook_name(layer: int) -> str:
    """The public address of a captured vector, TransformerLens-style."""
    return f"blocks.{layer}.hook_resid_post"


class _StopForward(Exception):
    pass


@contextmanager
def block_output(model: nn.Module, layer: int, stop: bool = True) -> Iterator[dict]:
    """Store block ``layer``'s output in the yielded dict; optionally abort the forward right after it."""
    store: dict = {}

    def hook(_mod, _inp, out):
        h = out[0] if isinstance(out, (tuple, list)) else out
        store["h"] = h.detach()
        if stop:
            raise _StopForward

    handle = arch.decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def run_to_block(model: nn.Module, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Block-K output [B, T, d] in the model dtype; blocks after K never run."""
    with torch.inference_mode(), arch.sdpa_backends(input_ids.device), block_output(model, layer) as store:
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    if "h" not in store:
        raise NLALabError(f"Block {layer} did not run; the model has {len(arch.decoder_layers(model))} blocks.")
    return store["h"]


def encode(tokenizer, text: str, fmt: Format) -> list[int]:
    """Chat format: one user turn + generation prompt, templated in one step (no double BOS)."""
    if fmt == "chat":
        return chat_ids(tokenizer, text)
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]


def random_positions(ids: Sequence[int], doc_id: str, seed: int, n: int, special_ids: set[int],
                     min_position: int = MIN_RANDOM_POSITION) -> list[int]:
    """kitft's stage-0 rule, draw for draw (``nla/datagen/stage0_extract.py:_sample_positions``).

    Candidates are indices >= 50 (BOS counted) whose id is not special; ``min(n, #candidates)`` are drawn
    by ``random.Random(sha256(f"{seed}|{doc_id}").digest()).sample``, in draw order (not sorted), so the
    same document gets the same positions, in the same row order, as the released training data.
    """
    cands = [i for i, t in enumerate(ids) if i >= min_position and t not in special_ids]
    if not cands:
        return []
    rng = random.Random(hashlib.sha256(f"{seed}|{doc_id}".encode()).digest())
    return rng.sample(cands, k=min(n, len(cands)))


def select_positions(ids: Sequence[int], positions: Positions, doc_id: str, seed: int, n_random: int,
                     special_ids: set[int]) -> list[int]:
    n = len(ids)
    if positions == "last":
        return [n - 1]
    if positions == "all":
        return list(range(n))
    if positions == "random":
        return random_positions(ids, doc_id, seed, n_random, special_ids)
    out = []
    for p in positions:
        q = p + n if p < 0 else p
        if not 0 <= q < n:
            raise UsageError(f"--position {p} is outside item {doc_id!r}, which has {n} tokens (valid: {-n} to "
                             f"{n - 1}). Fix: pass --position last, or an index every prompt reaches.")
        out.append(q)
    return out


@dataclass
class Captured:
    """fp32 vectors [N, d] on CPU and one metadata row per vector."""

    vectors: torch.Tensor
    meta: list[dict] = field(default_factory=list)
    layer: int = 0

    @property
    def hook_name(self) -> str:
        return hook_name(self.layer)


def capture(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    layer: int,
    *,
    ids: Optional[Sequence[str]] = None,
    positions: Positions = "last",
    fmt: Optional[Format] = None,
    seed: int = 42,
    n_random: int = 10,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    progress: bool = False,
    tensor_parallel=None,
) -> Captured:
    """Block-K vectors at the chosen positions of each text.

    Defaults follow the seed study (``last`` token of the chat-templated prompt). ``random`` uses raw
    text like the training data (``fmt`` defaults to ``raw`` there). ``tensor_parallel`` (a device count or
    list, as ``GenerationSettings.devices``; None: off) runs the forward on the tensor-parallel group
    (``nlalab.verbalize.tp``): every device works on every block instead of taking turns; with fewer than two
    devices, or a model it cannot split, the forward stays in this process (same vectors).
    """
    if len(texts) == 0:
        raise NLALabError("Nothing to capture: the list of texts is empty.")
    fmt = fmt or ("raw" if positions == "random" else "chat")
    ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
    if len(ids) != len(texts):
        raise NLALabError(f"{len(ids)} ids for {len(texts)} texts.")
    special = set(int(i) for i in getattr(tokenizer, "all_special_ids", []))
    encoded = [encode(tokenizer, t, fmt) for t in texts]
    if max_length is not None:
        encoded = [e[:max_length] for e in encoded]
    picks = [select_positions(e, positions, d, seed, n_random, special) for e, d in zip(encoded, ids)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    group = None
    if tensor_parallel is not None:
        from nlalab.verbalize.tp import tp_forward_group

        group = tp_forward_group(model, tensor_parallel)
    device = torch.device("cpu") if group is not None else arch.input_device(model)
    rows: dict[int, torch.Tensor] = {}
    for batch in length_buckets(encoded, batch_size, f"capture {hook_name(layer)}" if progress else None):
        batch = [i for i in batch if picks[i]]
        if not batch:
            continue
        input_ids, mask = right_padded([encoded[i] for i in batch], pad, device)
        if group is not None:  # only the picked (row, position) vectors come back from the group
            sel = torch.tensor([(r, p) for r, i in enumerate(batch) for p in picks[i]], dtype=torch.long)
            h = group.hidden(model, input_ids, mask, layer + 1, select=sel)
            off = 0
            for i in batch:
                rows[i] = h[off:off + len(picks[i])].float()
                off += len(picks[i])
            continue
        h = run_to_block(model, layer, input_ids, mask)
        for r, i in enumerate(batch):
            rows[i] = h[r, picks[i]].float().cpu()
    vecs, meta = [], []
    for i in range(len(texts)):
        if i not in rows:
            continue
        v = rows[i]
        for j, p in enumerate(picks[i]):
            vecs.append(v[j])
            tid = encoded[i][p]
            meta.append({
                "item_id": ids[i], "token_index": p, "token_id": tid,
                "token_text": tokenizer.decode([tid]), "norm": float(v[j].norm()), "n_tokens": len(encoded[i]),
            })
    if not vecs:
        raise NLALabError("No positions were captured (with positions='random', every text is shorter than 51 tokens).")
    out = torch.stack(vecs)
    if not torch.isfinite(out).all():
        raise NLALabError("Captured activations contain NaN/Inf. Fix: run the target in fp32 or bf16, not fp16.")
    return Captured(vectors=out, meta=meta, layer=layer)
