"""Quote fidelity: of the spans the explanation puts in quotes, how many occur verbatim in the prompt?

The seed's confabulations often quote something ("... pattern 'J.R.R. Tolkien's famous novel "The Lord of
the Rings"' ...") that the prompt never said. A quoted span is the text between

- straight double quotes ``"..."``,
- curly double quotes ``“...”``,
- curly single quotes ``‘...’``,
- straight single quotes ``'...'`` when the opening quote is not preceded, and the closing quote not
  followed, by a letter or digit (so apostrophes in ``don't`` or ``Tolkien's`` do not open or close a span),

with at least 2 characters after whitespace normalisation. Spans do not cross their own kind of quote;
a span nested in another kind (``"the 'x' case"``) counts as a span of its own.

A span is *found* when its normalised text (case-folded, whitespace runs collapsed to one space,
stripped) is a substring of the equally normalised prompt. Score = found / number of spans; ``None``
when the explanation quotes nothing (left out of means: there is nothing to be faithful to).
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

__all__ = ["QuoteScorer", "quoted_spans", "quote_fidelity", "normalize", "MIN_SPAN_CHARS"]

MIN_SPAN_CHARS = 2

_PATTERNS = (
    re.compile(r'"([^"]+)"'),
    re.compile(r"“([^”]+)”"),
    re.compile(r"‘([^’]+)’"),
    re.compile(r"(?<![A-Za-z0-9])'([^']+)'(?![A-Za-z0-9])"),
)
_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Case-folded, whitespace runs collapsed to one space, stripped."""
    return _WS.sub(" ", str(text or "")).strip().casefold()


def quoted_spans(text: str) -> list[str]:
    """The normalised quoted spans of ``text`` (see module docstring), in pattern then position order."""
    out = []
    for pat in _PATTERNS:
        for m in pat.finditer(str(text or "")):
            span = normalize(m.group(1))
            if len(span) >= MIN_SPAN_CHARS:
                out.append(span)
    return out


def _fidelity(norm_prompt: str, spans: list[str]) -> Optional[float]:
    if not spans:
        return None
    return sum(1 for s in spans if s in norm_prompt) / len(spans)


def quote_fidelity(prompt: str, explanation: str) -> Optional[float]:
    """Share of the explanation's quoted spans found verbatim in the prompt; ``None`` without quotes."""
    return _fidelity(normalize(prompt), quoted_spans(explanation))


class QuoteScorer:
    name = "quote"
    metrics = ("fidelity",)
    labels = {"fidelity": "quote fidelity (quoted spans found verbatim in the prompt)"}

    def describe(self) -> dict:
        return {"spans": "text in \"...\", “...”, ‘...’ or word-bounded '...', >= 2 chars",
                "match": "case-insensitive, whitespace-normalised substring of the prompt",
                "undefined": "explanations without quoted spans (None, left out of means)"}

    def score(self, prompts: list[str], explanations: list[str]) -> list[Optional[float]]:
        from nlalab.scorers import _check_lengths

        _check_lengths(self.name, list(prompts), list(explanations))
        return [quote_fidelity(p, e) for p, e in zip(prompts, explanations)]

    def score_matrices(self, prompts: list[str], explanations: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{"fidelity": (S, W)}``: ``S[i, j]`` = fidelity of explanation j against prompt i; ``W[i, j]`` = 1
        when explanation j quotes anything (else the entry is undefined and left out)."""
        normp = [normalize(p) for p in prompts]
        spans = [quoted_spans(e) for e in explanations]
        S = np.zeros((len(prompts), len(explanations)))
        W = np.zeros_like(S)
        for j, sp in enumerate(spans):
            if not sp:
                continue
            W[:, j] = 1.0
            for i, p in enumerate(normp):
                S[i, j] = _fidelity(p, sp)
        return {"fidelity": (S, W)}

    def chance(self, n_candidates: int) -> dict[str, Optional[float]]:
        return {"fidelity": None}
