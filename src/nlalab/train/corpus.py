"""A real, offline training corpus: text shipped inside installed PyPI packages, mixed by category.

Why: NLA training needs raw text (activations at random positions >= 50) plus chat prompts (the
study's capture position), and it must run where no hub or web is reachable. Every installed
package ships real text: its Python source (code), docstrings and README (English documentation),
and its licence. From those we assemble five categories:

- ``code``: chunks of Python source, at line boundaries.
- ``docs``: README / long descriptions and long docstrings (English technical prose).
- ``chat``: user/assistant conversations (``format: messages``) whose user turn is a templated
  question about a real function or snippet and whose assistant turn is that function's real
  docstring; plus user prompts alone (``format: prompt``) for last-token chat-template activations.
- ``agent``: agent transcripts (task, thought, shell action, observation) built around real files,
  real line numbers and real source lines of the packages.
- ``reasoning``: worked problems with step-by-step solutions generated here (arithmetic, algebra,
  rates, percentages, ordering logic; answers computed, so always correct) and docstrings of the
  math packages (sympy, mpmath, networkx) that carry worked ``>>>`` examples.

The templated categories (chat, agent, synthetic reasoning) are *synthetic wrappers around real
text*; ``corpus.yaml`` says so, and records each package's version, licence (metadata) and licence
files. The nlalab evaluation prompts (``seed50_v1``) are excluded unless asked for: training on the
study's own prompts would leak the evaluation set.

:func:`generate_corpus` is the other option: the base model writes documents and prompts from topic
prompts (on a GPU; the pilot in device-notes did this for prompts).

One module (~720 lines): the offline training corpus builders (mined package text, synthetic tasks, generation
by the base model, dedup and split) share one row format and provenance record.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata as md
import inspect
import json
import random
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import yaml

from nlalab.batching import left_padded
from nlalab.errors import NLALabError

CATEGORIES = ("chat", "code", "agent", "reasoning", "docs")
# Permissively licensed packages that nlalab itself installs (directly or as dependencies).
DEFAULT_PACKAGES = (
    "transformers", "torch", "numpy", "sympy", "mpmath", "networkx", "jinja2", "pydantic", "rich", "typer",
    "click", "tqdm", "PyYAML", "huggingface_hub", "safetensors", "accelerate", "pygments", "filelock", "fsspec",
    "markdown-it-py", "packaging", "regex", "scipy", "pandas", "matplotlib", "scikit-learn",
    "sentence-transformers",
)
MATH_PACKAGES = ("sympy", "mpmath", "networkx", "scipy")
# Default mix of the raw-text documents (fractions of n_docs).
DEFAULT_MIX = {"code": 0.25, "docs": 0.25, "chat": 0.2, "agent": 0.15, "reasoning": 0.15}
STDLIB_MODULES = (
    "argparse", "asyncio", "collections", "concurrent", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "email", "fractions", "functools", "http", "importlib", "inspect", "json", "logging", "pathlib",
    "random", "shutil", "statistics", "string", "subprocess", "textwrap", "threading", "typing", "unittest",
    "urllib", "xml", "zipfile",
)
CORPUS_VERSION = 1


@dataclass
class Source:
    """One provenance record: where text came from and under which licence."""

    name: str
    version: str = ""
    license: str = ""
    license_files: list[str] = field(default_factory=list)
    kind: str = "pypi"  # pypi | stdlib | synthetic | base-model | file
    docs: dict[str, int] = field(default_factory=dict)


def _digest(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()[:8], "little")


def dist_license(dist) -> str:
    """The licence as declared in the package metadata (expression, classifier or short License field)."""
    m = dist.metadata
    lic = (m.get("License-Expression") or "").strip()
    if lic:
        return lic
    cls = [c.split("::")[-1].strip() for c in (m.get_all("Classifier") or []) if c.startswith("License ::")]
    if cls:
        return "; ".join(cls)
    raw = (m.get("License") or "").strip()
    if raw and len(raw) <= 80 and "\n" not in raw:
        return raw
    return (raw.splitlines()[0][:80] + " (see licence file)") if raw else "unknown (see licence file)"


def _license_files(dist) -> list[str]:
    out = []
    for f in dist.files or []:
        s = str(f)
        up = s.upper()
        if (".dist-info" in s) and ("LICEN" in up or "COPYING" in up or "NOTICE" in up):
            out.append(s)
    return sorted(out)[:8]


# ----------------------------------------------------------------------------------------- mining


@dataclass
class _Mined:
    source: Source
    code: list[tuple[str, str]] = field(default_factory=list)  # (origin, text)
    docstrings: list[tuple[str, str, str]] = field(default_factory=list)  # (origin, qualname, docstring)
    readme: str = ""
    license_text: str = ""
    functions: list[tuple[str, str, int, str]] = field(default_factory=list)  # (origin, name, lineno, source)


def _py_files(dist, max_files: int, seed: int) -> list[Path]:
    files = sorted(str(f) for f in (dist.files or []) if str(f).endswith(".py") and "/tests/" not in str(f)
                   and "/test_" not in str(f) and not str(f).startswith("../"))
    if not files:
        return []
    rng = random.Random(_digest(seed, dist.metadata["Name"], "files"))
    pick = files if len(files) <= max_files else sorted(rng.sample(files, max_files))
    return [Path(dist.locate_file(f)) for f in pick]


def _chunks(text: str, max_chars: int, min_chars: int) -> list[str]:
    """Split at line boundaries into pieces of at most ``max_chars``, dropping pieces under ``min_chars``."""
    out, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        if n + len(line) > max_chars and cur:
            out.append("".join(cur))
            cur, n = [], 0
        cur.append(line[:max_chars])
        n += len(line)
    if cur:
        out.append("".join(cur))
    return [c.strip("\n") for c in out if len(c.strip()) >= min_chars]


def _strip_header(text: str) -> str:
    """Drop the leading comment block (licence headers are the same in every file of a package)."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        i += 1
    return "".join(lines[i:])


