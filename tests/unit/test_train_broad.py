"""Broad training prompts (issue 20): the topic list, the filters, near-duplicates of evaluation prompts,
held-out topics pinned to the eval split, and v2 explanations that name the subject."""

import json

import pytest
import torch
import yaml

from nlalab.corpus import load_corpus
from nlalab.errors import NLALabError
from nlalab.pairs.load import load_target
from nlalab.scorers.keyword import content_words
from nlalab.testing import torch_threads
from nlalab.train import broad
from nlalab.train.data import build_dataset, load_split
from nlalab.train.explainers import ContextExplainer, ExplainInput


def test_topic_list_is_broad_and_keeps_its_heldout_categories_out():
    tl = broad.load_topics("broad_v1")
    topics = [t for _, t in tl.topics()]
    assert len(topics) >= 200 and len(set(topics)) == len(topics)
    for area in ("everyday life", "humanities", "sciences", "law", "health", "sport", "food", "travel",
                 "business", "operations", "software"):
        assert area in tl.areas
    assert len(tl.heldout_categories) >= 4
    words = {"music", "musical", "song", "pets", "animal", "dog", "cat", "garden", "gardening", "plant", "fashion",
             "clothing", "clothes"}
    for _, t in tl.topics():
        assert not words & set(t.lower().split()), t
    for _, q in tl.seeds():
        assert not words & set(q.lower().replace("?", "").split()), q
    held = load_corpus("heldout4_v1")
    assert sorted({it.category for it in held}) == ["fashion", "gardening", "music", "pets"]
    assert len(held) == 48


def test_near_duplicates_known_answers():
    nd = broad.NearDuplicates(["What is the capital of Brazil?"])
    assert nd.match("What is the capital of France?")          # same template, other country
    assert nd.match("what IS the capital of brazil")           # case and punctuation
    assert not nd.match("How do I tune a guitar without a tuner?")
    assert not nd.match("Is Brazil larger than Argentina?")   # one shared content word is not a duplicate
    nd2 = broad.NearDuplicates(["Write a regex that matches valid IPv4 addresses."])
    assert nd2.match("Please write a regex matching valid IPv4 addresses")  # same content words


def test_seed_questions_are_not_near_duplicates_of_the_evaluation_prompts():
    evals = broad.NearDuplicates(broad.eval_prompts())
    tl = broad.load_topics()
    assert [q for _, q in tl.seeds() if evals.match(q)] == []


@pytest.mark.parametrize("text,kept,why", [
    (" How do I roll back a deployment?\nTopic: x", "How do I roll back a deployment?", ""),
    ('"Is a verbal agreement binding in France?"', "Is a verbal agreement binding in France?", ""),
    ("", None, "empty"), ("Why?", None, "too_short"),
    ("Topic: cooking Question: what", None, "format"),
    ("word " * 60, None, "too_long"),
])
def test_clean_question(text, kept, why):
    assert broad.clean_question(text) == (kept, why)


VOCAB = ("apple banana cherry dragon eagle falcon grape harbor island jungle kettle lemon mango nectar ocean "
         "pepper quartz river salmon tiger umbrella violet walnut xenon yellow zebra anchor bridge candle desert "
         "engine forest glacier hammer igloo jacket").split()


class _FakeTok:
    """Encodes a prompt as one id; the fake model 'writes' the canned answer of that id."""

    padding_side = "right"
    pad_token_id = 0
    eos_token_id = 0

    def __init__(self, answer):
        self.prompts, self.answer = [None], answer

    def __call__(self, text, add_special_tokens=True):
        self.prompts.append(text)
        return {"input_ids": [len(self.prompts) - 1]}

    def batch_decode(self, rows, skip_special_tokens=True):
        return [self.answer(self.prompts[int(r[0])]) for r in rows.tolist()]


class _FakeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, attention_mask=None, **kw):
        return torch.cat([input_ids, input_ids[:, -1:]], dim=1)


