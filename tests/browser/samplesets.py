"""Synthetic runs for the sample-browser tests: deterministic rows whose right answers are known here."""

from __future__ import annotations

import math
import random

from nlalab.scorers.keyword import keyword_recall

CATS = ["chat", "code", "agent", "reasoning"]
WORDS = ["gravity", "orbit", "planet", "comet", "nebula", "quasar", "galaxy", "photon"]
FILLER = ["the", "a", "zzz", "noise", "word", "of"]
HOSTILE = ('explain </script><img src=x onerror="window.__pwned=1"> &amp; <b>bold</b> Gravity',
           "line\u2028sep\u2029 lone\ud800surrogate esc\x1b[0m orbit")


def synthetic_run(n_items: int = 1000, k: int = 5, seed: int = 0) -> dict:
    """``samples`` (n_items * k rows), ``categories`` and item-keyed ``controls``.

    Known features: rows whose index is 5 mod 700 hold "zebra"; item 123's prompt holds "unicorn"; cos is
    None every 97th row and fve_nrm NaN every 89th; item 7's first two samples are hostile markup and
    broken text; flags follow the row index (truncated 0 mod 3, missing_close_tag 0 mod 5, empty 0 mod 250,
    cjk_smell 7 mod 400).
    """
    rng = random.Random(seed)
    samples: list[dict] = []
    for i in range(n_items):
        pw = rng.sample(WORDS, 3)
        prompt = f"Explain the {pw[0]} of the {pw[1]} near {pw[2]}, item{i}" + (" unicorn" if i == 123 else "")
        for s in range(k):
            idx = len(samples)
            ew = rng.sample(WORDS, 2) + rng.sample(FILLER, 2)
            rng.shuffle(ew)
            expl = " ".join(w.capitalize() if rng.random() < 0.3 else w for w in ew)
            if idx % 700 == 5:
                expl += " zebra"
            if i == 7 and s < 2:
                expl = HOSTILE[s]
            samples.append({
                "item_id": f"it-{i:04d}", "category": CATS[i % 4], "prompt": prompt, "vector_index": i,
                "sample": s, "explanation": expl,
                "cos": None if idx % 97 == 0 else round(rng.uniform(-1, 1), 6),
                "fve_nrm": math.nan if idx % 89 == 0 else round(rng.uniform(-2, 1), 6),
                "recall": keyword_recall(prompt, expl),
                "truncated": idx % 3 == 0, "missing_close_tag": idx % 5 == 0, "empty": idx % 250 == 0,
                "cjk_smell": idx % 400 == 7,
            })
    controls = {
        "blind": [{"item_id": f"it-{i:04d}", "sample": 0, "explanation": f"blind guess {i} about {WORDS[i % 8]}"}
                  for i in range(n_items)],
        "random_gaussian": [{"item_id": f"it-{i:04d}", "sample": s, "explanation": f"random text {i}.{s}"}
                            for i in range(0, n_items, 10) for s in range(2)],
    }
    return {"samples": samples, "categories": list(CATS), "controls": controls}
