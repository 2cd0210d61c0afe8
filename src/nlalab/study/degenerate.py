"""Degenerate data is named, not computed through.

Pure functions over activations and items that return typed warnings (code, message, affected ids) for
the terminal, results.json (:func:`merge_warnings`: ``warnings`` and ``data_warnings``) and the reports, and the rule for statistics that
such data leaves undefined: they are ``None`` (rendered ``n/a``), never a number that looks like a
result. Examples from issue 14: ``--position N`` at a chat-template token shared by every prompt gave
B_rv = 5.9e-33 and fve_nrm = -3.8e32; one-item categories gave zero-width CIs and p = 1.0.

Thresholds (each tested with a known answer in tests/unit/test_degenerate.py):

- ``BRV_MIN_REL = 1e-6``: B_rv relative to its scale (``b_rv * d / mse_scale**2``, which lies in [0, 1]
  and is ``1 - ||mean unit vector||^2``). Below it the activations have (almost) one direction; fve_nrm
  = 1 - mse/B_rv then divides bf16 rounding noise (relative error ~1e-3 per component) by ~0 and is
  meaningless, so B_rv is treated as undefined.
- ``IDENTICAL_RTOL = 1e-5``: two activations are identical when ``||a - b|| <= rtol * max(||a||, ||b||)``
  (fp32 rounding of equal inputs is ~1e-7 relative; real distinct prompts differ by > 1e-2).
- ``MIN_CATEGORY_ITEMS = 2``: a category with fewer items has no within-category spread, so its CI and
  its within-category permutation floor are undefined.
- a prompt is too long when its token count exceeds the model's context (``max_position_embeddings``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Sequence

import torch

BRV_MIN_REL = 1e-6
IDENTICAL_RTOL = 1e-5
MIN_CATEGORY_ITEMS = 2
NA = "n/a"
SHOW = 5

# warning codes (stable: results.json and reports key on them)
DEGENERATE_BRV = "degenerate_brv"
IDENTICAL_ACTIVATIONS = "identical_activations"
DUPLICATE_ACTIVATIONS = "duplicate_activations"
ZERO_VECTORS = "zero_vectors"
NONFINITE_VECTORS = "nonfinite_vectors"
PROMPT_TOO_LONG = "prompt_too_long"
SINGLE_ITEM_CATEGORY = "single_item_category"


@dataclass(frozen=True)
class DataWarning:
    """One named problem of the data: a stable ``code``, a one-line ``message`` and the affected ids."""

    code: str
    message: str
    ids: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _names(ids: Sequence) -> str:
    ids = [str(i) for i in ids]
    return ", ".join(ids[:SHOW]) + (f", ... (+{len(ids) - SHOW})" if len(ids) > SHOW else "")


# ---------------------------------------------------------------------------------- undefined -> None


def defined(x) -> Optional[float]:
    """A statistic as a float, or None where it is undefined (None, NaN or Inf)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def show(x, fmt: str = "+.3f") -> str:
    """How a statistic is displayed: formatted, or ``n/a`` where it is undefined."""
    v = defined(x)
    return NA if v is None else format(v, fmt)


# ---------------------------------------------------------------------------------------------- B_rv


def relative_brv(b_rv: float, mse_scale: float, d: int) -> float:
    """B_rv on the unit scale, in [0, 1]: ``1 - ||mean_i v_i/||v_i||||^2``."""
    return float(b_rv) * d / float(mse_scale) ** 2


def brv_is_degenerate(b_rv: Optional[float], mse_scale: float, d: int) -> bool:
    v = defined(b_rv)
    return v is None or v <= 0 or relative_brv(v, mse_scale, d) < BRV_MIN_REL


def usable_brv(b_rv: Optional[float], mse_scale: float, d: int) -> Optional[float]:
    """B_rv, or None when it is too small to divide by (then fve_nrm is n/a, not -3.8e32)."""
    return None if brv_is_degenerate(b_rv, mse_scale, d) else float(b_rv)


