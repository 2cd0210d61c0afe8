"""Broad training prompts: the base model writes user questions across a few hundred topics, offline.

Why: a pair trained only on text mined from Python packages explains every prompt as code, docs or a math
puzzle. Questions about cooking, law or travel have to be in its training data for it to name them. No
external model is reachable here, so the base model itself writes them, from a few-shot list of
hand-written seed questions (``data/topics/broad_v1.yaml``): a plain completion prompt ("Topic: ...
Question: ...") that even a 135M model follows, where an instruction ("write a question about X") makes
it chat about the instruction instead.

What is kept is written down in the corpus provenance (``corpus.broad.jsonl.yaml``): every generated line
is cut at its first newline and then dropped, with the reason counted, when it is empty, too short or too
long, a copy of a few-shot seed, a near-duplicate of an evaluation prompt (``seed50_v1``,
``heldout4_v1``: never trained on), a near-duplicate of an earlier prompt, or over the per-topic cap.
Prompts of ``heldout_topics`` carry ``split: eval``: whole topics that training never sees, on which the
shipped checkpoint is chosen.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Optional, Sequence

import yaml

from nlalab.batching import left_padded
from nlalab.errors import NLALabError
from nlalab.rundir.io import file_sha256
from nlalab.scorers.keyword import content_words

TOPIC_LISTS = {"broad_v1": "data/topics/broad_v1.yaml"}
#: Corpora whose prompts (and near-duplicates) training must never see.
EVAL_CORPORA = ("seed50_v1", "heldout4_v1")
#: Areas whose prompts are about code or puzzles get the matching chat genre in explanations.
AREA_CATEGORY = {"software": "code", "math and logic": "reasoning"}
HEADER = "Questions that users sent to an AI assistant, one per topic.\n\n"
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class TopicList:
    name: str
    areas: dict[str, dict]  # area -> {"seeds": [...], "topics": [...]}
    heldout_topics: list[str]
    heldout_categories: list[str]

    def topics(self) -> list[tuple[str, str]]:
        """(area, topic) in file order."""
        return [(a, t) for a, spec in self.areas.items() for t in spec["topics"]]

    def seeds(self) -> list[tuple[str, str]]:
        """(seed topic, seed question)."""
        return [(str(t), str(q)) for spec in self.areas.values() for t, q in spec["seeds"]]


def load_topics(name_or_path: str = "broad_v1") -> TopicList:
    if name_or_path in TOPIC_LISTS and not Path(name_or_path).exists():
        res = resources.files("nlalab")
        for part in TOPIC_LISTS[name_or_path].split("/"):
            res = res / part
        text, name = res.read_text(encoding="utf-8"), name_or_path
    else:
        p = Path(name_or_path)
        if not p.is_file():
            raise NLALabError(f"topic list {name_or_path!r}: not a shipped list ({sorted(TOPIC_LISTS)}) and no such "
                              "file. Fix: pass one of those names or a YAML file shaped like data/topics/broad_v1.yaml.")
        text, name = p.read_text(encoding="utf-8"), p.stem
    d = yaml.safe_load(text) or {}
    areas = d.get("areas") or {}
    if not areas or any(not (s or {}).get("topics") or not (s or {}).get("seeds") for s in areas.values()):
        raise NLALabError(f"topic list {name}: every area needs topics: and seeds:.")
    if any(not (isinstance(x, list) and len(x) == 2) for s in areas.values() for x in s["seeds"]):
        raise NLALabError(f"topic list {name}: every seed is a [topic, question] pair.")
    tl = TopicList(name=name, areas=areas, heldout_topics=list(d.get("heldout_topics") or []),
                   heldout_categories=list(d.get("heldout_categories") or []))
    known = {t for _, t in tl.topics()}
    missing = [t for t in tl.heldout_topics if t not in known]
    if missing:
        raise NLALabError(f"topic list {name}: heldout_topics {missing} are not topics of any area.")
    return tl


# ------------------------------------------------------------------------------------ similarity


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _bigrams(text: str) -> set[tuple[str, str]]:
    w = _words(text)
    return set(zip(w, w[1:]))


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


class NearDuplicates:
    """Near-duplicate test against a growing set of texts: same wording (word bigrams, Jaccard >= 0.5) or
    the same content words (Jaccard >= 0.6, at least two of them). "What is the capital of France?" is a
    near-duplicate of "What is the capital of Brazil?" (bigram Jaccard 0.67)."""

    def __init__(self, texts: Iterable[str] = (), bigram: float = 0.5, content: float = 0.6):
        self.bigram, self.content = bigram, content
        self._items: list[tuple[set, set]] = []
        for t in texts:
            self.add(t)

    @staticmethod
    def _key(text: str) -> tuple[set, set]:
        return _bigrams(text), set(content_words(text))

    def add(self, text: str) -> None:
        self._items.append(self._key(text))

    def match(self, text: str) -> bool:
        bg, cw = self._key(text)
        for b2, c2 in self._items:
            if _jaccard(bg, b2) >= self.bigram:
                return True
            if len(cw) >= 2 and len(c2) >= 2 and _jaccard(cw, c2) >= self.content:
                return True
        return False


def eval_prompts() -> list[str]:
    from nlalab.corpus import load_corpus

    return [it.prompt for name in EVAL_CORPORA for it in load_corpus(name)]


# ------------------------------------------------------------------------------------ generation


def fewshot_text(topic: str, examples: Sequence[tuple[str, str]]) -> str:
    """The completion prompt: a header, (topic, question) examples, then the topic to write for."""
    body = "".join(f"Topic: {t}\nQuestion: {q}\n\n" for t, q in examples)
    return f"{HEADER}{body}Topic: {topic}\nQuestion:"


def clean_question(text: str, min_words: int = 4, max_words: int = 45) -> tuple[Optional[str], str]:
    """(question, "") or (None, why): the first line, trimmed of quotes and list marks."""
    line = (text or "").strip().split("\n", 1)[0].strip().strip('"').strip()
    if not line:
        return None, "empty"
    if re.search(r"\b(Topic|Question)\s*:", line) or "AI assistant" in line:
        return None, "format"
    n = len(line.split())
    if n < min_words:
        return None, "too_short"
    if n > max_words:
        return None, "too_long"
    if not re.search(r"[A-Za-z]{3}", line):
        return None, "format"
    return line, ""


@dataclass
class BroadInfo:
    path: Path
    n_prompts: int
    counts: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)
    sha256: str = ""


def reusable_broad_corpus(out: str | Path, *, topics: str = "broad_v1", per_topic: int = 24,
                          cap_per_topic: int = 18, max_new_tokens: int = 48, seed: int = 42,
                          model_id: str = "") -> Optional[BroadInfo]:
    """The broad corpus already at ``out`` (written here earlier, or on another machine and carried), if its
    provenance says it was generated with these settings, seed and base model and the file still has the
    recorded sha256; else None (then it is generated again). Saves the device minutes of generation when a
    training run is restarted elsewhere with the same recipe."""
    out = Path(out)
    meta_path = Path(str(out) + ".yaml")
    if not (out.is_file() and meta_path.is_file()):
        return None
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return None
    st = meta.get("settings") or {}
    want = {"topics": load_topics(topics).name, "per_topic": per_topic, "cap_per_topic": cap_per_topic,
            "max_new_tokens": max_new_tokens}
    if any(st.get(k) != v for k, v in want.items()) or meta.get("seed") != seed:
        return None
    if [s_.get("name") for s_ in meta.get("sources") or []] != [f"base-model:{model_id}"]:
        return None
    if file_sha256(out) != meta.get("sha256"):
        return None
    counts = {k.split(":", 1)[1]: v for k, v in (meta.get("counts") or {}).items()}
    return BroadInfo(path=out, n_prompts=int(meta.get("n_prompts") or 0), counts=counts,
                     dropped=dict(meta.get("dropped") or {}), sha256=meta["sha256"])


def generate_broad_prompts(model, tokenizer, out: str | Path, *, topics: str = "broad_v1", per_topic: int = 24,
                           cap_per_topic: int = 18, n_examples: int = 3, max_new_tokens: int = 48,
                           temperature: float = 0.8, top_p: float = 0.95, batch_size: int = 256, seed: int = 42,
                           model_id: str = "") -> BroadInfo:
    """Write ``out`` (corpus JSONL, ``format: prompt`` rows with ``topic``/``area``) and ``out.yaml``."""
    import torch

    out = Path(out)
    tl = load_topics(topics)
    seeds = tl.seeds()
    heldout = set(tl.heldout_topics)
    jobs: list[tuple[str, str, str]] = []  # (area, topic, completion prompt)
    for area, topic in tl.topics():
        rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}|broad|{topic}".encode()).digest()[:8], "little"))
        for _ in range(per_topic):
            ex = rng.sample(seeds, min(n_examples, len(seeds)))
            jobs.append((area, topic, fewshot_text(topic, ex)))
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    raw: list[str] = []
    try:
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i:i + batch_size]
            enc = [tokenizer(j[2], add_special_tokens=True)["input_ids"] for j in chunk]
            ids, mask = left_padded(enc, pad, device)
            with torch.inference_mode():
                gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                     top_p=top_p, max_new_tokens=max_new_tokens, pad_token_id=pad)
            raw += tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side

    evals = NearDuplicates(eval_prompts())
    seed_q = NearDuplicates(q for _, q in seeds)
    kept_by_topic: dict[str, NearDuplicates] = {}
    n_by_topic: dict[str, int] = {}
    seen: set[str] = set()
    dropped: dict[str, int] = {}
    lines: list[dict] = []
    for (area, topic, _), text in zip(jobs, raw):
        q, why = clean_question(text)
        if q is None:
            dropped[why] = dropped.get(why, 0) + 1
            continue
        key = " ".join(_words(q))
        why = ("duplicate" if key in seen else "seed_copy" if seed_q.match(q)
               else "near_eval" if evals.match(q)
               else "near_duplicate" if kept_by_topic.setdefault(topic, NearDuplicates(bigram=0.7)).match(q)
               else "topic_cap" if n_by_topic.get(topic, 0) >= cap_per_topic else "")
        if why:
            dropped[why] = dropped.get(why, 0) + 1
            continue
        seen.add(key)
        kept_by_topic[topic].add(q)
        n_by_topic[topic] = n_by_topic.get(topic, 0) + 1
        h = hashlib.sha256(q.encode()).hexdigest()[:12]
        row = {"id": f"broad:{h}", "category": AREA_CATEGORY.get(area, "chat"), "format": "prompt", "text": q,
               "topic": topic, "area": area, "source": f"base-model:{model_id}",
               "license": f"output of {model_id}", "origin": f"{tl.name} few-shot"}
        if topic in heldout:
            row["split"] = "eval"
        lines.append(row)
    if not lines:
        raise NLALabError("broad prompts: the base model wrote no usable question. Fix: check the base model "
                          "(an instruct or base LM that continues a few-shot list), or raise per_topic.")
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(payload, encoding="utf-8")
    sha = hashlib.sha256(payload.encode()).hexdigest()
    counts: dict[str, int] = {}
    for r in lines:
        counts[r["area"]] = counts.get(r["area"], 0) + 1
    meta = {
        "kind": "nlalab_corpus", "version": 1, "sha256": sha, "n_docs": 0, "n_prompts": len(lines),
        "seed": seed, "counts": {f"prompt:{k}": v for k, v in counts.items()},
        "settings": {"topics": tl.name, "n_topics": len(tl.topics()), "per_topic": per_topic,
                     "cap_per_topic": cap_per_topic, "n_examples": n_examples, "max_new_tokens": max_new_tokens,
                     "temperature": temperature, "top_p": top_p},
        "heldout_topics": tl.heldout_topics, "heldout_categories": tl.heldout_categories,
        "n_generated": len(jobs), "dropped": dropped,
        "excluded_near_duplicates_of": list(EVAL_CORPORA),
        "topic_list": {a: s["topics"] for a, s in tl.areas.items()},
        "sources": [{"name": f"base-model:{model_id}", "version": "", "license": f"output of {model_id}",
                     "kind": "base-model", "docs": {f"prompt:{k}": v for k, v in counts.items()}}],
        "notes": ["User prompts written by the base model from a few-shot list of hand-written seed questions "
                  f"({tl.name}); prompts of heldout_topics are pinned to the eval split."],
    }
    Path(str(out) + ".yaml").write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return BroadInfo(path=out, n_prompts=len(lines), counts=counts, dropped=dropped, sha256=sha)
