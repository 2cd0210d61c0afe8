"""Lazy package exports: a package lists ``name -> submodule`` and its names load on first use, so importing
one light submodule (e.g. ``nlalab.rundir.io``) does not import the heavy ones beside it."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package`` that imports ``package.<exports[name]>`` on demand."""

    def __getattr__(name: str) -> Any:
        mod = exports.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{mod}"), name)

    return __getattr__