def _small_topics(tmp_path):
    d = yaml.safe_load(open(broad.resources.files("nlalab") / "data" / "topics" / "broad_v1.yaml"))
    d["areas"] = {"food": d["areas"]["food"], "law": d["areas"]["law"]}
    d["areas"]["food"]["topics"] = ["baking bread", "cheese making"]
    d["areas"]["law"]["topics"] = ["tenant rights"]
    d["heldout_topics"] = ["cheese making"]
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_generate_filters_caps_and_pins_heldout_topics(tmp_path):
    calls = {"n": 0}

    def answer(prompt):
        topic = prompt.rsplit("Topic: ", 1)[1].split("\n")[0]
        calls["n"] += 1
        n = calls["n"]
        if n % 7 == 0:
            return "What is the capital of France?\nTopic: y"      # near-duplicate of a seed50 prompt
        if n % 11 == 0:
            return "no"                                           # too short
        w = VOCAB[n % len(VOCAB)], VOCAB[(n * 7 + 3) % len(VOCAB)], VOCAB[(n * 13 + 5) % len(VOCAB)]
        return f"Why does {w[0]} {w[1]} need {w[2]} for {topic}?"

    tok = _FakeTok(answer)
    info = broad.generate_broad_prompts(_FakeModel(), tok, tmp_path / "b.jsonl", topics=str(_small_topics(tmp_path)),
                                        per_topic=20, cap_per_topic=12, batch_size=16, model_id="fake")
    rows = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert info.n_prompts == len(rows)
    by_topic = {}
    for r in rows:
        by_topic.setdefault(r["topic"], []).append(r)
        assert r["format"] == "prompt" and "capital" not in r["text"]
        assert (r.get("split") == "eval") == (r["topic"] == "cheese making")
    assert set(by_topic) == {"baking bread", "cheese making", "tenant rights"}
    assert all(len(v) <= 12 for v in by_topic.values())
    assert info.dropped.get("near_eval", 0) >= 5 and info.dropped.get("too_short", 0) >= 3
    assert info.dropped.get("topic_cap", 0) > 0
    meta = yaml.safe_load((tmp_path / "b.jsonl.yaml").read_text())
    assert meta["heldout_topics"] == ["cheese making"] and meta["n_prompts"] == len(rows)
    # the few-shot prompt names the topic last and never an evaluation prompt
    assert tok.prompts[1].endswith("Topic: baking bread\nQuestion:")
    # a restarted (or carried) run reuses the file only for the same recipe, seed and base model, unchanged
    same = dict(topics=str(_small_topics(tmp_path)), per_topic=20, cap_per_topic=12, max_new_tokens=48, seed=42,
                model_id="fake")
    again = broad.reusable_broad_corpus(tmp_path / "b.jsonl", **same)
    assert again is not None and again.n_prompts == info.n_prompts and again.sha256 == info.sha256
    assert again.counts == info.counts
    for change in (dict(per_topic=21), dict(cap_per_topic=11), dict(seed=43), dict(model_id="other"),
                   dict(max_new_tokens=40)):
        assert broad.reusable_broad_corpus(tmp_path / "b.jsonl", **{**same, **change}) is None, change
    (tmp_path / "b.jsonl").write_text((tmp_path / "b.jsonl").read_text()[:-2] + "\n")
    assert broad.reusable_broad_corpus(tmp_path / "b.jsonl", **same) is None  # edited after it was written
    assert broad.reusable_broad_corpus(tmp_path / "missing.jsonl", **same) is None


def test_bad_topic_list_is_one_line(tmp_path):
    with pytest.raises(NLALabError, match="no such file"):
        broad.load_topics(str(tmp_path / "missing.yaml"))
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"areas": {"a": {"topics": ["x"], "seeds": [["x", "q?"]]}}, "heldout_topics": ["y"]}))
    with pytest.raises(NLALabError, match="heldout_topics"):
        broad.load_topics(str(p))


def test_v2_chat_explanation_names_subject_entities_numbers_and_every_content_word():
    e = ContextExplainer(style="v2")
    text = "Is the Eiffel Tower taller than 300 metres in Paris?"
    out = e.one(ExplainInput(prefix=text, kind="chat_last", category="chat", topic="travel in France"))
    first = out.split("\n\n")[0]
    assert first.startswith("A user asks an AI assistant about travel in France.")
    assert "Eiffel Tower" in first and "Paris" in first and "300" in first
    assert set(content_words(text)) <= set(content_words(first))  # recall 1 against its own prompt
    # v1 is unchanged (the first shipped pair's recipe reproduces)
    v1 = ContextExplainer().one(ExplainInput(prefix=text, kind="chat_last", category="chat", topic="x"))
    assert v1.startswith("A user's message to an AI assistant") and "travel" not in v1
    with pytest.raises(NLALabError):
        ContextExplainer(style="v3")


def test_pinned_rows_land_in_their_split(fixture_pairs, tmp_path):
    pair = fixture_pairs["llama"]
    rows = [{"id": f"p-{i}", "category": "chat", "format": "prompt", "text": f"What is {i} plus {i}?",
             "topic": "arithmetic", "area": "math", **({"split": "eval"} if i % 2 else {})} for i in range(20)]
    with torch_threads(1):
        tg = load_target(pair.target, pair.layer)
        build_dataset(tg.model, tg.tokenizer, pair.layer, rows, tmp_path, seed=3, max_length=40)
    ev = load_split(tmp_path, "eval")
    pinned = {f"p-{i}" for i in range(1, 20, 2)}
    assert pinned <= {r["doc_id"] for r in ev.rows}
    for s in ("ar_sft", "av_sft", "rl"):
        assert not pinned & {r["doc_id"] for r in load_split(tmp_path, s).rows}
    assert all(r["topic"] == "arithmetic" for r in ev.rows)
    rows[0]["split"] = "holdout"
    with pytest.raises(NLALabError, match="pin the splits"):
        build_dataset(tg.model, tg.tokenizer, pair.layer, rows, tmp_path / "x", seed=3, max_length=40)
