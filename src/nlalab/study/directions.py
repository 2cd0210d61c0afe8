"""Synthetic category directions for the direction-injection control (seed paper section 4.3).

From the captured activations (one per corpus item) build, for every category ``c``:

- ``{c}_vs_other`` (kind ``self``, category ``c``): ``mean(acts of c) - mean(all acts)``;
- ``NEG_{c}_vs_other`` (kind ``neg``, category ``c``): its negation;

and for the two *most distant* categories ``a``, ``b``:

- ``{a}_minus_{b}`` (kind ``cross``, category ``a``): ``mean(a) - mean(b)``;
- ``{b}_minus_{a}`` (kind ``cross``, category ``b``): its inverse.

Four categories give the seed's ten directions. Means are over the *raw* (unnormalised)
activations; ``mean(all)`` is the mean over all items (not the mean of the category means).
Rescaling to the injection scale happens at injection, not here.

"Most distant" (the seed picks chat/agent as "most semantically distant" by hand): the pair of
categories with the largest L2 distance between the means of the *unit-normalised* activations
(each activation divided by its L2 norm before averaging), so that one category with larger residual
norms cannot win by magnitude alone. Ties go to the first pair in category order (i < j, row-major);
``a`` is the earlier of the two in ``categories``.
"""

from __future__ import annotations

import itertools

import torch

__all__ = ["category_directions", "most_distant_pair", "category_distances"]


def _prepare(acts, item_categories, categories) -> tuple[torch.Tensor, list[str], dict[str, list[int]]]:
    try:
        a = torch.as_tensor(acts)
    except Exception as exc:
        raise ValueError(f"acts: cannot convert {type(acts).__name__} to a tensor ({exc})") from exc
    if a.ndim != 2:
        raise ValueError(f"acts: expected shape [n_items, d]; found {tuple(a.shape)}")
    if a.is_complex() or not (a.is_floating_point() or a.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"acts: expected a real floating tensor; found dtype {a.dtype}")
    a = a.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(a).all()):
        raise ValueError("acts: contains NaN or Inf values")
    cats = list(categories)
    if len(cats) < 2:
        raise ValueError(f"categories: need at least 2 categories to build directions; found {cats}")
    if len(set(cats)) != len(cats):
        raise ValueError(f"categories: has duplicates {cats}")
    ic = list(item_categories)
    if len(ic) != a.shape[0]:
        raise ValueError(
            f"item_categories: has {len(ic)} labels but acts has {a.shape[0]} rows; expected one label per row"
        )
    unknown = sorted({c for c in ic if c not in set(cats)})
    if unknown:
        raise ValueError(f"item_categories: unknown categor(y/ies) {unknown}; expected one of {cats}")
    idx = {c: [i for i, x in enumerate(ic) if x == c] for c in cats}
    empty = [c for c in cats if not idx[c]]
    if empty:
        raise ValueError(f"categories {empty} have no items in acts; every category needs at least one")
    return a, cats, idx


def category_distances(acts, item_categories: list[str], categories: list[str]) -> dict[tuple[str, str], float]:
    """L2 distance between category means of the unit-normalised activations, for every pair (i < j)."""
    a, cats, idx = _prepare(acts, item_categories, categories)
    unit = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    um = {c: unit[idx[c]].mean(0) for c in cats}
    return {(x, y): float((um[x] - um[y]).norm()) for x, y in itertools.combinations(cats, 2)}


def most_distant_pair(acts, item_categories: list[str], categories: list[str]) -> tuple[str, str]:
    """The pair ``(a, b)`` (``a`` first in category order) with the largest distance, see module doc."""
    dist = category_distances(acts, item_categories, categories)
    best, best_d = None, -1.0
    for pair, d in dist.items():  # combinations order: first pair wins ties
        if d > best_d:
            best, best_d = pair, d
    return best


def category_directions(acts: torch.Tensor, item_categories: list[str], categories: list[str]) -> list[dict]:
    """The seed's synthetic directions: list of ``{"name", "kind", "category", "vector"}``.

    ``vector`` is a float32 ``[d]`` tensor (computed in float64). Order: the ``self`` directions in
    category order, then the ``neg`` ones, then the two ``cross`` ones. Raises ValueError when fewer
    than 2 categories are given, a category has no items, or shapes/labels do not match.
    """
    a, cats, idx = _prepare(acts, item_categories, categories)
    mean_all = a.mean(0)
    means = {c: a[idx[c]].mean(0) for c in cats}
    out: list[dict] = []
    for c in cats:
        out.append({"name": f"{c}_vs_other", "kind": "self", "category": c,
                    "vector": (means[c] - mean_all).to(torch.float32)})
    for c in cats:
        out.append({"name": f"NEG_{c}_vs_other", "kind": "neg", "category": c,
                    "vector": (-(means[c] - mean_all)).to(torch.float32)})
    x, y = most_distant_pair(a, item_categories, cats)
    out.append({"name": f"{x}_minus_{y}", "kind": "cross", "category": x,
                "vector": (means[x] - means[y]).to(torch.float32)})
    out.append({"name": f"{y}_minus_{x}", "kind": "cross", "category": y,
                "vector": (means[y] - means[x]).to(torch.float32)})
    return out
