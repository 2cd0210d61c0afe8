"""Training data: block-K activations with their text, document-level splits, raw fp32 storage.

Two kinds of rows, as the issue asks:

- ``raw``: kitft's training protocol. Raw document text (no chat template; ``add_special_tokens=True``),
  up to ``positions_per_doc`` positions >= 50 that are not special tokens, chosen per document by a
  generator seeded with ``sha256(f"{seed}|{doc_id}")`` (``nlalab.capture`` with ``positions="random"``).
  Conversations (``format: messages``) are rendered with the target's chat template as text first.
- ``chat_last``: the last token of the chat-templated prompt (``format: prompt`` rows), i.e. the
  study's capture position, so that position is in distribution.

Splits are by document: ``split_of(doc_id)`` hashes ``seed|split|doc_id`` into [0, 1) and bins it by
the cumulative fractions, so the assignment of a document never depends on which other documents
exist or on their order. Every split is written as ``{split}.safetensors`` (key
``activation_vector``, raw fp32 [n, d], ``norm: none``), ``{split}.jsonl`` (one row per vector: doc
id, kind, token index, the text prefix up to and including that token, the next words) and a
kitft-style dataset sidecar ``{split}.safetensors.nla_meta.yaml``; ``dataset.yaml`` holds the whole
record (model, layer, corpus and its provenance, positions, seed, counts, B_rv).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml

from nlalab.capture import MIN_RANDOM_POSITION, capture, encode
from nlalab.errors import NLALabError

SPLITS = ("ar_sft", "av_sft", "rl", "eval")
DEFAULT_FRACTIONS = {"ar_sft": 0.3, "av_sft": 0.3, "rl": 0.35, "eval": 0.05}
VECTOR_KEY = "activation_vector"
BRV_MAX_ROWS = 50_000  # kitft: B_rv from the first <= 50k rows of the training parquet


def split_of(doc_id: str, seed: int, fractions: dict[str, float]) -> str:
    """The split of one document: a pure function of (seed, doc_id, fractions)."""
    total = sum(fractions.values())
    if total <= 0:
        raise NLALabError("split fractions must sum to a positive number.")
    u = int.from_bytes(hashlib.sha256(f"{seed}|split|{doc_id}".encode()).digest()[:8], "little") / 2**64
    acc = 0.0
    names = list(fractions)
    for name in names:
        acc += fractions[name] / total
        if u < acc:
            return name
    return names[-1]


def render_document(row: dict, tokenizer) -> str:
    """The raw text of a corpus row: ``text`` as is; ``messages`` through the chat template (as text).

    If the tokenizer itself adds BOS, a BOS string that the template put in front is removed, so the
    raw encoding (``add_special_tokens=True``) never carries two.
    """
    if row["format"] == "text":
        return row["text"]
    if row["format"] != "messages":
        raise NLALabError(f"row {row.get('id')}: only text/messages rows are documents (got {row['format']}).")
    if getattr(tokenizer, "chat_template", None) is None:
        return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in row["messages"])
    text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            text = text[len(bos):]
    return text


@dataclass
class SplitData:
    name: str
    vectors: torch.Tensor  # [n, d] fp32, raw
    rows: list[dict]

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, idx: Sequence[int]) -> "SplitData":
        idx = list(idx)
        return SplitData(self.name, self.vectors[idx], [self.rows[i] for i in idx])

    def kind(self, kind: str) -> "SplitData":
        return self.subset([i for i, r in enumerate(self.rows) if r["kind"] == kind])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def build_dataset(
    model,
    tokenizer,
    layer: int,
    rows: Sequence[dict],
    out_dir: str | Path,
    *,
    positions_per_doc: int = 10,
    seed: int = 42,
    fractions: Optional[dict[str, float]] = None,
    max_length: int = 512,
    batch_size: int = 16,
    continuation_tokens: int = 24,
    model_id: str = "",
    corpus: Optional[dict[str, Any]] = None,
    mse_scale: Optional[float] = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Capture, split and store; returns the ``dataset.yaml`` record. See the module doc."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    docs = [r for r in rows if r["format"] in ("text", "messages")]
    prompts = [r for r in rows if r["format"] == "prompt"]
    if not docs and not prompts:
        raise NLALabError("build_dataset: the corpus has no rows.")
    d_model = int(model.get_input_embeddings().weight.shape[-1])
    all_rows: list[dict] = []
    all_vecs: list[torch.Tensor] = []

    if docs:
        texts = [render_document(r, tokenizer) for r in docs]
        ids = [r["id"] for r in docs]
        cap = capture(model, tokenizer, texts, layer, ids=ids, positions="random", fmt="raw", seed=seed,
                      n_random=positions_per_doc, batch_size=batch_size, max_length=max_length, progress=progress)
        by_id = {r["id"]: (r, t) for r, t in zip(docs, texts)}
        enc_cache: dict[str, list[int]] = {}
        for v, m in zip(cap.vectors, cap.meta):
            r, text = by_id[m["item_id"]]
            enc = enc_cache.get(r["id"])
            if enc is None:
                enc = encode(tokenizer, text, "raw")[:max_length]
                enc_cache[r["id"]] = enc
            p = m["token_index"]
            all_rows.append({
                "doc_id": r["id"], "kind": "raw", "category": r.get("category", ""), "source": r.get("source", ""),
                "token_index": p, "n_raw_tokens": p + 1, "token_text": m["token_text"], "norm": m["norm"],
                "prefix": tokenizer.decode(enc[:p + 1], skip_special_tokens=True),
                "continuation": tokenizer.decode(enc[p + 1:p + 1 + continuation_tokens], skip_special_tokens=True),
            })
            all_vecs.append(v)
    if prompts:
        cap = capture(model, tokenizer, [r["text"] for r in prompts], layer, ids=[r["id"] for r in prompts],
                      positions="last", fmt="chat", batch_size=batch_size, progress=progress)
        for v, m, r in zip(cap.vectors, cap.meta, prompts):
            all_rows.append({
                "doc_id": r["id"], "kind": "chat_last", "category": r.get("category", ""),
                "source": r.get("source", ""), "token_index": m["token_index"], "n_raw_tokens": m["n_tokens"],
                "token_text": m["token_text"], "norm": m["norm"], "prefix": r["text"], "continuation": "",
                **{k: r[k] for k in ("topic", "area") if r.get(k)},
            })
            all_vecs.append(v)
    if not all_vecs:
        raise NLALabError(f"No activations captured: every document is shorter than {MIN_RANDOM_POSITION + 1} "
                          "tokens and there are no prompts.")
    vecs = torch.stack(all_vecs).float()

    # A corpus row may pin its split (the broad corpus pins held-out topics to eval); others hash by doc id.
    pinned = {r["id"]: r["split"] for r in list(docs) + list(prompts) if r.get("split")}
    bad = sorted({v for v in pinned.values() if v not in fractions})
    if bad:
        raise NLALabError(f"corpus rows pin the splits {bad}, which are not among {sorted(fractions)}.")
    split_by_row = [pinned.get(r["doc_id"]) or split_of(r["doc_id"], seed, fractions) for r in all_rows]
    counts: dict[str, dict[str, int]] = {}
    record_splits = {}
    for split in fractions:
        idx = [i for i, sp in enumerate(split_by_row) if sp == split]
        sv = vecs[idx].contiguous() if idx else torch.zeros(0, d_model)
        srows = [dict(all_rows[i], row=j, split=split) for j, i in enumerate(idx)]
        save_file({VECTOR_KEY: sv}, str(out / f"{split}.safetensors"))
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in srows),
                                            encoding="utf-8")
        c = {"raw": sum(r["kind"] == "raw" for r in srows), "chat_last": sum(r["kind"] == "chat_last" for r in srows),
             "documents": len({r["doc_id"] for r in srows})}
        counts[split] = c
        side = {
            "kind": "nla_dataset", "schema_version": 1, "dataset_id": f"{model_id or 'model'}-L{layer}-{split}",
            "stage": split, "row_count": len(srows),
            "extraction": {"base_model": model_id, "d_model": d_model, "layer_index": layer, "norm": "none",
                           "corpus": (corpus or {}).get("path"), "positions_per_doc": positions_per_doc},
            "created_at": _now(), "created_by": "nlalab.train.data",
        }
        (out / f"{split}.safetensors.nla_meta.yaml").write_text(yaml.safe_dump(side, sort_keys=False))
        record_splits[split] = c
    ref = vecs[[i for i, sp in enumerate(split_by_row) if sp == "rl"]][:BRV_MAX_ROWS]
    s = float(mse_scale) if mse_scale else math.sqrt(d_model)
    b_rv = None
    if ref.shape[0] >= 2:
        from nlalab import metrics

        b_rv = metrics.brv(ref, s)
    record = {
        "kind": "nlalab_training_data", "schema_version": 1, "model": model_id, "layer": layer,
        "hook": f"blocks.{layer}.hook_resid_post (= hidden_states[{layer + 1}])", "d_model": d_model,
        "storage": {"format": "safetensors", "key": VECTOR_KEY, "dtype": "float32", "norm": "none"},
        "positions": {
            "raw": f"random: up to {positions_per_doc} per document, index >= {MIN_RANDOM_POSITION}, non-special, "
                   "rng seeded by sha256(f'{seed}|{doc_id}'), raw text (no chat template), add_special_tokens=True",
            "chat_last": "last token of the chat-templated prompt (one user turn + generation prompt)",
        },
        "max_length": max_length, "seed": seed, "fractions": fractions, "splits": record_splits,
        "pinned_rows": len(pinned),
        "n_vectors": int(vecs.shape[0]), "b_rv": b_rv,
        "b_rv_reference": f"first <= {BRV_MAX_ROWS} rows of the rl split ({int(ref.shape[0])} rows), mse_scale {s:.6g}",
        "corpus": corpus or {}, "created_at": _now(),
    }
    (out / "dataset.yaml").write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    return record


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    p = Path(data_dir) / "dataset.yaml"
    if not p.is_file():
        raise NLALabError(f"{p}: no dataset record. Fix: build the data first (nlalab.train.data.build_dataset).")
    return yaml.safe_load(p.read_text())


def load_split(data_dir: str | Path, split: str) -> SplitData:
    from safetensors.torch import load_file

    d = Path(data_dir)
    f = d / f"{split}.safetensors"
    if not f.is_file():
        raise NLALabError(f"{f}: no such split file (splits: {SPLITS}).")
    vecs = load_file(str(f))[VECTOR_KEY].float()
    from nlalab.rundir.io import read_jsonl

    rows = read_jsonl(d / f"{split}.jsonl")
    if len(rows) != vecs.shape[0]:
        raise NLALabError(f"{f}: {vecs.shape[0]} vectors but {len(rows)} rows in {split}.jsonl.")
    return SplitData(split, vecs, rows)
