"""The import graph of src/nlalab: no circles, and arrows that point down only (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "nlalab"

# Lower rank = lower in the pipeline; a module may import its own rank or below.
RANKS = {
    "errors": 0, "format": 0, "plotting": 0, "stats": 0, "metrics": 0, "batching": 0, "settings": 0, "rowstats": 0, "lazy": 0,
    "rundir": 1, "corpus": 1, "realmodels": 1, "vectors_io": 1,
    "pairs": 2, "scorers": 2,
    "capture": 3, "capture_reply": 3, "reconstruct": 3, "verbalize": 3, "testing": 3,
    "study": 4, "explain": 4, "train": 4, "export": 5, "progress": 0,
    "report": 5, "sweep": 6,
    "cli": 7, "__main__": 8, "__init__": 9,
}


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported nlalab module, names taken) for every import in the file, function bodies included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = _module(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("nlalab")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            if mod.startswith("nlalab"):
                out.append((mod, [a.name for a in node.names]))
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    g: dict[str, set[str]] = {m: set() for m in files}
    for m, p in files.items():
        for target, names in _imports(p):
            # "from nlalab.pkg import mod" imports the submodule when one exists
            cands = [f"{target}.{n}" for n in names if f"{target}.{n}" in files] or [target]
            for c in cands:
                while c not in files and "." in c:
                    c = c.rsplit(".", 1)[0]
                if c in files and c != m:
                    g[m].add(c)
    return g


def _top(m: str) -> str:
    parts = m.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_circles():
    g = _graph()
    # package __init__ files re-export their children: an edge child -> parent package is not a circle
    def deps(m):
        return {d for d in g[m] if not m.startswith(d + ".")}

    color: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        color[m] = 1
        stack.append(m)
        for d in sorted(deps(m)):
            if color.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in color:
                visit(d)
        stack.pop()
        color[m] = 2

    for m in sorted(g):
        if m not in color:
            visit(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_arrows_point_down():
    up = []
    for m, deps in _graph().items():
        top = _top(m)
        for d in deps:
            dt = _top(d)
            if dt == top or m.startswith(d + "."):
                continue
            assert top in RANKS and dt in RANKS, f"unranked package: {top} or {dt} (add it to RANKS)"
            if RANKS[dt] > RANKS[top]:
                up.append(f"{m} -> {d}")
    assert not up, "upward imports: " + ", ".join(sorted(up))


def test_no_private_names_across_packages():
    bad = []
    for p in SRC.rglob("*.py"):
        me = _module(p)
        for target, names in _imports(p):
            if _top(target) == _top(me):
                continue
            bad += [f"{me} imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "; ".join(bad)


def test_pairs_does_not_import_train_and_rundir_imports_nothing_above_it():
    for m, deps in _graph().items():
        if _top(m) == "pairs":
            assert not any(_top(d) == "train" for d in deps), m
        if _top(m) in ("rundir", "format", "plotting", "errors"):
            assert all(RANKS[_top(d)] <= RANKS["rundir"] for d in deps), (m, deps)
