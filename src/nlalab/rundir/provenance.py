"""Provenance every result file records: package versions, git commit, Python, platform, device."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch


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
