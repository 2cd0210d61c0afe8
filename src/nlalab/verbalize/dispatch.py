"""``verbalize``: K explanations per vector on one device or several.

One device runs :func:`nlalab.verbalize.generate.iter_rows` (the fast or the loop engine); several run it on
replicas through :mod:`nlalab.verbalize.parallel`. Kept apart from ``generate`` so that the parallel path
and the one-device path do not import each other.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import torch

from nlalab.errors import NLALabError
from nlalab.verbalize import backends
from nlalab.verbalize.backends import generation_threads
from nlalab.verbalize.generate import GenerationSettings, Verbalization, iter_rows, resolve_engine, to_records
from nlalab.verbalize.parallel import iter_parallel, note_single, resolve_devices


def verbalize(
    av,
    vectors: torch.Tensor,
    k: int = 1,
    settings: GenerationSettings = GenerationSettings(),
    vector_keys: Optional[Sequence[int]] = None,
    on_batch: Optional[Callable[[list[Verbalization]], None]] = None,
    skip: Optional[set[tuple[int, int]]] = None,
    progress: bool = False,
) -> list[Verbalization]:
    """K explanations per vector, ordered by (vector, sample).

    ``vector_keys`` name each vector's noise stream (default: its index), stream (settings.seed, key, sample);
    a (seed, key) pair gives that vector its own seed (a study's plan runs several jobs in one call); ``skip`` lists (vector, sample)
    pairs already done (resume); ``on_batch`` receives each finished batch (incremental writes).
    A CUDA out-of-memory halves the micro-batch and retries (per device).

    With several devices (``settings.devices``, see ``GenerationSettings``) the rows are split into one
    contiguous shard per device and run in parallel on replicas of the AV (``nlalab.verbalize.parallel``);
    ``on_batch`` is still called from this thread only, with the batches in (vector, sample) order, so
    the records and the order of incremental writes are those of a one-device run (a later shard's
    finished batches wait until the shards before it are written).
    """
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise NLALabError(f"verbalize needs a non-empty [n, d] tensor, got shape {tuple(vectors.shape)}.")
    if k < 1:
        raise NLALabError(f"k must be >= 1, got {k}.")
    n = vectors.shape[0]
    keys_v = list(range(n)) if vector_keys is None else [
        (int(x[0]), int(x[1])) if isinstance(x, tuple) else int(x) for x in vector_keys]
    todo = [(i, s) for i in range(n) for s in range(k) if not (skip and (i, s) in skip)]
    results: list[Verbalization] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="verbalize", unit="sample")
    engine = resolve_engine(settings.engine, av)
    if backends.capabilities(engine).tensor_parallel:  # one model over several devices: the backend's own
        devices, parallel = resolve_devices(None, av, engine), False  # processes (settings.devices names them)
    else:
        devices = resolve_devices(settings.devices, av, engine, n_rows=len(todo))
        parallel = devices != resolve_devices(None, av, engine)  # several devices, or another one than the AV's
    if parallel:  # the bar counts rows as workers finish them; records come in order below
        rows = iter_parallel(av, vectors, todo, keys_v, settings, engine, devices,
                             on_rows=bar.update if bar is not None else None)
    else:
        note_single(devices[0], len(todo), engine)
        rows = iter_rows(av, vectors, todo, keys_v, settings, engine)
    with contextlib.closing(rows), generation_threads(devices[0].type if len(devices) == 1 else "multi"):
        for vidx, sidx, toks, done in rows:
            recs = to_records(av, toks, done, vidx, sidx)
            results.extend(recs)
            if on_batch is not None:
                on_batch(recs)
            if bar is not None and not parallel:
                bar.update(len(recs))
    if bar is not None:
        bar.close()
    results.sort(key=lambda r: (r.vector_index, r.sample))
    return results
