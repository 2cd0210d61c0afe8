"""Keyword recall (seed paper section 2.3) and category-lexicon hits (section 4.3).

Content words, exactly as the seed defines them ("alphanum, length >= 4, non-stopwords"):

1. tokens are maximal runs of ASCII alphanumerics, regex ``[A-Za-z0-9]+``. Everything else splits
   tokens: punctuation, underscores, dots and slashes (``requests.get`` -> ``requests``, ``get``;
   ``test_parse`` -> ``test``, ``parse``), and every non-ASCII character (``n²`` -> ``n``,
   ``café`` -> ``caf``);
2. tokens are lower-cased (after tokenising, so non-ASCII case folding cannot create ASCII letters);
3. tokens shorter than 4 characters are dropped;
4. stopwords are dropped (default: the shipped NLTK-style English list, ``data/stopwords_en.txt``).

Recall is ``|P ∩ E| / |P|`` over the *sets* of content words of prompt (P) and explanation (E).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Optional, Union

from nlalab.errors import NLALabError

__all__ = [
    "TOKEN_RE",
    "MIN_WORD_LEN",
    "tokens",
    "content_words",
    "keyword_recall",
    "keyword_hit",
    "lexicon_hits",
    "top_category",
    "load_stopwords",
    "load_lexicon",
    "LEXICONS",
]

TOKEN_RE = re.compile(r"[A-Za-z0-9]+")
MIN_WORD_LEN = 4

#: Shipped lexicons: name -> resource path inside the ``nlalab`` package.
LEXICONS: dict[str, str] = {"seed4_v1": "data/lexicons/seed4_v1.json"}
DEFAULT_LEXICON = "seed4_v1"
STOPWORDS_RESOURCE = "data/stopwords_en.txt"


def _resource(rel: str):
    res = resources.files("nlalab")
    for part in rel.split("/"):
        res = res / part
    return res


def _parse_stopwords(text: str) -> frozenset[str]:
    words = set()
    for line in text.splitlines():
        w = line.strip()
        if w and not w.startswith("#"):
            words.add(w.lower())
    return frozenset(words)


@lru_cache(maxsize=1)
def _shipped_stopwords() -> frozenset[str]:
    return _parse_stopwords(_resource(STOPWORDS_RESOURCE).read_text(encoding="utf-8"))


def load_stopwords(path: Union[str, Path, None] = None) -> frozenset[str]:
    """Stopwords, lower-cased: ``None`` -> the shipped English list; else a text file, one word a
    line, ``#`` lines and blank lines ignored."""
    if path is None:
        return _shipped_stopwords()
    p = Path(path)
    if not p.is_file():
        raise NLALabError(
            f"{p}: stopword file not found. Fix: check the path, or pass None for the shipped list."
        )
    return _parse_stopwords(p.read_text(encoding="utf-8"))


def tokens(text: str) -> list[str]:
    """All lower-cased ASCII-alphanumeric tokens of ``text``, in order, no filtering."""
    return [t.lower() for t in TOKEN_RE.findall(text)]


def content_words(text: str, stopwords: Optional[Iterable[str]] = None) -> set[str]:
    """The set of content words of ``text`` (see module docstring).

    ``stopwords=None`` uses the shipped list; pass an empty set to drop no stopwords. Stopwords
    are compared lower-cased.
    """
    stop = _shipped_stopwords() if stopwords is None else {w.lower() for w in stopwords}
    return {t for t in tokens(text) if len(t) >= MIN_WORD_LEN and t not in stop}


def keyword_recall(
    prompt: str, explanation: str, stopwords: Optional[Iterable[str]] = None
) -> Optional[float]:
    """``|P ∩ E| / |P|``, the share of the prompt's content words found in the explanation.

    Returns ``None``, not 0.0, when the prompt has no content words (e.g. "What is 2+2?"): the
    ratio is 0/0, undefined, and such pairs must be left out of means rather than counted as misses
    (a 0 would pull category means down for a reason unrelated to the explanation).
    """
    stop = _shipped_stopwords() if stopwords is None else frozenset(w.lower() for w in stopwords)
    p = content_words(prompt, stop)
    if not p:
        return None
    return len(p & content_words(explanation, stop)) / len(p)


def keyword_hit(
    prompt: str, explanation: str, stopwords: Optional[Iterable[str]] = None
) -> Optional[bool]:
    """At least one shared content word (the seed's "recall (>=1 hit)" column); ``None`` when the
    prompt has no content words, for the same reason as :func:`keyword_recall`."""
    r = keyword_recall(prompt, explanation, stopwords)
    return None if r is None else r > 0


