"""PairSpec -> local directories (downloading from the hub only when a ref is not a local dir)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nlalab.pairs.hub import LIGHT_PATTERNS, resolve_dir, revision_of
from nlalab.pairs.registry import PairSpec
from nlalab.pairs.sidecar import read_sidecar


@dataclass
class PairDirs:
    av: Path
    ar: Path
    target: Optional[Path]
    layer: int
    spec: PairSpec

    def provenance(self) -> dict:
        """Ids and resolved revisions, for every result file."""
        s = self.spec
        return {
            "name": s.name,
            "av": {"ref": s.av, "revision": s.av_revision or revision_of(self.av), "path": str(self.av)},
            "ar": {"ref": s.ar, "revision": s.ar_revision or revision_of(self.ar), "path": str(self.ar)},
            "target": None if self.target is None else {
                "ref": s.target, "revision": s.target_revision or revision_of(self.target), "path": str(self.target)},
            "layer": self.layer,
        }


def resolve_pair(spec: PairSpec, light: bool = False, need_target: bool = True) -> PairDirs:
    """``light`` fetches only configs, tokenizers, sidecars and the value head (for validate)."""
    pat = LIGHT_PATTERNS if light else None
    av = resolve_dir(spec.av, spec.av_revision, pat, what="AV")
    ar = resolve_dir(spec.ar, spec.ar_revision, pat, what="AR")
    target = None
    if spec.target and need_target:
        target = resolve_dir(spec.target, spec.target_revision, pat, what="target")
    layer = spec.layer
    if layer is None:
        try:
            layer = read_sidecar(ar).layer
        except Exception:
            layer = None
    if layer is None:
        try:
            layer = read_sidecar(av).layer
        except Exception:
            layer = None
    if layer is None:
        from nlalab.errors import NLALabError

        raise NLALabError("The layer K is neither given (--layer) nor in the AR/AV sidecars.")
    return PairDirs(av=av, ar=ar, target=target, layer=int(layer), spec=spec)
