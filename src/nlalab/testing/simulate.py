"""Synthetic study data with a known truth, to calibrate every verdict of nlalab by simulation.

The design defaults to the seed's: 4 categories of 13, 13, 12, 12 items (50 items), K = 3 samples per
item. Each generator takes a ``seed`` and returns the inputs the *real* analysis code takes, so a
calibration runs :func:`nlalab.study.analysis.analyze`, :func:`nlalab.study.recon_controls.recon_permutation`
and friends unchanged on data whose answer is known:

- :func:`simulate_rows`: sample rows (prompt, explanation, fve_nrm, cos, recall ...) for ``analyze``.
  ``item_content`` is the share of explanation words copied from the item's own prompt (item-specific
  content), ``category_content`` the share drawn from the category's vocabulary (category-level
  content), the rest are random words (no content). ``category_shift`` adds to the first category's
  fve_nrm (a true spread), ``run_shift`` to every row (a true change between runs). Item effects come
  from ``corpus_seed`` so several "runs" of one corpus share them, as runs of one pair do.
- :func:`simulate_vectors`: activations and K reconstructions per item for ``recon_permutation``;
  ``truth`` ``"none"`` (reconstructions unrelated to the activations), ``"category"`` (the category mean
  plus noise) or ``"item"`` (category mean plus ``effect`` times the item's own deviation).
- :func:`simulate_paired` : two paired item-level samples with a true mean difference (ladder gaps,
  grounding true − false, prefix full − first).
- :func:`simulate_direction_tops`: top lexicon categories for directions that hit their target with a
  chosen probability (direction alignment and negation symmetry).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["Design", "SEED_DESIGN", "simulate_rows", "simulate_vectors", "simulate_paired",
           "simulate_direction_tops", "CATEGORIES"]

CATEGORIES = ("chat", "code", "agent", "reasoning")


@dataclass(frozen=True)
class Design:
    """Items per category (one entry per category) and samples per item."""

    items_per_category: tuple = (13, 13, 12, 12)
    k: int = 3

    @property
    def categories(self) -> list[str]:
        n = len(self.items_per_category)
        return list(CATEGORIES[:n]) if n <= len(CATEGORIES) else [f"cat{i}" for i in range(n)]

    @property
    def n_items(self) -> int:
        return int(sum(self.items_per_category))

    def item_categories(self) -> list[str]:
        return [c for c, n in zip(self.categories, self.items_per_category) for _ in range(n)]


SEED_DESIGN = Design()

_VOCAB_PER_CATEGORY = 40
_PROMPT_WORDS = 6
_EXPL_WORDS = 8


def _word(rng: np.random.Generator) -> str:
    """A random lower-case pseudo word (letters only, 7 chars: never a stopword)."""
    return "".join(rng.choice(list(string.ascii_lowercase), size=7))


def _vocab(corpus_seed: int, cats: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    rng = np.random.default_rng([corpus_seed, 1])
    words = list(dict.fromkeys(_word(rng) for _ in range(_VOCAB_PER_CATEGORY * (len(cats) + 2) * 2)))
    per = {c: words[i * _VOCAB_PER_CATEGORY:(i + 1) * _VOCAB_PER_CATEGORY] for i, c in enumerate(cats)}
    noise = words[len(cats) * _VOCAB_PER_CATEGORY:]
    return per, noise


def simulate_rows(design: Design = SEED_DESIGN, seed: int = 0, *, corpus_seed: int = 0, item_content: float = 0.0,
                  category_content: float = 0.0, category_shift: float = 0.0, run_shift: float = 0.0,
                  item_sd: float = 0.05, sample_sd: float = 0.05, base_fve: float = 0.6,
                  with_text: bool = True) -> list[dict]:
    """Sample rows of one synthetic run (see the module docstring); keys as ``nlalab run`` writes them.
    ``with_text=False`` skips the explanation words and recall (numbers only: much faster)."""
    from nlalab.scorers.keyword import keyword_hit, keyword_recall

    cats = design.categories
    vocab, noise = _vocab(corpus_seed, cats)
    crng = np.random.default_rng([corpus_seed, 2])
    items = []
    for c, n in zip(cats, design.items_per_category):
        for i in range(n):
            words = list(crng.choice(vocab[c], size=_PROMPT_WORDS, replace=False))
            items.append({"id": f"{c}-{i:02d}", "category": c, "prompt": " ".join(words), "words": words,
                          "effect": float(crng.normal(0.0, item_sd))})
    rng = np.random.default_rng([seed, 3])
    rows = []
    for idx, it in enumerate(items):
        for k in range(design.k):
            u = rng.random(_EXPL_WORDS) if with_text else []
            expl = []
            for x in u:
                if x < item_content:
                    expl.append(str(rng.choice(it["words"])))
                elif x < item_content + category_content:
                    expl.append(str(rng.choice(vocab[it["category"]])))
                else:
                    expl.append(str(rng.choice(noise)))
            text = " ".join(expl) + "." if with_text else ""
            fve = base_fve + it["effect"] + run_shift + (category_shift if it["category"] == cats[0] else 0.0) \
                + float(rng.normal(0.0, sample_sd))
            rows.append({"item_id": it["id"], "category": it["category"], "prompt": it["prompt"], "sample": k,
                         "vector_index": idx, "explanation": text, "fve_nrm": fve, "fve_nrm_seed": fve,
                         "cos": 0.5 + 0.5 * fve, "mse_nrm": 1.0 - fve,
                         "recall": keyword_recall(it["prompt"], text) if with_text else None,
                         "hit": keyword_hit(it["prompt"], text) if with_text else None,
                         "truncated": False, "missing_close_tag": False, "empty": False, "cjk_smell": False})
    return rows


def simulate_vectors(design: Design = SEED_DESIGN, seed: int = 0, *, truth: str = "category", effect: float = 0.5,
                     d: int = 32, category_scale: float = 2.0, noise: float = 1.0):
    """``(acts [n, d], recon [n*K, d], row_items, item_cats, categories)`` with a known truth.

    Activations are ``category_scale * m_c + u_i`` (``m_c``, ``u_i`` standard normal). A reconstruction of
    item i is ``category_scale * m_c + effect * u_i + noise * e`` for ``truth="item"``, the same without the
    item term for ``"category"``, and pure noise for ``"none"``.
    """
    import torch

    if truth not in ("none", "category", "item"):
        raise ValueError(f"truth: expected 'none', 'category' or 'item'; found {truth!r}")
    g = torch.Generator().manual_seed(int(seed))
    cats = design.categories
    item_cats = design.item_categories()
    means = torch.randn(len(cats), d, generator=g, dtype=torch.float64) * category_scale
    ci = torch.tensor([cats.index(c) for c in item_cats])
    u = torch.randn(len(item_cats), d, generator=g, dtype=torch.float64)
    acts = means[ci] + u
    row_items = [i for i in range(len(item_cats)) for _ in range(design.k)]
    ri = torch.tensor(row_items)
    e = torch.randn(len(row_items), d, generator=g, dtype=torch.float64) * noise
    if truth == "none":
        recon = e + torch.randn(1, d, generator=g, dtype=torch.float64) * category_scale
    elif truth == "category":
        recon = means[ci[ri]] + e
    else:
        recon = means[ci[ri]] + effect * u[ri] + e
    return acts.float(), recon.float(), row_items, item_cats, cats


def simulate_paired(n: int = 50, seed: int = 0, *, diff: float = 0.0, item_sd: float = 0.1, noise_sd: float = 0.05,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Two item-level samples ``(a, b)`` sharing item effects, with ``mean(a - b) = diff`` in truth."""
    rng = np.random.default_rng(seed)
    item = rng.normal(0.0, item_sd, n)
    return item + diff + rng.normal(0.0, noise_sd, n), item + rng.normal(0.0, noise_sd, n)


def simulate_direction_tops(n_directions: int, categories: Sequence[str], seed: int = 0, *,
                            p_target: Optional[float] = None, targets: Optional[Sequence[str]] = None) -> list[str]:
    """Top lexicon category of each direction: the target with probability ``p_target``, otherwise one
    of the categories uniformly at random (``p_target=None``: uniform, the no-signal null)."""
    rng = np.random.default_rng(seed)
    cats = list(categories)
    targets = list(targets) if targets is not None else [cats[i % len(cats)] for i in range(n_directions)]
    out = []
    for t in targets[:n_directions]:
        if p_target is not None and rng.random() < p_target:
            out.append(t)
        else:
            out.append(cats[int(rng.integers(len(cats)))])
    return out