def check_brv(b_rv: Optional[float], mse_scale: float, d: int, source: str = "the run's activations") -> list[DataWarning]:
    if b_rv is None or not brv_is_degenerate(b_rv, mse_scale, d):
        return []
    rel = relative_brv(b_rv, mse_scale, d) if defined(b_rv) is not None else float("nan")
    return [DataWarning(DEGENERATE_BRV, f"B_rv = {float(b_rv):.3g} from {source} is degenerate (relative "
                        f"{rel:.3g} < {BRV_MIN_REL:g}: the vectors share one direction); fve_nrm is n/a. Fix: "
                        "capture at a position that differs between prompts, or pass --brv-reference.")]


# -------------------------------------------------------------------------------------- activations


def bad_vectors(acts: torch.Tensor, ids: Sequence) -> list[DataWarning]:
    """Rows with NaN/Inf, and all-zero rows (no direction: cos and fve undefined)."""
    out = []
    a = torch.as_tensor(acts)
    nonfinite = ~torch.isfinite(a).all(dim=-1)
    if nonfinite.any():
        bad = [ids[i] for i in nonfinite.nonzero().flatten().tolist()]
        out.append(DataWarning(NONFINITE_VECTORS, f"{len(bad)} activation(s) contain NaN or Inf ({_names(bad)}); "
                               "their metrics are n/a. Fix: run the target in bf16 or fp32, not fp16.", bad))
    zero = (a == 0).all(dim=-1) & ~nonfinite
    if zero.any():
        bad = [ids[i] for i in zero.nonzero().flatten().tolist()]
        out.append(DataWarning(ZERO_VECTORS, f"{len(bad)} activation(s) are all zeros ({_names(bad)}); their "
                               "cos and fve are n/a. Fix: capture at another --position.", bad))
    return out


def identical_groups(acts: torch.Tensor, rtol: float = IDENTICAL_RTOL) -> list[list[int]]:
    """Groups (size >= 2) of rows equal within ``rtol`` of the larger norm; rows in first-seen order."""
    a = torch.as_tensor(acts).double()
    n = a.shape[0]
    norms = a.norm(dim=-1)
    seen = torch.zeros(n, dtype=torch.bool)
    groups = []
    for start in range(0, n, 1024):  # chunked: memory O(1024 * n)
        dist = torch.cdist(a[start:start + 1024], a)
        close = dist <= rtol * torch.maximum(norms[start:start + 1024, None], norms[None, :])
        for r in range(close.shape[0]):
            i = start + r
            if seen[i]:
                continue
            members = close[r].nonzero().flatten()
            members = members[~seen[members]]
            if len(members) > 1:
                groups.append(members.tolist())
                seen[members] = True
    return groups


def check_identical(acts: torch.Tensor, ids: Sequence, position: str = "last",
                    rtol: float = IDENTICAL_RTOL) -> list[DataWarning]:
    """All activations identical (the position is a template token every prompt shares), or some groups."""
    a = torch.as_tensor(acts)
    ok = torch.isfinite(a).all(dim=-1) & ~(a == 0).all(dim=-1)
    keep = ok.nonzero().flatten().tolist()
    if len(keep) < 2:
        return []
    groups = [[keep[i] for i in g] for g in identical_groups(a[keep], rtol)]
    if len(groups) == 1 and len(groups[0]) == len(keep):
        return [DataWarning(IDENTICAL_ACTIVATIONS, f"all {len(keep)} activations at position {position} are "
                            "identical (a token every prompt shares, e.g. the chat template); every statistic "
                            "that compares items is n/a. Fix: use --position last or an index inside the prompt.",
                            [ids[i] for i in keep])]
    dup = [ids[i] for g in groups for i in g]
    if not dup:
        return []
    return [DataWarning(DUPLICATE_ACTIVATIONS, f"{len(groups)} group(s) of items have identical activations at "
                        f"position {position} ({_names(dup)}). Fix: check for duplicated prompts.", dup)]


# ------------------------------------------------------------------------------------ items, prompts


def prompts_too_long(n_tokens: dict, context: Optional[int]) -> list[DataWarning]:
    """Items whose token count exceeds the model's context length (``n_tokens``: id -> count)."""
    if not context:
        return []
    bad = [i for i, n in n_tokens.items() if n > context]
    if not bad:
        return []
    return [DataWarning(PROMPT_TOO_LONG, f"{len(bad)} prompt(s) are longer than the model's context of {context} "
                        f"tokens ({_names(bad)}); positions past it are undefined. Fix: shorten or drop them.", bad)]