def lexicon_hits(explanation: str, lexicon: dict[str, list[str]]) -> dict[str, int]:
    """Per category, how many distinct lexicon words occur in ``explanation``.

    Tokenisation is the same ``[A-Za-z0-9]+`` + lower-case as :func:`content_words`, but *without*
    the length >= 4 and stopword filters: lexicons hold short signal words on purpose (``sql``,
    ``git``, ``cli``, ``sum``). Matching is on whole tokens, so a lexicon entry must itself be one
    token (``node_modules`` can never match; list ``node`` or ``modules``). Each word counts at most
    once per explanation, however often it repeats.
    """
    words = set(tokens(explanation))
    return {cat: len(words & {w.lower() for w in lst}) for cat, lst in lexicon.items()}


def top_category(hits: dict[str, float]) -> Optional[str]:
    """The category with the most hits; ``None`` when all are zero or tied for first."""
    if not hits:
        return None
    best = max(hits.values())
    leaders = [c for c, v in hits.items() if v == best]
    return leaders[0] if best > 0 and len(leaders) == 1 else None


def check_lexicon(data: object, src: str, allow_overlap: bool) -> dict[str, list[str]]:
    shape = 'Fix: write {"version": 1, "categories": {"chat": ["article", ...], ...}}.'
    if not isinstance(data, dict) or not isinstance(data.get("categories"), dict):
        raise NLALabError(f"{src}: expected an object with a 'categories' object. {shape}")
    cats = data["categories"]
    if not cats:
        raise NLALabError(f"{src}: 'categories' is empty. {shape}")
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for cat, words in cats.items():
        if not isinstance(words, list) or not words:
            raise NLALabError(f"{src}: category {cat!r}: expected a non-empty list of words. {shape}")
        clean = []
        for w in words:
            if not isinstance(w, str) or not TOKEN_RE.fullmatch(w):
                raise NLALabError(
                    f"{src}: category {cat!r}: entry {w!r} is not a single ASCII alphanumeric word, so it "
                    "could never match (explanations are split on [A-Za-z0-9]+). Fix: split it into words "
                    "or remove it."
                )
            w = w.lower()
            if w in owner and owner[w] != cat and not allow_overlap:
                raise NLALabError(
                    f"{src}: the word {w!r} is in both {owner[w]!r} and {cat!r}; a shared word counts for "
                    "both categories and blurs the top-category call. Fix: keep it in one list (or pass "
                    "allow_overlap=True)."
                )
            owner.setdefault(w, cat)
            if w not in clean:
                clean.append(w)
        out[str(cat)] = clean
    return out


def load_lexicon(path: Union[str, Path, None] = None, *, allow_overlap: bool = False) -> dict[str, list[str]]:
    """Per-category keyword lexicons: ``None`` (or ``"seed4_v1"``) -> the shipped one; else a JSON
    file shaped ``{"version": 1, "categories": {"chat": [...], ...}}``. Words are lower-cased and
    must be single ``[A-Za-z0-9]+`` tokens; categories must not share words unless
    ``allow_overlap``."""
    if path is None:
        path = DEFAULT_LEXICON
    if isinstance(path, str) and path in LEXICONS and not Path(path).exists():
        src = f"shipped lexicon {path!r} (nlalab/{LEXICONS[path]})"
        text = _resource(LEXICONS[path]).read_text(encoding="utf-8")
    else:
        p = Path(path)
        src = str(p)
        if not p.is_file():
            raise NLALabError(
                f"{src}: lexicon file not found. Fix: check the path, or pass None for the shipped "
                f"lexicon (shipped: {sorted(LEXICONS)})."
            )
        text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise NLALabError(
            f"{src} line {e.lineno}: malformed JSON ({e.msg} at column {e.colno}). Fix: correct the JSON."
        ) from None
    return check_lexicon(data, src, allow_overlap)


def recall_matrix(prompts: list[str], explanations: list[str], stopwords=None) -> tuple:
    """``R[i, j] = keyword_recall(prompts[i], explanations[j])`` for all pairs, and the mask of prompts
    that have content words (rows with ``valid == False`` are 0 and must be left out, as recall is
    None there). Built from 0/1 content-word matrices over the prompts' vocabulary: one matrix product.
    """
    import numpy as np

    stop = None if stopwords is None else frozenset(w.lower() for w in stopwords)
    psets = [content_words(p, stop) for p in prompts]
    vocab = {w: k for k, w in enumerate(sorted(set().union(*psets)))} if psets else {}
    A = np.zeros((len(prompts), max(1, len(vocab))))
    for i, ws in enumerate(psets):
        for w in ws:
            A[i, vocab[w]] = 1.0
    B = np.zeros((len(explanations), max(1, len(vocab))))
    for j, e in enumerate(explanations):
        for w in content_words(e, stop):
            k = vocab.get(w)
            if k is not None:
                B[j, k] = 1.0
    sizes = A.sum(1)
    valid = sizes > 0
    R = (A @ B.T) / np.where(valid, sizes, 1.0)[:, None]
    return R, valid
