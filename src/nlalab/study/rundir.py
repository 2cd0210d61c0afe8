"""The run directory: atomic files, append-only JSONL that survives kill -9, and provenance.

Every whole-file output is written to a temp file and renamed. Incremental outputs are JSONL
appended one batch at a time and fsynced; on resume a torn last line is cut off, so a run killed
at any moment continues with no duplicated or lost rows.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import torch


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out, meta


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, jsonl_text(rows))


class JsonlLog:
    """Append-only rows; ``read()`` repairs a torn tail left by a crash mid-write."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        rows, good = [], 0
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            line = data[start:nl]
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good = nl + 1
            start = nl + 1
        if good != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return rows

    def append(self, rows: Iterable[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = jsonl_text(rows)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def git_commit() -> Optional[str]:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except Exception:
        pass
    return None


def environment() -> dict[str, Any]:
    """Package versions, git commit and device: the provenance every result file records."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("nlalab", "torch", "transformers", "tokenizers", "safetensors", "accelerate", "numpy",
                "huggingface_hub", "sentence-transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    dev = {"cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        dev["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    dev["cpu_threads"] = torch.get_num_threads()
    return {"versions": versions, "git_commit": git_commit(), "python": sys.version.split()[0],
            "platform": platform.platform(), "device": dev}
