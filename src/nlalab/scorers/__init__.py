"""Pluggable prompt-vs-explanation scorers.

A scorer has a ``name`` and ``score(prompts, explanations) -> list[float | None]``, one value per
pair; ``None`` means "undefined for this pair" and is left out of means (never counted as 0).
Register new scorers in :data:`SCORERS`; look them up with :func:`get_scorer`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Protocol, runtime_checkable

from nlalab.errors import NLALabError
from nlalab.scorers.keyword import (
    content_words,
    keyword_hit,
    keyword_recall,
    lexicon_hits,
    load_lexicon,
    load_stopwords,
    top_category,
)

__all__ = [
    "Scorer",
    "KeywordScorer",
    "SCORERS",
    "DEFAULT_SCORER",
    "get_scorer",
    "content_words",
    "keyword_recall",
    "keyword_hit",
    "lexicon_hits",
    "top_category",
    "load_stopwords",
    "load_lexicon",
]


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, prompts: list[str], explanations: list[str]) -> list[Optional[float]]: ...


def _check_lengths(name: str, prompts: list[str], explanations: list[str]) -> None:
    if len(prompts) != len(explanations):
        raise NLALabError(
            f"scorer {name!r}: got {len(prompts)} prompts and {len(explanations)} explanations; "
            "expected one explanation per prompt. Fix: repeat each prompt once per sample (K) so "
            "the two lists line up."
        )


class KeywordScorer:
    """Keyword recall of the seed paper (section 2.3): ``|P ∩ E| / |P|`` per pair."""

    name = "keyword"

    def __init__(self, stopwords: Optional[Iterable[str]] = None):
        self.stopwords = load_stopwords() if stopwords is None else frozenset(w.lower() for w in stopwords)

    def score(self, prompts: list[str], explanations: list[str]) -> list[Optional[float]]:
        _check_lengths(self.name, prompts, explanations)
        return [keyword_recall(p, e, self.stopwords) for p, e in zip(prompts, explanations)]


def _embedding() -> Scorer:
    from nlalab.scorers.embedding import EmbeddingScorer

    return EmbeddingScorer()


def _retrieval() -> Scorer:
    from nlalab.scorers.retrieval import RetrievalScorer

    return RetrievalScorer()


def _quote() -> Scorer:
    from nlalab.scorers.quote import QuoteScorer

    return QuoteScorer()


#: name -> factory returning a :class:`Scorer`. ``keyword`` is the default headline metric (seed §2.3);
#: the content scorers load their modules (and the embedding model) only when asked for. Optional
#: extras a scorer may offer (used by :mod:`nlalab.scorers.rescore`): ``metrics`` (names of its
#: per-row values), ``score_matrices(prompts, explanations)`` (``{metric: (S, W)}``, all prompt x
#: explanation pairs, for the permutation floor), ``chance(n_candidates)`` and ``describe()``.
SCORERS: dict[str, Callable[[], Scorer]] = {
    "keyword": KeywordScorer,
    "embedding": _embedding,
    "retrieval": _retrieval,
    "quote": _quote,
}
DEFAULT_SCORER = "keyword"


def get_scorer(name: str) -> Scorer:
    """A fresh scorer by name; unknown names raise :class:`NLALabError` listing those available."""
    try:
        factory = SCORERS[name]
    except (KeyError, TypeError):
        raise NLALabError(
            f"unknown scorer {name!r}. Available: {sorted(SCORERS)}. Fix: pick one of those names."
        ) from None
    return factory()
