"""Which verbalizations count in the headline metrics (the reference's closing-tag policy).

kitft's RL marks a sample FAILED, scores it -2 and never passes it to the AR when the AV did not
complete it: no ``</explanation>`` (the extraction regex misses), or TRUNCATED at the token cap (even
with both tags), and an empty explanation carries nothing to reconstruct. Scoring such rows like
complete ones lets truncated decodes move the mean, so by default they leave the headline figures;
``score_incomplete=True`` keeps them (the old behaviour). The all-rows figures are always reported
beside the headline ones, with the excluded share per category.

Rows are dicts with the flags of ``nlalab.verbalize.extract.extract_explanation``
(``missing_close_tag``, ``truncated``, ``empty``); a row without a flag counts as not flagged.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

REASONS = ("missing_close_tag", "truncated", "empty")


def incomplete_reasons(row: Mapping) -> list[str]:
    """The flags that make ``row`` incomplete, in :data:`REASONS` order (empty list: complete)."""
    return [r for r in REASONS if bool(row.get(r, False))]


def is_incomplete(row: Mapping) -> bool:
    return bool(incomplete_reasons(row))


def headline_mask(rows: Sequence[Mapping], score_incomplete: bool = False) -> list[bool]:
    """True for rows that count in the headline metrics: complete rows, or every row with ``score_incomplete``."""
    if score_incomplete:
        return [True] * len(rows)
    return [not is_incomplete(r) for r in rows]


def excluded_share(rows: Sequence[Mapping], categories: Optional[Iterable[str]] = None,
                   category_key: str = "category") -> dict[str, dict]:
    """Per category (and ``"all"``): ``n``, ``excluded``, ``share`` (excluded / n; NaN for no rows) and the
    count per reason (a row with two flags counts under both reasons, once in ``excluded``).

    ``categories`` fixes the order and includes categories with no rows; default: the order seen.
    """
    cats = list(categories) if categories is not None else list(dict.fromkeys(r.get(category_key) for r in rows))
    out: dict[str, dict] = {}
    for c in [*cats, "all"]:
        sel = [r for r in rows if c == "all" or r.get(category_key) == c]
        flags = [incomplete_reasons(r) for r in sel]
        n_ex = sum(1 for f in flags if f)
        out[c] = {
            "n": len(sel),
            "excluded": n_ex,
            "share": n_ex / len(sel) if sel else math.nan,
            "by_reason": {r: sum(1 for f in flags if r in f) for r in REASONS},
        }
    return out


def headline_and_all(rows: Sequence[Mapping], keys: Sequence[str], score_incomplete: bool = False) -> dict:
    """Means of ``keys`` over the headline rows and over all rows, side by side (NaN when no row has a value)."""

    def mean(sel, k):
        vals = [float(r[k]) for r in sel if r.get(k) is not None and math.isfinite(float(r[k]))]
        return sum(vals) / len(vals) if vals else math.nan

    mask = headline_mask(rows, score_incomplete)
    head = [r for r, m in zip(rows, mask) if m]
    return {
        "headline": {k: mean(head, k) for k in keys},
        "all_rows": {k: mean(rows, k) for k in keys},
        "n_headline": len(head),
        "n_all": len(rows),
        "score_incomplete": bool(score_incomplete),
    }