def context_length(config) -> Optional[int]:
    """The context of a transformers config (text config of a wrapper), or None where it says none."""
    for c in (config, getattr(config, "text_config", None)):
        v = getattr(c, "max_position_embeddings", None) if c is not None else None
        if isinstance(v, int) and v > 0:
            return v
    return None


def small_categories(categories: Iterable[str], minimum: int = MIN_CATEGORY_ITEMS) -> dict[str, int]:
    """Categories with fewer than ``minimum`` items (their CI and within-category floor are n/a)."""
    counts = Counter(categories)
    return {c: n for c, n in counts.items() if n < minimum}


def check_categories(items: Sequence) -> list[DataWarning]:
    small = small_categories(it.category for it in items)
    if not small:
        return []
    ids = [it.id for it in items if it.category in small]
    return [DataWarning(SINGLE_ITEM_CATEGORY, f"{len(small)} categor{'y has' if len(small) == 1 else 'ies have'} "
                        f"fewer than {MIN_CATEGORY_ITEMS} items ({_names(list(small))}); their CIs and "
                        "within-category floors are n/a. Fix: add items to those categories.", ids)]


def scan(acts: torch.Tensor, items: Sequence, *, position: str = "last", b_rv: Optional[float] = None,
         mse_scale: Optional[float] = None, n_tokens: Optional[dict] = None,
         context: Optional[int] = None, brv_source: str = "the run's activations") -> list[DataWarning]:
    """Every check above, in one list (empty for healthy data)."""
    ids = [it.id for it in items]
    out = bad_vectors(acts, ids) + check_identical(acts, ids, position) + check_categories(items)
    if n_tokens:
        out += prompts_too_long(n_tokens, context)
    if b_rv is not None and mse_scale:
        out += check_brv(b_rv, mse_scale, int(torch.as_tensor(acts).shape[-1]), brv_source)
    return out


def merge_warnings(results: dict, warnings: Iterable[DataWarning]) -> dict:
    """Add the warnings to a results dict: their messages to ``results["warnings"]`` (the strings that
    the terminal summary and reports already print) and the typed records to ``results["data_warnings"]``
    (code, message, ids). Returns ``results``; a warning already there is not added twice."""
    ws = list(warnings)
    msgs = list(results.get("warnings") or [])
    results["warnings"] = msgs + [w.message for w in ws if w.message not in msgs]
    typed = list(results.get("data_warnings") or [])
    results["data_warnings"] = typed + [w.to_dict() for w in ws if w.to_dict() not in typed]
    return results


def _is_fve_key(k: str) -> bool:
    return k == "fve_nrm" or k.startswith("fve_nrm[") or k in ("fve_threshold", "gap_real_minus_this")


def _blank(v):
    """Every number in ``v`` undefined (None), its shape kept: counts (ints) and labels stay."""
    if isinstance(v, dict):
        return {k: (x if k in ("n", "n_items", "n_rows", "n_clusters", "metric") else _blank(x)) for k, x in v.items()}
    if isinstance(v, list):
        return [_blank(x) for x in v]
    if isinstance(v, float):
        return None
    if isinstance(v, str) and "fve_nrm" in v:
        return "n/a: B_rv is degenerate, so fve_nrm is undefined"
    return v


def without_fve_nrm(obj):
    """``obj`` (results, rows) with every fve_nrm value replaced by None: with a degenerate B_rv the
    statistic is undefined, and n/a is shown instead of a number that looks like a result. Verdicts that
    rest on fve_nrm say so."""
    if isinstance(obj, list):
        return [without_fve_nrm(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if isinstance(k, str) and _is_fve_key(k):
            out[k] = _blank(v)
        elif k == "verdicts" and isinstance(v, dict):  # the item-specific verdicts are about fve_nrm
            out[k] = {c: f"{c}: n/a (B_rv is degenerate, so fve_nrm is undefined)" for c in v}
        elif k in ("verdict", "verdict_cross") and isinstance(v, str) and "fve_nrm" in v:
            out[k] = "n/a: B_rv is degenerate, so fve_nrm and every verdict on it are undefined"
        else:
            out[k] = without_fve_nrm(v)
    if out.get("metric") == "fve_nrm":  # comparison rows of the random-Gaussian control
        out = {k: (v if k == "metric" else None) for k, v in out.items()}
    return out
