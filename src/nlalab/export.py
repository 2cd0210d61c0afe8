"""``nlalab export``: a run's samples as a table the ecosystem reads (parquet, CSV, JSONL, HF datasets).

One row per sample (item, category, prompt, explanation, reconstruction metrics, recall, failure flags, and
the ``score_<scorer>_<metric>`` columns of every ``nlalab score`` scorer the run holds).
The run's metadata travels with the table so an exported file still says what produced it: the
config, the pair, the corpus and its sha256, the results schema version and B_rv. It sits in the
parquet schema metadata (key ``nlalab``), in the HF dataset's ``info.description`` and, for every
format, in a ``<out>.meta.json`` sidecar (``nlalab_meta.json`` inside an HF dataset directory).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

from nlalab.errors import NLALabError, UsageError
from nlalab.rundir import layout
from nlalab.rundir.io import atomic_write_json, atomic_write_text, read_json, read_jsonl, tmp_path

FORMATS = ("parquet", "csv", "jsonl", "hf")
EXPORT_VERSION = 1
META_KEY = "nlalab"
# leading columns, in this order; every other field of samples.jsonl follows in first-seen order
LEAD = ("item_id", "category", "prompt", "vector_index", "sample", "explanation", "cos", "mse_nrm", "fve_nrm",
        "fve_nrm_seed", "recall", "hit", "n_words", "truncated", "missing_close_tag", "empty", "cjk_smell")
_EXT = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl", "hf": "hf"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nlalab")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def read_samples(run_dir: Union[str, Path]) -> tuple[list[dict], dict]:
    """The rows of ``samples.jsonl`` (every row has every column, None where absent) and the run's metadata,
    read through :func:`nlalab.rundir.load.load_run` (typed, schema-0 runs migrated)."""
    from nlalab.rundir.load import load_run

    run = layout.RunLayout(Path(run_dir))
    if not run.samples.is_file():
        raise UsageError(f"{run.root}: no {layout.SAMPLES}. Fix: give a run directory that `nlalab run` finished "
                         "(it writes samples.jsonl at the end).")
    loaded = load_run(run.root)
    rows = loaded.sample_dicts()
    record = loaded.config_dict()
    results = loaded.results_dict()
    scorers = _join_scorers(run, rows, results)
    cols = [c for c in LEAD if any(c in r for r in rows)]
    for r in rows:
        for c in r:
            if c not in cols:
                cols.append(c)
    table = [{c: r.get(c) for c in cols} for r in rows]
    meta = {
        "export_version": EXPORT_VERSION,
        "schema_version": results.get("schema_version", 0),
        "nlalab_version": _version(),
        "run_dir": str(run.root.resolve()),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n_rows": len(table),
        "columns": cols,
        "config": record.get("config"),
        "pair": record.get("pair"),
        "corpus": record.get("corpus"),
        "started_at": record.get("started_at"),
        "b_rv": results.get("b_rv"),
        "b_rv_source": results.get("b_rv_source"),
        "mse_scale": results.get("mse_scale"),
        "scorers": scorers,
    }
    return table, meta


def _join_scorers(run: layout.RunLayout, rows: list[dict], results: dict) -> list[str]:
    """Add ``score_<scorer>_<metric>`` columns from ``scores/<scorer>.jsonl`` (joined on item_id and sample)
    for every scorer results.json still lists (a rerun that changed the explanations drops stale ones)."""
    names = []
    for name in sorted(results.get("scorers") or {}):
        path = run.scorer_rows(name)
        if not path.is_file():
            continue
        by_key = {(str(r["item_id"]), int(r["sample"])): r for r in read_jsonl(path)}
        if len(by_key) != len(rows) or any((str(r["item_id"]), int(r["sample"])) not in by_key for r in rows):
            continue  # written for other samples: not joinable row by row
        for r in rows:
            rec = by_key[(str(r["item_id"]), int(r["sample"]))]
            for k, v in rec.items():
                if k not in ("item_id", "sample", "category"):
                    r[f"score_{name}_{k}"] = v
        names.append(name)
    return names


def default_out(run_dir: Path, fmt: str) -> Path:
    return Path(run_dir) / "export" / (f"samples_{fmt}" if fmt == "hf" else f"samples.{_EXT[fmt]}")


def meta_path(out: Path, fmt: str) -> Path:
    """Where the metadata sidecar of an export lives."""
    return out / "nlalab_meta.json" if fmt == "hf" else out.with_name(out.name + ".meta.json")


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--format needs the Python package {module.split('.')[0]!r}. Fix: "
                         "pip install 'nlalab[export]' (pandas, pyarrow, datasets).") from None


def _csv_text(rows: list[dict], cols: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v)
                    for c, v in r.items()})
    return buf.getvalue()


def _write_parquet(rows: list[dict], meta: dict, out: Path) -> None:
    pa = _need("pyarrow")
    pq = _need("pyarrow.parquet")
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           META_KEY.encode(): json.dumps(meta, default=str).encode()})
    tmp = tmp_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(tmp))
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise NLALabError(f"{out}: cannot write ({e.strerror or e}). Fix: choose a writable --out.") from None


def _write_hf(rows: list[dict], meta: dict, out: Path) -> None:
    datasets = _need("datasets")
    info = datasets.DatasetInfo(description=json.dumps(meta, default=str))
    ds = datasets.Dataset.from_list(rows, info=info)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds.save_to_disk(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise NLALabError(f"{out}: cannot write ({e.strerror or e}). Fix: choose a writable --out.") from None


def export_run(run_dir: Union[str, Path], fmt: str = "parquet", out: Optional[Union[str, Path]] = None, *,
               overwrite: bool = False) -> Optional[Path]:
    """Write the run's samples as ``fmt`` to ``out`` (``"-"``: stdout, csv/jsonl only); returns the path."""
    if fmt not in FORMATS:
        raise UsageError(f"Unknown --format {fmt!r}. Fix: use one of {', '.join(FORMATS)}.")
    run_dir = Path(run_dir)
    to_stdout = str(out) == "-"
    if to_stdout and fmt not in ("csv", "jsonl"):
        raise UsageError(f"--out - (stdout) works for csv and jsonl, not {fmt}. Fix: give a path.")
    path = None if to_stdout else (Path(out) if out is not None else default_out(run_dir, fmt))
    if path is not None and path.exists() and not overwrite:
        raise UsageError(f"{path} exists. Fix: pass --overwrite to replace it, or choose another --out.")
    if path is not None and fmt == "hf" and path.exists() and not (path / "dataset_info.json").is_file():
        raise UsageError(f"{path} exists and is not a saved dataset; refusing to replace it. Fix: choose another "
                         "--out.")
    rows, meta = read_samples(run_dir)
    cols = meta["columns"]
    if to_stdout:
        text = _csv_text(rows, cols) if fmt == "csv" else "".join(
            json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
        sys.stdout.write(text)
        sys.stdout.flush()
        return None
    assert path is not None
    if fmt == "parquet":
        _write_parquet(rows, meta, path)
    elif fmt == "hf":
        _write_hf(rows, meta, path)
    elif fmt == "csv":
        atomic_write_text(path, _csv_text(rows, cols))
    else:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
    atomic_write_json(meta_path(path, fmt), meta)
    return path


def read_export_meta(path: Union[str, Path], fmt: Optional[str] = None) -> dict[str, Any]:
    """The metadata of an export: from the parquet schema when it is one, else from its sidecar."""
    path = Path(path)
    fmt = fmt or ("hf" if path.is_dir() else path.suffix.lstrip("."))
    if fmt == "parquet":
        pq = _need("pyarrow.parquet")
        md = pq.read_schema(str(path)).metadata or {}
        if META_KEY.encode() in md:
            return json.loads(md[META_KEY.encode()])
    return read_json(meta_path(path, fmt))


__all__ = ["FORMATS", "default_out", "export_run", "meta_path", "read_export_meta", "read_samples"]
