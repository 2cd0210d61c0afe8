"""Prompt corpora: the shipped, versioned ``seed50_v1`` and user files (.jsonl, .json, .csv).

A corpus is a list of :class:`Item` (id, category, prompt). Prompt text is kept exactly as written
(no stripping, no Unicode normalisation): the activation depends on every byte of it.

Loading rules, shared by all formats:

- every item needs a non-empty string ``prompt`` and ``category``; ``id`` is optional;
- a missing (or empty) id becomes ``f"{category}-{index:03d}"``, where ``index`` is the 1-based
  ordinal of the item among the items of the same category, in file order (stable for a given file);
- ids must be unique; keys other than ``id``/``category``/``prompt`` are ignored;
- any number of categories is allowed.

Every problem raises :class:`nlalab.errors.UsageError` (exit 2) naming the file, the line (or item/row),
what is wrong and how to fix it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from nlalab.errors import NLALabError, UsageError  # noqa: F401  (NLALabError: the documented base)

__all__ = [
    "Item",
    "CORPORA",
    "DEFAULT_CORPUS",
    "SUPPORTED_SUFFIXES",
    "load_corpus",
    "corpus_digest",
    "categories",
    "by_category",
]

#: Shipped corpora: name -> resource path inside the ``nlalab`` package.
CORPORA: dict[str, str] = {
    "seed50_v1": "data/corpus/seed50_v1.jsonl",
    "heldout4_v1": "data/corpus/heldout4_v1.jsonl",
}
DEFAULT_CORPUS = "seed50_v1"
SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv")
_FIELDS = ("id", "category", "prompt")


@dataclass(frozen=True)
class Item:
    """One corpus prompt."""

    id: str
    category: str
    prompt: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# Raw records: (where, dict) pairs, one per item, where ``where`` reads like "corpus.jsonl line 3".


def _raw_jsonl(text: str, src: str) -> list[tuple[str, Any]]:
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue  # blank lines are allowed (e.g. a trailing newline)
        where = f"{src} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(
                f"{where}: malformed JSON ({e.msg} at column {e.colno}). "
                'Fix: each line must be one JSON object, e.g. {"category": "chat", "prompt": "..."}.'
            ) from None
        out.append((where, obj))
    return out


def _raw_json(text: str, src: str) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(
            f"{src} line {e.lineno}: malformed JSON ({e.msg} at column {e.colno}). "
            "Fix: the file must be one JSON list of objects with 'prompt' and 'category'."
        ) from None
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = data["items"]  # tolerate {"items": [...]} wrappers
    if not isinstance(data, list):
        raise UsageError(
            f"{src}: the top-level JSON value is a {type(data).__name__}, expected a list of objects. "
            'Fix: write [{"category": "chat", "prompt": "..."}, ...].'
        )
    return [(f"{src} item {i} (list index {i - 1})", obj) for i, obj in enumerate(data, 1)]


def _raw_csv(text: str, src: str) -> list[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if header is None:
        return []
    header = [h.strip() if isinstance(h, str) else h for h in header]
    reader.fieldnames = header
    missing = [f for f in ("prompt", "category") if f not in header]
    if missing:
        raise UsageError(
            f"{src} line 1: the CSV header {header} lacks column(s) {missing}. "
            "Fix: the first row must name the columns, e.g. id,category,prompt (id is optional)."
        )
    out = []
    row = 0
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise UsageError(
                f"{src} line {reader.line_num}: malformed CSV ({e}). "
                "Fix: quote fields that contain commas, quotes or newlines."
            ) from None
        row += 1
        # line_num is the physical line where this record ended (records may span lines).
        where = f"{src} line {reader.line_num} (data row {row})"
        if None in rec:
            raise UsageError(
                f"{where}: the row has more fields than the header ({len(header)}). "
                'Fix: quote the prompt if it contains commas, e.g. "Hello, world".'
            )
        if all((v or "").strip() == "" for v in rec.values()):
            continue  # fully empty row
        # DictReader fills missing trailing fields with None: treat as absent.
        out.append((where, {k: v for k, v in rec.items() if v is not None}))
    return out


# ---------------------------------------------------------------------------------------------------


def _validate(raw: list[tuple[str, Any]], src: str) -> list[Item]:
    if not raw:
        raise UsageError(
            f"{src}: the corpus is empty (no items found). "
            "Fix: add at least one item with 'prompt' and 'category'."
        )
    per_cat: dict[str, int] = {}
    seen: dict[str, str] = {}
    items: list[Item] = []
    for where, obj in raw:
        if not isinstance(obj, dict):
            raise UsageError(
                f"{where}: found a JSON {type(obj).__name__}, expected an object. "
                'Fix: write {"category": "...", "prompt": "..."}.'
            )
        for field in ("prompt", "category"):
            if field not in obj or obj[field] is None:
                raise UsageError(
                    f"{where}: missing '{field}' (keys found: {sorted(obj)}). "
                    f"Fix: add a non-empty string '{field}' to this item."
                )
        for field in _FIELDS:
            if field in obj and obj[field] is not None and not isinstance(obj[field], str):
                raise UsageError(
                    f"{where}: '{field}' is a {type(obj[field]).__name__} ({obj[field]!r}), expected a string. "
                    f'Fix: quote it, e.g. "{field}": "{obj[field]}".'
                )
        prompt, cat = obj["prompt"], obj["category"]
        if not prompt.strip():
            raise UsageError(f"{where}: empty prompt. Fix: write the prompt text or delete this item.")
        if not cat.strip():
            raise UsageError(
                f"{where}: empty category. Fix: name the category, e.g. chat, code, agent or reasoning."
            )
        per_cat[cat] = per_cat.get(cat, 0) + 1
        item_id = obj.get("id")
        if item_id is None or not item_id.strip():
            item_id = f"{cat}-{per_cat[cat]:03d}"
        if item_id in seen:
            raise UsageError(
                f"{where}: duplicate id {item_id!r}, already used at {seen[item_id]}. "
                "Fix: give each item a unique id (or drop the ids to have them generated)."
            )
        seen[item_id] = where
        items.append(Item(id=item_id, category=cat, prompt=prompt))
    return items


def _parse(text: str, suffix: str, src: str) -> list[Item]:
    if text.startswith("\ufeff"):
        text = text[1:]  # tolerate a UTF-8 BOM (Excel CSV exports)
    parser = {".jsonl": _raw_jsonl, ".json": _raw_json, ".csv": _raw_csv}[suffix]
    return _validate(parser(text, src), src)


def _read_text(path: Path, src: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{src}: not valid UTF-8 (byte offset {e.start}). Fix: save the file as UTF-8."
        ) from None


def load_corpus(path: Union[str, Path, None] = None) -> list[Item]:
    """Load a corpus.

    ``path`` is ``None`` (the shipped :data:`DEFAULT_CORPUS`), the name of a shipped corpus in
    :data:`CORPORA` (e.g. ``"seed50_v1"``), or a file ending in ``.jsonl``, ``.json`` or ``.csv``.
    """
    if path is None:
        path = DEFAULT_CORPUS
    if isinstance(path, str) and path in CORPORA and not Path(path).exists():
        res = resources.files("nlalab")
        for part in CORPORA[path].split("/"):
            res = res / part
        src = f"shipped corpus {path!r} (nlalab/{CORPORA[path]})"
        return _parse(res.read_text(encoding="utf-8"), Path(CORPORA[path]).suffix, src)

    p = Path(path)
    src = str(p)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        what = f"unknown corpus file extension {p.suffix!r}" if p.suffix else (
            "no file extension, and not the name of a shipped corpus"
        )
        raise UsageError(
            f"{src}: {what}. Fix: pass a file ending in one of {list(SUPPORTED_SUFFIXES)}, "
            f"or a shipped corpus name: {sorted(CORPORA)}."
        )
    if not p.exists():
        raise UsageError(
            f"{src}: corpus file not found. Fix: check the path (relative paths are resolved from "
            f"{Path.cwd()}), or pass a shipped corpus name: {sorted(CORPORA)}."
        )
    if not p.is_file():
        raise UsageError(f"{src}: is a directory, not a corpus file. Fix: pass the file inside it.")
    return _parse(_read_text(p, src), suffix, src)


def _canonical(items: Iterable[Item]) -> bytes:
    rows = [{"id": it.id, "category": it.category, "prompt": it.prompt} for it in items]
    return json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def corpus_digest(items: Iterable[Item]) -> str:
    """Hex sha256 of the canonical JSON of ``items`` (ids, categories, prompts, in order).

    Canonical JSON: a list of ``{"category", "id", "prompt"}`` objects, keys sorted, no whitespace,
    UTF-8, non-ASCII kept as is. Order matters on purpose: permutation controls and seeds depend on
    item order, so two runs pair only if they used the same items in the same order.
    """
    return hashlib.sha256(_canonical(items)).hexdigest()


def categories(items: Iterable[Item]) -> list[str]:
    """Distinct categories in first-appearance order."""
    out: dict[str, None] = {}
    for it in items:
        out.setdefault(it.category, None)
    return list(out)


def by_category(items: Iterable[Item]) -> dict[str, list[Item]]:
    """Items grouped by category, categories in first-appearance order."""
    out: dict[str, list[Item]] = {}
    for it in items:
        out.setdefault(it.category, []).append(it)
    return out


def _main(argv: Optional[list[str]] = None) -> None:  # pragma: no cover - debugging aid
    import sys

    items = load_corpus((argv or sys.argv[1:] or [None])[0])
    for it in items:
        print(f"{it.id}\t{it.category}\t{it.prompt}")
    print(f"# {len(items)} items, digest {corpus_digest(items)}")


if __name__ == "__main__":  # pragma: no cover
    _main()
