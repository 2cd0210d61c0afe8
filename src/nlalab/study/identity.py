"""A run's identity: its result-changing settings and the content of every corpus item.

Why per-item hashes: a corpus edited in place and rerun into the same directory used to reuse the old
activations for the new text and record the new corpus hash (wrong numbers, exit 0). The choice made
here is to **refuse** such a rerun, naming the items that changed, were added or were removed, rather
than recompute only the changed items: B_rv, the permutation floors, the category directions and the
random-Gaussian norm are all computed over the whole item set, so a partial recompute would still mix
two corpora in one result. The fix is ``--overwrite`` (redo the run with the new corpus) or another
``--out``.

A failed start must not block the corrected command: ``config.json`` is written when a run starts
(:func:`record_started`) but is binding only once a stage has written output (:func:`is_binding`), so a
run that stopped on a bad flag or a model that failed to load can be rerun with other settings.

The pipeline calls, in this order, before any model loads::

    items = <the corpus after --limit-per-category>
    record = {"identity": cfg.identity(), "corpus": {..., **corpus_record(items)}, ...}
    check_identity(out, record, items, overwrite)   # UsageError (exit 2) on a mismatch
    record_started(out, record)                     # then the stages
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional

from nlalab.errors import NLALabError, UsageError
from nlalab.rundir.io import TMP_MARK, atomic_write_json

CONFIG = "config.json"
# Files whose presence makes a run directory's config.json binding (a stage wrote something).
OUTPUT_FILES = ("results.json", "samples.jsonl", "vectors.safetensors")
OUTPUT_DIRS = ("stages", "controls")
SHOW = 5  # ids named per kind of change in the message


def item_sha256(item) -> str:
    """sha256 of one item's canonical JSON (id, category, prompt; every byte of the prompt counts)."""
    row = {"id": item.id, "category": item.category, "prompt": item.prompt}
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def item_hashes(items: Iterable) -> list[list[str]]:
    """``[[id, sha256], ...]`` in corpus order (order matters: seeds and permutations follow it)."""
    return [[it.id, item_sha256(it)] for it in items]


def corpus_record(items: Iterable) -> dict:
    """The per-item part of ``config.json["corpus"]``."""
    return {"item_sha256": item_hashes(items)}


def is_binding(run_dir: str | Path) -> bool:
    """True once a stage has written output: only then does the saved config.json bind a rerun."""
    d = Path(run_dir)
    if any((d / f).is_file() for f in OUTPUT_FILES):
        return True
    for sub in OUTPUT_DIRS:
        for p in (d / sub).rglob("*") if (d / sub).is_dir() else ():
            if p.is_file() and TMP_MARK not in p.name and p.stat().st_size > 0:
                return True
    return False


def record_started(run_dir: str | Path, record: dict) -> None:
    """Write ``config.json`` for a run that is starting. It binds later reruns only once
    :func:`is_binding` holds, so a start that fails before any output blocks nothing."""
    atomic_write_json(Path(run_dir) / CONFIG, record)


def corpus_changes(old: list, new: list) -> dict[str, list[str]]:
    """``changed``, ``added``, ``removed`` ids and ``reordered`` (all ids, when only the order differs)."""
    o, n = {i: h for i, h in old}, {i: h for i, h in new}
    out = {
        "changed": [i for i, _ in new if i in o and o[i] != n[i]],
        "added": [i for i, _ in new if i not in o],
        "removed": [i for i, _ in old if i not in n],
        "reordered": [],
    }
    if not any(out.values()) and [i for i, _ in old] != [i for i, _ in new]:
        out["reordered"] = [i for i, _ in new]
    return out


def _names(ids: list[str]) -> str:
    more = f", ... (+{len(ids) - SHOW})" if len(ids) > SHOW else ""
    return ", ".join(ids[:SHOW]) + more


def describe_changes(ch: dict[str, list[str]]) -> str:
    parts = [f"{len(ch[k])} item(s) {k} ({_names(ch[k])})" for k in ("changed", "added", "removed") if ch[k]]
    if ch["reordered"]:
        parts.append("the same items in another order")
    return "; ".join(parts)


def _read_old(path: Path) -> dict:
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        raise NLALabError(f"{path}: unreadable, so this run's settings cannot be compared. Fix: pass --overwrite "
                          "to redo the run, or choose another --out.") from None
    if not isinstance(old, dict):
        raise NLALabError(f"{path}: not a run record. Fix: pass --overwrite to redo the run, or choose another --out.")
    return old


def check_identity(run_dir: str | Path, record: dict, items: Optional[Iterable], overwrite: bool) -> None:
    """Refuse to continue a run whose settings or corpus content differ from this invocation's.

    ``record``: the new run record (its ``identity`` is compared; a bare identity dict works too).
    ``items``: the corpus items this invocation will use (after any per-category limit). No-op with
    ``overwrite``, when there is no config.json, or when no stage has written output yet.
    """
    d = Path(run_dir)
    path = d / CONFIG
    if overwrite or not path.is_file() or not is_binding(d):
        return
    old = _read_old(path)
    new_id = record.get("identity", record)
    old_id = old.get("identity") or {}
    from nlalab.study.config import RunConfig

    defaults = RunConfig.identity_defaults()

    def same(k) -> bool:
        a, b = old_id.get(k, defaults.get(k)), new_id.get(k, defaults.get(k))
        if k == "controls" and isinstance(a, list) and isinstance(b, list):
            return sorted(a) == sorted(b)
        return a == b

    diff = sorted(k for k in set(old_id) | set(new_id) if not same(k))
    if diff:
        shown = ", ".join(f"{k}: {old_id.get(k)!r} -> {new_id.get(k)!r}" for k in diff[:SHOW])
        raise UsageError(f"{d} already holds a run with different settings ({shown}). Fix: choose another "
                         "--out, or pass --overwrite to redo it with the new settings.")
    if items is None:
        return
    items = list(items)
    old_corpus = old.get("corpus") or {}
    old_items = old_corpus.get("item_sha256")
    if old_items is None:
        # a run written before per-item hashes: the whole-corpus digest is all there is to compare
        from nlalab.corpus import corpus_digest

        if old_corpus.get("sha256") not in (None, corpus_digest(items)):
            raise UsageError(f"{d} holds a run of another version of the corpus {old_corpus.get('ref')!r} "
                             "(its content changed since). Fix: pass --overwrite to redo the run with the new "
                             "corpus, or choose another --out.")
        return
    ch = corpus_changes(old_items, item_hashes(items))
    if any(ch.values()):
        raise UsageError(f"{d} holds a run of another version of the corpus {old_corpus.get('ref')!r}: "
                         f"{describe_changes(ch)}; its activations and explanations belong to the old text. "
                         "Fix: pass --overwrite to redo the run with the new corpus, or choose another --out.")
