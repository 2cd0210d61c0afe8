"""Turn a local dir or a Hugging Face hub id into a local dir.

Local paths never touch the network. Hub downloads go through huggingface_hub (revision
pinning, token from HF_TOKEN as usual) and report gated/offline failures as one fixable line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from nlalab.errors import NLALabError, UsageError

# Files needed to check a checkpoint without its weights (validate).
LIGHT_PATTERNS = (
    "*.json", "*.yaml", "*.yml", "*.txt", "*.model", "*.jinja", "value_head.safetensors",
)


def resolve_dir(
    ref: str,
    revision: Optional[str] = None,
    allow_patterns: Optional[Sequence[str]] = None,
    what: str = "model",
) -> Path:
    """A local folder for ``ref``: the path itself, or a hub snapshot."""
    p = Path(ref).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise UsageError(f"{what} {ref!r} is a file; expected a checkpoint directory. Fix: pass its folder.")
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise UsageError(
            f"{what} {ref!r} is neither an existing directory nor a hub id of the form owner/name. "
            "Fix: check the path."
        )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise NLALabError(f"huggingface_hub is needed to download {ref!r}: {e}") from None
    try:
        return Path(
            snapshot_download(
                repo_id=ref,
                revision=revision,
                allow_patterns=list(allow_patterns) if allow_patterns else None,
                token=os.environ.get("HF_TOKEN") or None,
            )
        )
    except GatedRepoError:
        raise NLALabError(
            f"{what} {ref!r} is gated. Fix: accept its licence at https://huggingface.co/{ref} and set HF_TOKEN "
            "(or `huggingface-cli login`)."
        ) from None
    except RepositoryNotFoundError:
        raise NLALabError(f"{what} {ref!r} was not found on the hub (or is private). Fix: check the id.") from None
    except LocalEntryNotFoundError:
        raise NLALabError(
            f"{what} {ref!r} is not in the local cache and the hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1). Fix: download it on a connected machine, or pass a local directory."
        ) from None
    except Exception as e:  # network errors come in many types
        raise NLALabError(
            f"Could not download {what} {ref!r}: {type(e).__name__}: {e}. "
            "Fix: check the network / HF_TOKEN, or pass a local directory."
        ) from None


def revision_of(path: Path) -> Optional[str]:
    """The commit hash of a hub snapshot dir (…/snapshots/<hash>), else None."""
    parts = Path(path).resolve().parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None
