"""Training data: document-level splits (disjoint, reproducible), positions, fp32 storage, sidecars."""

import random

import pytest
import torch
import yaml

from nlalab.capture import MIN_RANDOM_POSITION, encode
from nlalab.pairs.load import load_target
from nlalab.testing import torch_threads
from nlalab.train.data import DEFAULT_FRACTIONS, build_dataset, load_split, read_manifest, split_of

WORDS = ("the quick brown fox jumps over the lazy dog while a small cat sleeps near the warm fire and "
         "the river flows past an old mill").split()


def corpus_rows(n_docs=30, n_prompts=12):
    rows = []
    for i in range(n_docs):
        r = random.Random(i)
        rows.append({"id": f"doc-{i}", "category": ("code", "docs", "agent")[i % 3], "format": "text",
                     "text": " ".join(r.choice(WORDS) for _ in range(55 + i % 15)), "source": "test"})
    rows.append({"id": "conv-1", "category": "chat", "format": "messages", "source": "test",
                 "messages": [{"role": "user", "content": "Tell me about foxes " * 8},
                              {"role": "assistant", "content": "Foxes are small animals " * 10}]})
    rows += [{"id": f"prompt-{i}", "category": "chat", "format": "prompt", "text": f"What is {i} times {i}?",
              "source": "test"} for i in range(n_prompts)]
    return rows


def test_split_of_is_pure_and_follows_fractions():
    ids = [f"doc-{i}" for i in range(4000)]
    a = [split_of(d, 42, DEFAULT_FRACTIONS) for d in ids]
    assert a == [split_of(d, 42, DEFAULT_FRACTIONS) for d in reversed(ids)][::-1]  # order-independent
    for name, frac in DEFAULT_FRACTIONS.items():
        assert abs(a.count(name) / len(ids) - frac) < 0.03
    assert a != [split_of(d, 7, DEFAULT_FRACTIONS) for d in ids]  # the seed matters


@pytest.fixture(scope="module")
def built(fixture_pairs, tmp_path_factory):
    pair = fixture_pairs["llama"]
    root = tmp_path_factory.mktemp("data")
    with torch_threads(1):
        tg = load_target(pair.target, pair.layer)
        recs = [build_dataset(tg.model, tg.tokenizer, pair.layer, corpus_rows(), root / name, positions_per_doc=4,
                              seed=5, max_length=80, model_id="tiny-llama", corpus={"path": "test-corpus"})
                for name in ("a", "b")]
    return pair, tg, root, recs


def test_splits_are_document_disjoint_and_reproducible(built):
    pair, tg, root, recs = built
    splits = {s: load_split(root / "a", s) for s in DEFAULT_FRACTIONS}
    docs = {s: {r["doc_id"] for r in sd.rows} for s, sd in splits.items()}
    names = list(docs)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert not docs[names[i]] & docs[names[j]], (names[i], names[j])
    assert sum(len(sd) for sd in splits.values()) == recs[0]["n_vectors"]
    for s in DEFAULT_FRACTIONS:  # the same corpus + seed gives identical files
        b = load_split(root / "b", s)
        assert torch.equal(splits[s].vectors, b.vectors) and splits[s].rows == b.rows
        assert splits[s].vectors.dtype == torch.float32


def test_positions_and_text_follow_the_protocol(built):
    pair, tg, root, _ = built
    special = set(tg.tokenizer.all_special_ids)
    rows = [r for s in DEFAULT_FRACTIONS for r in load_split(root / "a", s).rows]
    raw = [r for r in rows if r["kind"] == "raw"]
    chat = [r for r in rows if r["kind"] == "chat_last"]
    assert raw and len(chat) == 12 and any(r["doc_id"] == "conv-1" for r in raw)
    by_doc = {}
    for r in raw:
        assert r["token_index"] >= MIN_RANDOM_POSITION and r["n_raw_tokens"] == r["token_index"] + 1
        by_doc.setdefault(r["doc_id"], []).append(r["token_index"])
        if r["doc_id"].startswith("doc-"):
            text = next(c for c in corpus_rows() if c["id"] == r["doc_id"])["text"]
            ids = encode(tg.tokenizer, text, "raw")
            assert ids[r["token_index"]] not in special
            assert r["prefix"] == tg.tokenizer.decode(ids[:r["token_index"] + 1], skip_special_tokens=True)
            assert text.startswith(r["prefix"].strip()[:20])
    assert all(len(v) <= 4 for v in by_doc.values())
    for r in chat:
        assert r["token_index"] == r["n_raw_tokens"] - 1 and r["continuation"] == ""


def test_records_and_sidecars(built):
    pair, _, root, recs = built
    m = read_manifest(root / "a")
    assert m["model"] == "tiny-llama" and m["layer"] == pair.layer and m["seed"] == 5
    assert m["corpus"] == {"path": "test-corpus"} and m["storage"]["norm"] == "none"
    assert "sha256" in m["positions"]["raw"]
    assert m["b_rv"] is None or m["b_rv"] > 0
    assert set(m["splits"]) == set(DEFAULT_FRACTIONS)
    side = yaml.safe_load((root / "a" / "rl.safetensors.nla_meta.yaml").read_text())
    assert side["kind"] == "nla_dataset" and side["extraction"]["layer_index"] == pair.layer
    assert side["extraction"]["norm"] == "none" and side["row_count"] == m["splits"]["rl"]["raw"] + m["splits"]["rl"]["chat_last"]