def _mine_file(path: Path, origin: str, mined: _Mined, max_chars: int, min_chars: int, code_chunks: int) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if not text.strip() or "\x00" in text:
        return
    mined.code.extend((origin, c) for c in _chunks(_strip_header(text), max_chars, min_chars)[:code_chunks])
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return
    lines = text.splitlines()
    mod_doc = ast.get_docstring(tree)
    if mod_doc and len(mod_doc) >= min_chars:
        mined.docstrings.append((origin, "module", inspect.cleandoc(mod_doc)))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= min_chars // 2:
                mined.docstrings.append((origin, node.name, inspect.cleandoc(doc)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("__"):
                end = getattr(node, "end_lineno", node.lineno)
                src = "\n".join(lines[node.lineno - 1:min(end, node.lineno + 40)])
                if 80 <= len(src) <= max_chars:
                    mined.functions.append((origin, node.name, node.lineno, src))


def mine_package(name: str, *, max_files: int = 40, max_chars: int = 1500, min_chars: int = 200,
                 code_chunks_per_file: int = 2, seed: int = 42) -> Optional[_Mined]:
    """Source chunks, docstrings, functions, README and licence of one installed distribution (None if absent)."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    src = Source(name=dist.metadata["Name"], version=dist.version, license=dist_license(dist),
                 license_files=_license_files(dist))
    mined = _Mined(source=src)
    mined.readme = (dist.metadata.get("Description") or dist.metadata.get_payload() or "").strip()
    for lf in src.license_files[:1]:
        try:
            mined.license_text = Path(dist.locate_file(lf)).read_text(encoding="utf-8", errors="replace")
        except OSError:
            pass
    for p in _py_files(dist, max_files, seed):
        origin = str(p).split("site-packages/")[-1]
        _mine_file(p, origin, mined, max_chars, min_chars, code_chunks_per_file)
    return mined


def mine_stdlib(modules: Sequence[str] = STDLIB_MODULES, *, max_chars: int = 1500, min_chars: int = 200,
                code_chunks_per_file: int = 2) -> _Mined:
    root = Path(sysconfig.get_paths()["stdlib"])
    src = Source(name="python-stdlib", version=sys.version.split()[0], license="PSF-2.0", kind="stdlib",
                 license_files=["LICENSE.txt of the Python distribution"])
    mined = _Mined(source=src)
    for mod in modules:
        p = root / f"{mod}.py"
        files = [p] if p.is_file() else sorted((root / mod).glob("*.py"))[:6] if (root / mod).is_dir() else []
        for f in files:
            _mine_file(f, f"stdlib/{f.relative_to(root)}", mined, max_chars, min_chars, code_chunks_per_file)
    return mined


# ----------------------------------------------------------------------------- document builders


def _first_paragraph(doc: str) -> str:
    return doc.strip().split("\n\n")[0].replace("\n", " ").strip()


def _doc_prose(doc: str) -> str:
    """Docstring prose without parameter tables (numpy/Google sections) — keeps the English part."""
    out = []
    for para in doc.split("\n\n"):
        if re.match(r"^\s*(Parameters|Returns|Yields|Raises|Examples?|See Also|Notes|Attributes|Args|"
                    r"References)\s*\n\s*-{3,}", para) or re.match(r"^\s*(Args|Returns|Raises|Example):", para):
            break
        out.append(para)
    return "\n\n".join(out).strip()


_CHAT_QUESTIONS = (
    "What does `{name}` in `{module}` do?",
    "Can you explain the purpose of `{name}` from the {package} library?",
    "I'm reading the {package} source and found `{name}`. What is it for?",
    "How would you describe what `{module}.{name}` does, in plain words?",
    "Explain this code to me:\n\n```python\n{snippet}\n```",
    "What is this function doing?\n\n```python\n{snippet}\n```",
)
_CHAT_PROMPTS = (
    "What does `{name}` in `{module}` do?",
    "Explain the function `{name}` from {package}.",
    "Write a short docstring for this function:\n\n```python\n{snippet}\n```",
    "Find the bug in this code, if there is one:\n\n```python\n{snippet}\n```",
    "Summarise the following paragraph in one sentence:\n\n{paragraph}",
    "Rewrite this text to be easier to read:\n\n{paragraph}",
    "Is `{name}` part of the public API of {package}? How do I use it?",
    "Translate this description into simple English: {summary}",
)
_AGENT_PROMPTS = (
    "In the {package} repository, find where `{name}` is defined and add a unit test for it.",
    "The test for `{name}` in {origin} fails after the last change. Locate the cause and fix it.",
    "Refactor `{name}` in {origin} so that it has a docstring and type hints; keep behaviour unchanged.",
    "Search the codebase for all callers of `{name}` and list the files that use it.",
)


def _module_of(origin: str) -> str:
    mod = origin.replace("stdlib/", "").removesuffix(".py").replace("/", ".")
    return mod.removesuffix(".__init__")


def _fmt(t: str, **kw) -> str:
    return t.format(**kw)


def _chat_docs(m: _Mined, rng: random.Random, n: int) -> list[dict]:
    """Conversations: a templated user question about a real function, answered by its real docstring."""
    funcs = {(o, nm): src for o, nm, _, src in m.functions}
    cands = [(o, q, d) for o, q, d in m.docstrings if q != "module" and len(_doc_prose(d)) >= 120]
    rng.shuffle(cands)
    out = []
    for origin, name, doc in cands[:n]:
        snippet = funcs.get((origin, name), "")
        tmpl = rng.choice(_CHAT_QUESTIONS if snippet else _CHAT_QUESTIONS[:4])
        q = _fmt(tmpl, name=name, module=_module_of(origin), package=m.source.name, snippet=snippet[:800])
        ans = _doc_prose(doc)
        lead = rng.choice(("", "Sure. ", "Good question! ", "In short: "))
        out.append({"format": "messages", "category": "chat", "origin": origin,
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": lead + ans}]})
    return out


def _chat_prompts(m: _Mined, rng: random.Random, n: int) -> list[dict]:
    funcs = list(m.functions)
    docs = [(o, q, d) for o, q, d in m.docstrings if len(_doc_prose(d)) >= 120]
    out = []
    for _ in range(n):
        if not funcs and not docs:
            break
        use_agent = rng.random() < 0.25 and funcs
        if use_agent:
            o, nm, _, src = rng.choice(funcs)
            text = _fmt(rng.choice(_AGENT_PROMPTS), package=m.source.name, name=nm, origin=o)
            cat = "agent"
        elif docs and (rng.random() < 0.5 or not funcs):
            o, nm, d = rng.choice(docs)
            para = _doc_prose(d).split("\n\n")[0][:600]
            text = _fmt(rng.choice(_CHAT_PROMPTS), name=nm, module=_module_of(o), package=m.source.name,
                        snippet=para, paragraph=para, summary=_first_paragraph(d)[:300])
            if "```python" in text:  # a prose paragraph is not code: use a prose template instead
                text = _fmt(_CHAT_PROMPTS[4], paragraph=para)
            cat = "chat"
        else:
            o, nm, _, src = rng.choice(funcs)
            text = _fmt(rng.choice(_CHAT_PROMPTS[:4]), name=nm, module=_module_of(o), package=m.source.name,
                        snippet=src[:800], paragraph="", summary="")
            cat = "code"
        out.append({"format": "prompt", "category": cat, "text": text, "origin": "templated"})
    return out


def _agent_docs(m: _Mined, rng: random.Random, n: int) -> list[dict]:
    """ReAct-style transcripts around a real function: grep with its real line number, then its source."""
    funcs = list(m.functions)
    rng.shuffle(funcs)
    out = []
    for origin, name, lineno, src in funcs[:n]:
        task = _fmt(rng.choice(_AGENT_PROMPTS), package=m.source.name, name=name, origin=origin)
        first = src.splitlines()[0].strip()
        style = rng.random()
        if style < 0.5:
            text = (
                f"Task: {task}\n\n"
                f"Thought: I should find where `{name}` is defined before changing anything.\n"
                f"Action: grep -n \"def {name}\" {origin}\n"
                f"Observation: {lineno}:{first}\n\n"
                f"Thought: The definition is at line {lineno}. Let me read the function body.\n"
                f"Action: sed -n '{lineno},{lineno + len(src.splitlines()) - 1}p' {origin}\n"
                f"Observation:\n{src}\n\n"
                f"Thought:"
            )
        else:
            call = json.dumps({"tool": "read_file", "arguments": {"path": origin, "start_line": lineno}})
            text = (
                f"[user] {task}\n"
                f"[assistant] I'll start by locating `{name}`.\n"
                f"[tool_call] {json.dumps({'tool': 'search', 'arguments': {'query': 'def ' + name}})}\n"
                f"[tool_result] {origin}:{lineno}: {first}\n"
                f"[tool_call] {call}\n"
                f"[tool_result]\n{src}\n"
                f"[assistant] The function `{name}`"
            )
        out.append({"format": "text", "category": "agent", "origin": origin, "text": text})
    return out


def _docs_docs(m: _Mined, rng: random.Random, n: int, max_chars: int, min_chars: int) -> list[dict]:
    pieces: list[tuple[str, str]] = []
    if m.readme:
        pieces.extend(("README/METADATA", c) for c in _chunks(m.readme, max_chars, min_chars))
    if m.license_text:
        pieces.extend(("licence file", c) for c in _chunks(m.license_text, max_chars, min_chars)[:1])
    long_docs = [(o, d) for o, _, d in m.docstrings if len(d) >= min_chars]
    rng.shuffle(long_docs)
    pieces.extend((o, d[:max_chars]) for o, d in long_docs)
    return [{"format": "text", "category": "docs", "origin": o, "text": t} for o, t in pieces[:n]]


def _math_docs(m: _Mined, rng: random.Random, n: int, max_chars: int) -> list[dict]:
    docs = [(o, d) for o, _, d in m.docstrings if ">>>" in d and len(d) >= 300]
    rng.shuffle(docs)
    return [{"format": "text", "category": "reasoning", "origin": o, "text": d[:max_chars]} for o, d in docs[:n]]


def _code_docs(m: _Mined, rng: random.Random, n: int) -> list[dict]:
    code = list(m.code)
    rng.shuffle(code)
    return [{"format": "text", "category": "code", "origin": o, "text": t} for o, t in code[:n]]


# -------------------------------------------------------------------------- synthetic reasoning

_NAMES = ("Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena")
_ITEMS = ("apples", "books", "pencils", "tickets", "stamps", "marbles", "cookies", "coins")


def _problem(rng: random.Random) -> tuple[str, str, str]:
    """(question, worked solution, answer) with the arithmetic done here, so it is always right."""
    kind = rng.randrange(6)
    a, b = rng.sample(_NAMES, 2)
    if kind == 0:
        item = rng.choice(_ITEMS)
        x, y, z = rng.randint(12, 90), rng.randint(2, 9), rng.randint(3, 15)
        q = (f"{a} has {x} {item}. {a} buys {y} packs of {z} {item} each and then gives {b} "
             f"{min(x, 10)} {item}. How many {item} does {a} have now?")
        s = (f"First, the packs: {y} x {z} = {y * z} {item}.\nSo {a} has {x} + {y * z} = {x + y * z}.\n"
             f"Then {a} gives away {min(x, 10)}: {x + y * z} - {min(x, 10)} = {x + y * z - min(x, 10)}.")
        return q, s, str(x + y * z - min(x, 10))
    if kind == 1:
        m_, c = rng.randint(2, 9), rng.randint(1, 30)
        xv = rng.randint(-10, 20)
        r = m_ * xv + c
        q = f"Solve for x: {m_}x + {c} = {r}."
        s = (f"Subtract {c} from both sides: {m_}x = {r} - {c} = {r - c}.\n"
             f"Divide both sides by {m_}: x = {r - c} / {m_} = {xv}.\nCheck: {m_} * {xv} + {c} = {r}. Correct.")
        return q, s, f"x = {xv}"
    if kind == 2:
        speed, hours = rng.randint(40, 120), rng.choice((1.5, 2, 2.5, 3, 4))
        dist = speed * hours
        q = f"A train travels at {speed} km/h for {hours} hours. How far does it go?"
        s = f"Distance = speed x time.\nSo distance = {speed} km/h x {hours} h = {dist:g} km."
        return q, s, f"{dist:g} km"
    if kind == 3:
        price, pct = rng.randint(20, 400), rng.choice((5, 10, 15, 20, 25, 30, 40))
        off = price * pct / 100
        q = f"A jacket costs ${price}. It is on sale for {pct}% off. What is the sale price?"
        s = (f"The discount is {pct}% of ${price} = {pct}/100 x {price} = ${off:g}.\n"
             f"The sale price is ${price} - ${off:g} = ${price - off:g}.")
        return q, s, f"${price - off:g}"
    if kind == 4:
        people = rng.sample(_NAMES, 3)
        order = sorted(people, key=lambda p: _digest(p, rng.random()))
        t, mid, s_ = order[2], order[1], order[0]
        q = (f"{t} is taller than {mid}. {mid} is taller than {s_}. Who is the shortest, and who is the "
             f"tallest?")
        sol = (f"From the first fact, {t} > {mid}. From the second, {mid} > {s_}.\n"
               f"Chaining them: {t} > {mid} > {s_}.\nSo {s_} is the shortest and {t} is the tallest.")
        return q, sol, f"shortest {s_}, tallest {t}"
    n_ = rng.randint(5, 30)
    q = f"What is the sum of the first {n_} positive integers?"
    s = (f"Use the formula n(n + 1) / 2 with n = {n_}.\n{n_} x {n_ + 1} = {n_ * (n_ + 1)}.\n"
         f"{n_ * (n_ + 1)} / 2 = {n_ * (n_ + 1) // 2}.")
    return q, s, str(n_ * (n_ + 1) // 2)


def synthetic_reasoning(n: int, seed: int = 42) -> list[dict]:
    """Worked problems as text (``Question ... Let's think step by step ... Answer``) and as prompts."""
    rng = random.Random(_digest(seed, "reasoning"))
    out = []
    for i in range(n):
        q, s, ans = _problem(rng)
        style = i % 3
        if style == 0:
            text = f"Question: {q}\nLet's think step by step.\n{s}\nAnswer: {ans}"
        elif style == 1:
            text = f"Problem. {q}\n\nSolution. {s.replace(chr(10), ' ')} Therefore the answer is {ans}."
        else:
            text = f"Q: {q}\nA: {s}\nSo the answer is {ans}.\n\nQ: {_problem(rng)[0]}\nA:"
        out.append({"format": "text", "category": "reasoning", "origin": f"synthetic-{i}", "text": text,
                    "prompt": q})
    return out


# ------------------------------------------------------------------------------------------ build


@dataclass
class CorpusInfo:
    path: Path
    n_docs: int
    n_prompts: int
    counts: dict[str, int]
    sha256: str
    sources: list[Source]


def _eval_prompts() -> list[str]:
    from nlalab.corpus import load_corpus

    return [it.prompt for it in load_corpus()]


def build_corpus(
    out: str | Path,
    *,
    n_docs: int = 2000,
    n_prompts: int = 400,
    mix: Optional[dict[str, float]] = None,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    include_stdlib: bool = True,
    include_eval_prompts: bool = False,
    max_files_per_package: int = 40,
    max_chars: int = 1500,
    min_chars: int = 200,
    seed: int = 42,
) -> CorpusInfo:
    """Write ``out`` (JSONL, one document or prompt per line) and ``out.yaml`` (provenance); see the module doc.

    Each line: ``id``, ``category``, ``format`` (``text`` | ``messages`` | ``prompt``), ``text`` or
    ``messages``, ``source`` (package), ``license``, ``origin`` (file inside the package). Documents are
    drawn round-robin over packages so no single package dominates. Deterministic for a given
    ``seed`` and set of installed package versions.
    """
    out = Path(out)
    mix = dict(mix or DEFAULT_MIX)
    bad = set(mix) - set(CATEGORIES)
    if bad:
        raise NLALabError(f"Unknown corpus categories {sorted(bad)}; use {CATEGORIES}.")
    total = sum(mix.values())
    want = {c: int(round(n_docs * f / total)) for c, f in mix.items()}
    mined: list[_Mined] = []
    for name in packages:
        m = mine_package(name, max_files=max_files_per_package, max_chars=max_chars, min_chars=min_chars, seed=seed)
        if m is not None:
            mined.append(m)
    if include_stdlib:
        mined.append(mine_stdlib(max_chars=max_chars, min_chars=min_chars))
    if not mined:
        raise NLALabError(f"None of the packages {list(packages)} is installed; nothing to build a corpus from.")

    def per_source(cat: str, n: int, fn) -> list[tuple[_Mined, dict]]:
        pools = []
        for m in mined:
            rng = random.Random(_digest(seed, cat, m.source.name))
            pools.append([(m, d) for d in fn(m, rng)])
        picked: list[tuple[_Mined, dict]] = []
        i = 0
        while len(picked) < n and any(pools):
            pool = pools[i % len(pools)]
            if pool:
                picked.append(pool.pop(0))
            i += 1
            if i > 10 * (n + len(pools)) + 1000:
                break
        return picked

    rows: list[tuple[_Mined | None, dict]] = []
    rows += per_source("code", want.get("code", 0), lambda m, r: _code_docs(m, r, 10**6))
    rows += per_source("docs", want.get("docs", 0), lambda m, r: _docs_docs(m, r, 10**6, max_chars, min_chars))
    rows += per_source("chat", want.get("chat", 0), lambda m, r: _chat_docs(m, r, 10**6))
    rows += per_source("agent", want.get("agent", 0), lambda m, r: _agent_docs(m, r, 10**6))
    n_reason = want.get("reasoning", 0)
    math_mined = [m for m in mined if m.source.name.lower() in MATH_PACKAGES]
    math_rows = []
    for m in math_mined:
        math_rows += [(m, d) for d in _math_docs(m, random.Random(_digest(seed, "math", m.source.name)),
                                                   n_reason // (2 * max(1, len(math_mined))) + 1, max_chars)]
    math_rows = math_rows[: n_reason // 2]
    synth = synthetic_reasoning(n_reason - len(math_rows) + n_prompts // 4, seed)
    rows += math_rows + [(None, d) for d in synth[: n_reason - len(math_rows)]]

    # Prompts for last-token chat-template activations: templated over real text + worked problems.
    prompts: list[tuple[_Mined | None, dict]] = []
    n_reason_prompts = n_prompts // 4
    prompts += [(None, {"format": "prompt", "category": "reasoning", "text": d["prompt"], "origin": d["origin"]})
                for d in synth[-n_reason_prompts:]] if n_reason_prompts else []
    prompts += per_source("prompts", n_prompts - len(prompts), lambda m, r: _chat_prompts(m, r, 200))
    if include_eval_prompts:
        prompts += [(None, {"format": "prompt", "category": "chat", "text": p, "origin": "nlalab seed50_v1"})
                    for p in _eval_prompts()]

    synth_src = Source(name="nlalab-synthetic", version=str(CORPUS_VERSION), license="Apache-2.0",
                       kind="synthetic")
    seen: set[str] = set()
    lines: list[dict] = []
    counts: dict[str, int] = {}
    for group, items in (("doc", rows), ("prompt", prompts)):
        for m, d in items:
            src = m.source if m is not None else synth_src
            body = d.get("text") if d["format"] != "messages" else json.dumps(d["messages"], ensure_ascii=False)
            h = hashlib.sha256(body.encode()).hexdigest()[:12]
            if h in seen:
                continue
            seen.add(h)
            rec = {"id": f"{group}:{d['category']}:{src.name}:{h}", "category": d["category"], "format": d["format"],
                   "source": src.name, "license": src.license, "origin": d.get("origin", "")}
            if d["format"] == "messages":
                rec["messages"] = d["messages"]
            else:
                rec["text"] = d["text"]
            if d["format"] == "prompt":
                rec["origin"] = d.get("origin", "templated")
            lines.append(rec)
            key = f"{d['format']}:{d['category']}"
            counts[key] = counts.get(key, 0) + 1
            src.docs[key] = src.docs.get(key, 0) + 1
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
    out.write_text(payload, encoding="utf-8")
    sha = hashlib.sha256(payload.encode()).hexdigest()
    sources = [m.source for m in mined if m.source.docs] + ([synth_src] if synth_src.docs else [])
    n_p = sum(1 for r in lines if r["format"] == "prompt")
    meta = {
        "kind": "nlalab_corpus", "version": CORPUS_VERSION, "sha256": sha, "n_docs": len(lines) - n_p,
        "n_prompts": n_p, "seed": seed, "counts": counts,
        "settings": {"n_docs": n_docs, "n_prompts": n_prompts, "mix": mix, "packages": list(packages),
                     "include_stdlib": include_stdlib, "include_eval_prompts": include_eval_prompts,
                     "max_files_per_package": max_files_per_package, "max_chars": max_chars, "min_chars": min_chars},
        "notes": [
            "code/docs: verbatim text from the installed packages (source chunks, docstrings, README, licence).",
            "chat: templated user turns about real functions; assistant turns are the real docstrings.",
            "agent: templated transcripts around real files, line numbers and source lines.",
            "reasoning: worked problems generated by nlalab (answers computed) + math docstrings with examples.",
            "prompts (format=prompt): templated over real text; nlalab's seed50_v1 eval prompts "
            + ("INCLUDED (evaluation leak!)." if include_eval_prompts else "excluded."),
        ],
        "sources": [s.__dict__ for s in sources],
    }
    Path(str(out) + ".yaml").write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return CorpusInfo(path=out, n_docs=len(lines) - n_p, n_prompts=n_p, counts=counts, sha256=sha, sources=sources)


def read_corpus(path: str | Path) -> list[dict]:
    """Corpus rows from a JSONL file. Plain-text lines of nlalab study corpora (id/category/prompt) are
    read as prompts, so ``nlalab.corpus`` files work here too."""
    path = Path(path)
    if not path.is_file():
        raise NLALabError(f"{path}: no such corpus file. Fix: build one with nlalab.train.corpus.build_corpus.")
    from nlalab.rundir.io import read_jsonl

    rows = []
    for i, r in enumerate(read_jsonl(path), 1):
        if "format" not in r and "prompt" in r:
            r = {"id": r.get("id") or f"prompt-{i}", "category": r.get("category", "chat"), "format": "prompt",
                 "text": r["prompt"], "source": str(path.name), "license": "", "origin": str(path.name)}
        if r.get("format") not in ("text", "messages", "prompt"):
            raise NLALabError(f"{path} line {i}: format must be text, messages or prompt; got {r.get('format')!r}.")
        r.setdefault("id", f"row-{i}")
        r.setdefault("category", "docs")
        rows.append(r)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise NLALabError(f"{path}: duplicate ids; every corpus row needs a unique id.")
    return rows


# ------------------------------------------------------------------------- base-model corpus

DEFAULT_TOPICS = (
    "cooking", "world history", "astronomy", "football", "personal finance", "gardening", "music theory",
    "Python programming", "SQL databases", "web development", "Linux shell commands", "machine learning",
    "algebra homework", "probability puzzles", "geometry proofs", "logic riddles", "travel in Japan",
    "medicine and health", "climate science", "chemistry", "law and contracts", "job interviews",
    "writing a short story", "poetry", "philosophy", "debugging a failing test", "git and version control",
    "planning a trip", "customer support", "email writing",
)
_GEN_DOC = ("Write a short {kind} about {topic}.",)
_GEN_KINDS = ("blog post", "encyclopedia paragraph", "dialogue between two people", "tutorial", "news article",
              "Python code example with comments", "step-by-step solution to a problem", "story")
_GEN_PROMPT = "Write one question or request that a user might send to an AI assistant about {topic}. Reply with the question only."


def generate_corpus(model, tokenizer, out: str | Path, *, topics: Sequence[str] = DEFAULT_TOPICS,
                    docs_per_topic: int = 8, prompts_per_topic: int = 8, max_new_tokens: int = 256,
                    temperature: float = 1.0, batch_size: int = 64, seed: int = 42, model_id: str = "") -> CorpusInfo:
    """The base model writes a diverse corpus: documents (kinds x topics) and user prompts per topic.

    Sampled with ``transformers.generate`` (left padding, T = ``temperature``). Rows carry
    ``source: base-model`` and the model id; the licence is the model's (record it in ``model_id``).
    """
    import torch

    out = Path(out)
    rng = random.Random(_digest(seed, "gen"))
    jobs: list[tuple[str, str, str]] = []  # (format, category, instruction)
    cat_of = {"Python code example with comments": "code", "step-by-step solution to a problem": "reasoning",
              "dialogue between two people": "chat"}
    for t in topics:
        for _ in range(docs_per_topic):
            kind = rng.choice(_GEN_KINDS)
            jobs.append(("text", cat_of.get(kind, "docs"), _GEN_DOC[0].format(kind=kind, topic=t)))
        for _ in range(prompts_per_topic):
            jobs.append(("prompt", "chat", _GEN_PROMPT.format(topic=t)))
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    lines, counts, seen = [], {}, set()
    torch.manual_seed(seed)
    try:
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i:i + batch_size]
            enc = [tokenizer.apply_chat_template([{"role": "user", "content": j[2]}], tokenize=True,
                                                 add_generation_prompt=True) for j in chunk]
            enc = [list(e["input_ids"]) if hasattr(e, "keys") else list(e) for e in enc]
            ids, mask = left_padded(enc, pad, device)
            with torch.inference_mode():
                gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                     temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens,
                                     pad_token_id=pad)
            for (fmt, cat, instr), row in zip(chunk, gen[:, ids.shape[1]:].tolist()):
                text = tokenizer.decode(row, skip_special_tokens=True).strip()
                if not text:
                    continue
                h = hashlib.sha256(text.encode()).hexdigest()[:12]
                if h in seen:
                    continue
                seen.add(h)
                lines.append({"id": f"gen:{fmt}:{cat}:{h}", "category": cat, "format": fmt, "text": text,
                              "source": f"base-model:{model_id}", "license": f"output of {model_id}",
                              "origin": instr})
                counts[f"{fmt}:{cat}"] = counts.get(f"{fmt}:{cat}", 0) + 1
    finally:
        tokenizer.padding_side = old_side
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(payload, encoding="utf-8")
    sha = hashlib.sha256(payload.encode()).hexdigest()
    src = Source(name=f"base-model:{model_id}", license=f"output of {model_id}", kind="base-model", docs=counts)
    n_p = sum(1 for r in lines if r["format"] == "prompt")
    meta = {"kind": "nlalab_corpus", "version": CORPUS_VERSION, "sha256": sha, "n_docs": len(lines) - n_p,
            "n_prompts": n_p, "seed": seed, "counts": counts,
            "settings": {"topics": list(topics), "docs_per_topic": docs_per_topic,
                         "prompts_per_topic": prompts_per_topic, "max_new_tokens": max_new_tokens,
                         "temperature": temperature},
            "sources": [src.__dict__]}
    Path(str(out) + ".yaml").write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return CorpusInfo(path=out, n_docs=len(lines) - n_p, n_prompts=n_p, counts=counts, sha256=sha, sources=[src])


def merge_corpora(paths: Iterable[str | Path], out: str | Path) -> Path:
    """Concatenate corpus files (ids must stay unique) and their provenance records."""
    out = Path(out)
    rows, metas = [], []
    for p in paths:
        rows += read_corpus(p)
        y = Path(str(p) + ".yaml")
        if y.is_file():
            metas.append(yaml.safe_load(y.read_text()))
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise NLALabError("merge_corpora: duplicate ids across the inputs.")
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    out.write_text(payload, encoding="utf-8")
    Path(str(out) + ".yaml").write_text(yaml.safe_dump(
        {"kind": "nlalab_corpus", "sha256": hashlib.sha256(payload.encode()).hexdigest(),
         "sources": [s for m in metas for s in (m.get("sources") or [])], "parts": metas},
        sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out
