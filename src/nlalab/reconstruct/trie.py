"""Shared-prefix AR forwards: every token prefix common to several AR inputs is computed once.

Why: the AR reads ``template.format(explanation=...)``, so every input starts with the template's tokens,
and the prefix control reconstructs sentences 1, 1-2, ..., 1-5 of each explanation, which are prefixes of
one another. On the offline demo the 567 control texts hold 50,568 tokens, of which 22,427 are distinct
prefixes (the AR's cost on the CPU is ~0.8 ms per token).

How: the inputs' token sequences form a trie; each trie node is one token, computed once, at the position
of its depth, attending to its ancestors only (a tree-shaped causal mask; for sliding layers, also within the window). The causal forward of a node
depends on its ancestors alone, so a row's last-token state is its own forward's, up to the summation
order (fp32: <= 1.1e-6 relative on the demo's texts on the CPU; on an H200 as large as the padded
forward's own batch effect, :mod:`nlalab.reconstruct`). Nodes go to chunks of at most ``cap`` nodes (whole rows per
chunk, rows in sorted order so a chunk shares as much as possible); chunks are batched and padded, the
padding nodes attending to themselves only.

The forward is the model's own (transformers' custom 4D attention mask and ``position_ids``), so no layer
maths is re-implemented here; :func:`unsupported_reason` names what that needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

DEFAULT_CAP = 256  # nodes per chunk: dense [cap, cap] masks; larger chunks share a little more, attend more


@dataclass
class Chunk:
    """One trie slice: node tokens, parent node (-1: the root), depth (the token's position), and the node
    where each row of the chunk ends."""

    tokens: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)
    _kids: dict = field(default_factory=dict, repr=False)

    def new_nodes(self, seq: Sequence[int]) -> int:
        """Nodes ``seq`` would add to this chunk."""
        node, j = -1, 0
        while j < len(seq) and (node, seq[j]) in self._kids:
            node = self._kids[(node, seq[j])]
            j += 1
        return len(seq) - j

    def add(self, row: int, seq: Sequence[int]) -> None:
        node = -1
        for j, t in enumerate(seq):
            key = (node, int(t))
            nxt = self._kids.get(key)
            if nxt is None:
                nxt = self._kids[key] = len(self.tokens)
                self.tokens.append(int(t))
                self.parent.append(node)
                self.depth.append(j)
            node = nxt
        self.ends[row] = node


def plan(ids: Sequence[Sequence[int]], cap: int = DEFAULT_CAP) -> list[Chunk]:
    """Chunks covering every row of ``ids`` (each row whole in one chunk). A chunk holds at most
    ``max(cap, longest row)`` nodes. Deterministic in ``ids``."""
    cap = max(int(cap), max(len(s) for s in ids))
    chunks: list[Chunk] = []
    cur: Optional[Chunk] = None
    for r in sorted(range(len(ids)), key=lambda i: list(ids[i])):
        if cur is not None and len(cur.tokens) + cur.new_nodes(ids[r]) > cap:
            chunks.append(cur)
            cur = None
        if cur is None:
            cur = Chunk()
        cur.add(r, ids[r])
    if cur is not None:
        chunks.append(cur)
    return chunks


def batches(chunks: Sequence[Chunk], rows_per_batch: int) -> list[list[Chunk]]:
    """Chunks grouped (largest first, so each batch pads little) until a batch holds ``rows_per_batch``
    rows; a chunk with more rows than that is a batch of its own."""
    order = sorted(chunks, key=lambda c: -len(c.tokens))
    out: list[list[Chunk]] = []
    rows = 0
    for c in order:
        if out and rows + len(c.ends) <= rows_per_batch:
            out[-1].append(c)
            rows += len(c.ends)
        else:
            out.append([c])
            rows = len(c.ends)
    return out


def ancestor_mask(parent: Sequence[int], n: Optional[int] = None) -> torch.Tensor:
    """[n, n] bool: node i attends to node j iff j is i or an ancestor of i. Nodes past ``len(parent)``
    (padding) attend to themselves only, so no softmax row is empty."""
    k = len(parent)
    n = k if n is None else n
    m = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parent):  # parents come before their children
        if p >= 0:
            m[i, :k] |= m[p, :k]
    return m


def batch_tensors(group: Sequence[Chunk], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids [C, n], position_ids [C, n], mask [C, 1, n, n] bool) of one batch of chunks."""
    n = max(len(c.tokens) for c in group)
    ids = torch.full((len(group), n), int(pad_id), dtype=torch.long)
    pos = torch.zeros((len(group), n), dtype=torch.long)
    mask = torch.empty((len(group), 1, n, n), dtype=torch.bool)
    for g, c in enumerate(group):
        k = len(c.tokens)
        ids[g, :k] = torch.tensor(c.tokens, dtype=torch.long)
        pos[g, :k] = torch.tensor(c.depth, dtype=torch.long)
        mask[g, 0] = ancestor_mask(c.parent, n)
    return ids, pos, mask


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bool mask as transformers' eager attention adds it: 0 where attended, the dtype's minimum elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


MASK_IMPLS = ("sdpa", "eager")  # attention implementations that take a custom 4D mask as given
LAYER_TYPES = ("full_attention", "sliding_attention")  # what :func:`layer_masks` builds a mask for


def attention_impl(model) -> str:
    """The attention implementation transformers will run (its default when none is set: eager)."""
    return getattr(model.config, "_attn_implementation", None) or "eager"


def window_of(model) -> Optional[int]:
    """The sliding window of the model's sliding layers (None: it has none)."""
    from nlalab.pairs import arch

    cfg = arch.text_config(model.config)
    if "sliding_attention" not in (getattr(cfg, "layer_types", None) or ()):
        return None
    return int(cfg.sliding_window)


def layer_masks(model, mask: torch.Tensor, pos: torch.Tensor, dtype: torch.dtype):
    """What the model's forward takes as ``attention_mask``: the tree mask [C,1,n,n] as is (sdpa) or additive
    (eager), and for models with sliding layers the dict transformers accepts per layer type, whose sliding
    entry also drops keys ``window`` or more positions back (transformers' ``q - k < window``)."""
    sdpa = attention_impl(model) == "sdpa"

    def fmt(m):
        return m if sdpa else additive(m, dtype)

    w = window_of(model)
    if w is None:
        return fmt(mask)
    near = (pos[:, None, :, None] - pos[:, None, None, :]) < w
    return {"full_attention": fmt(mask), "sliding_attention": fmt(mask & near)}


def unsupported_reason(model) -> Optional[str]:
    """None if the shared-prefix forward gives ``model``'s own causal forward, else why not (the caller uses
    the padded forward)."""
    from nlalab.pairs import arch, families

    cfg = arch.text_config(model.config)
    mt = getattr(cfg, "model_type", "")
    if families.family_of(mt) is None:  # rotary position ids and a 4D mask taken as is: tested per family
        return f"model type {mt!r} (supported: {', '.join(t for f in families.families() for t in f.model_types)})"
    impl = attention_impl(model)
    if impl not in MASK_IMPLS:
        return f"attention implementation {impl!r} (custom masks need {' or '.join(MASK_IMPLS)})"
    if getattr(cfg, "use_bidirectional_attention", False):
        return "bidirectional attention"
    types = set(getattr(cfg, "layer_types", None) or ("full_attention",))
    if not types <= set(LAYER_TYPES):
        return f"layer types {sorted(types - set(LAYER_TYPES))}"
    w = window_of(model)
    for lay in arch.decoder_layers(model):  # the per-layer windows must be the one the masks are built with
        lw = getattr(lay.self_attn, "sliding_window", None)
        if lw is not None and int(lw) != w:
            return f"a layer with sliding window {lw} (config: {w})"
    return None
