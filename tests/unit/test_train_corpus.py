"""The offline training corpus: real text from installed packages, mixed categories, provenance, determinism."""

import json
import re

import pytest
import yaml

from nlalab.corpus import load_corpus
from nlalab.train.corpus import CATEGORIES, build_corpus, read_corpus, synthetic_reasoning

PKGS = ["typer", "click", "PyYAML", "sympy"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    info = build_corpus(d / "c.jsonl", n_docs=80, n_prompts=24, packages=PKGS, include_stdlib=False,
                        max_files_per_package=8)
    return d, info


def test_mixes_every_category_with_provenance(small_corpus):
    d, info = small_corpus
    rows = read_corpus(info.path)
    docs = [r for r in rows if r["format"] != "prompt"]
    prompts = [r for r in rows if r["format"] == "prompt"]
    assert {r["category"] for r in docs} == set(CATEGORIES)
    assert len(prompts) >= 10 and any(r["format"] == "messages" for r in docs)
    meta = yaml.safe_load((d / "c.jsonl.yaml").read_text())
    assert meta["sha256"] == info.sha256
    names = {s["name"]: s for s in meta["sources"]}
    assert {"typer", "click", "PyYAML", "nlalab-synthetic"} <= set(names)
    for s in meta["sources"]:
        assert s["license"] and s["license"] != "unknown", s
    assert names["typer"]["version"] and names["typer"]["license_files"]
    for r in rows:  # every row names its package and licence
        assert r["source"] and r["license"]
    # verbatim text: a code row really is in the package
    code = next(r for r in docs if r["category"] == "code" and r["source"] == "click")
    import click, pathlib

    src = (pathlib.Path(click.__file__).parent.parent / code["origin"]).read_text()
    assert code["text"].splitlines()[0] in src


def test_deterministic_and_excludes_eval_prompts(small_corpus, tmp_path):
    _, info = small_corpus
    again = build_corpus(tmp_path / "c.jsonl", n_docs=80, n_prompts=24, packages=PKGS, include_stdlib=False,
                         max_files_per_package=8)
    assert again.sha256 == info.sha256
    eval_prompts = {it.prompt for it in load_corpus()}
    assert not eval_prompts & {r.get("text") for r in read_corpus(info.path)}


def test_synthetic_reasoning_is_correct():
    for r in synthetic_reasoning(60, seed=3):
        m = re.search(r"Solve for x: (\d+)x \+ (\d+) = (-?\d+)\.", r["text"])
        if m and "Answer: x = " in r["text"]:
            a, b, c = map(int, m.groups())
            x = int(r["text"].split("Answer: x = ")[1].split()[0])
            assert a * x + b == c
        assert r["prompt"] in r["text"]


def test_read_corpus_accepts_study_corpora(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "a", "category": "chat", "prompt": "Hi there"}) + "\n")
    rows = read_corpus(f)
    assert rows[0]["format"] == "prompt" and rows[0]["text"] == "Hi there"
