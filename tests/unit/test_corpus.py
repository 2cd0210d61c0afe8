"""Corpus loading: the shipped seed50_v1 corpus and user files, with known answers and error cases."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from nlalab.corpus import CORPORA, Item, by_category, categories, corpus_digest, load_corpus
from nlalab.errors import NLALabError

SEED_QUOTED = {
    "chat": [
        "What is the capital of Brazil?",
        "Who painted the Mona Lisa?",
        "Describe the plot of Hamlet in two sentences.",
        "Explain why the sky is blue.",
    ],
    "code": [
        "Implement quicksort in C without using recursion.",
        "Write a regex that matches valid IPv4 addresses.",
    ],
    "agent": [
        "Find all calls to requests.get without a timeout parameter and add timeout=30.",
        "Locate the file containing the implementation of the user authentication flow.",
    ],
    "reasoning": [
        "Prove that the sum of the first n odd integers equals n².",
        "Prove that the square root of 2 is irrational.",
    ],
}
MISSING_DOLLAR_OPENING = (
    "Three friends split a $90 bill equally. The waiter gives them $5 back. "
    "They each take $1 and tip the waiter $2"
)
# Pinned: seed50_v1 is versioned data. Editing it must make a new file (seed50_v2), not change this.
SEED50_V1_DIGEST = "29b54e637f5439796042ed3c082cabd9d555015b3d6cd5a61f5c7623f77dbaba"


# --- shipped corpus ------------------------------------------------------------------------------


def test_shipped_corpus_counts_and_ids():
    items = load_corpus()
    assert len(items) == 50
    assert categories(items) == ["chat", "code", "agent", "reasoning"]
    assert {c: len(v) for c, v in by_category(items).items()} == {
        "chat": 13,
        "code": 12,
        "agent": 13,
        "reasoning": 12,
    }
    ids = [it.id for it in items]
    assert len(set(ids)) == 50
    assert all(isinstance(it, Item) and it.prompt.strip() for it in items)
    assert all(it.id.startswith(it.category + "-") for it in items)


def test_shipped_corpus_contains_seed_quoted_prompts_verbatim():
    items = load_corpus()
    have = {(it.category, it.prompt) for it in items}
    for cat, prompts in SEED_QUOTED.items():
        for p in prompts:
            assert (cat, p) in have, f"missing seed prompt in {cat}: {p!r}"
    dollar = [it for it in items if it.prompt.startswith(MISSING_DOLLAR_OPENING)]
    assert len(dollar) == 1 and dollar[0].category == "reasoning"
    assert "missing dollar" in dollar[0].prompt and dollar[0].prompt.endswith("?")


def test_shipped_corpus_by_name_and_digest_pinned():
    a, b = load_corpus(), load_corpus("seed50_v1")
    assert a == b
    assert "seed50_v1" in CORPORA
    assert corpus_digest(a) == SEED50_V1_DIGEST


def test_unknown_corpus_name_lists_shipped():
    with pytest.raises(NLALabError) as e:
        load_corpus("seed99_v9")
    assert "seed50_v1" in str(e.value) and "shipped" in str(e.value)


# --- round trips -----------------------------------------------------------------------------------

ITEMS = [
    Item("chat-a", "chat", "What is the capital of Brazil?"),
    Item("code-a", "code", 'Print "hello, world" in C.'),
    Item("reason-a", "reasoning", "Prove that the sum of the first n odd integers equals n²."),
    Item("misc-a", "misc", "two\nlines, with a comma"),
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _write_csv(path, rows, fields=("id", "category", "prompt")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in rows:
            w.writerow(r)


def test_roundtrip_jsonl_json_csv(tmp_path):
    rows = [it.to_dict() for it in ITEMS]
    _write_jsonl(tmp_path / "c.jsonl", rows)
    (tmp_path / "c.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    _write_csv(tmp_path / "c.csv", rows)
    for name in ("c.jsonl", "c.json", "c.csv"):
        got = load_corpus(tmp_path / name)
        assert got == ITEMS, name
        assert corpus_digest(got) == corpus_digest(ITEMS)
    assert load_corpus(str(tmp_path / "c.jsonl")) == ITEMS  # str paths work too


def test_missing_ids_are_generated_per_category(tmp_path):
    rows = [
        {"category": "chat", "prompt": "a"},
        {"category": "code", "prompt": "b"},
        {"category": "chat", "prompt": "c", "id": ""},
        {"category": "chat", "prompt": "d", "id": "mine"},
        {"category": "chat", "prompt": "e"},
    ]
    _write_jsonl(tmp_path / "c.jsonl", rows)
    ids = [it.id for it in load_corpus(tmp_path / "c.jsonl")]
    assert ids == ["chat-001", "code-001", "chat-002", "mine", "chat-004"]
    _write_csv(tmp_path / "c.csv", [{k: v for k, v in r.items() if k != "id"} for r in rows], ("category", "prompt"))
    assert [it.id for it in load_corpus(tmp_path / "c.csv")] == ["chat-001", "code-001", "chat-002", "chat-003", "chat-004"]


def test_any_number_of_categories_and_extra_keys(tmp_path):
    rows = [{"category": f"cat{i}", "prompt": f"p{i}", "source": "x"} for i in range(7)]
    _write_jsonl(tmp_path / "c.jsonl", rows)
    items = load_corpus(tmp_path / "c.jsonl")
    assert categories(items) == [f"cat{i}" for i in range(7)]


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"category": "a", "prompt": "x"}\n\n{"category": "a"}\n', encoding="utf-8")
    with pytest.raises(NLALabError, match=r"line 3: missing 'prompt'"):
        load_corpus(p)


# --- digest ----------------------------------------------------------------------------------------


def test_corpus_digest_known_answer_and_sensitivity():
    one = [Item("a", "c", "p")]
    assert corpus_digest(one) == hashlib.sha256(b'[{"category":"c","id":"a","prompt":"p"}]').hexdigest()
    assert corpus_digest(ITEMS) == corpus_digest(list(ITEMS))
    assert corpus_digest(ITEMS) != corpus_digest(ITEMS[::-1])  # order matters
    assert corpus_digest(ITEMS) != corpus_digest(ITEMS[:-1] + [Item("misc-a", "misc", "two lines")])


# --- errors ----------------------------------------------------------------------------------------


def _err(path) -> str:
    with pytest.raises(NLALabError) as e:
        load_corpus(path)
    return str(e.value)


def test_error_missing_file(tmp_path):
    msg = _err(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in msg and "not found" in msg and "Fix:" in msg


def test_error_unknown_extension(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("hello\n")
    msg = _err(p)
    assert "c.txt" in msg and "extension '.txt'" in msg and ".jsonl" in msg


@pytest.mark.parametrize(
    "name,text",
    [("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.json", "[]"), ("e.csv", "id,category,prompt\n"), ("e.csv", "")],
)
def test_error_empty_corpus(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    msg = _err(p)
    assert "empty" in msg and name in msg


def test_error_malformed_json_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"category": "a", "prompt": "x"}\n{"category": "a", "prompt": "y",}\n')
    msg = _err(p)
    assert "c.jsonl line 2" in msg and "malformed JSON" in msg and "Fix:" in msg


def test_error_malformed_json_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('[\n{"category": "a", "prompt": "x"},\n{"category": "a" "prompt": "y"}\n]')
    msg = _err(p)
    assert "line 3" in msg and "malformed JSON" in msg


def test_error_json_not_a_list(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"category": "a", "prompt": "x"}')
    assert "expected a list" in _err(p)


@pytest.mark.parametrize("field", ["prompt", "category"])
def test_error_missing_field(tmp_path, field):
    row = {"id": "x", "category": "a", "prompt": "p"}
    del row[field]
    _write_jsonl(tmp_path / "c.jsonl", [{"category": "a", "prompt": "ok"}, row])
    msg = _err(tmp_path / "c.jsonl")
    assert "line 2" in msg and f"missing '{field}'" in msg


def test_error_missing_field_json_names_item(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps([{"category": "a", "prompt": "ok"}, {"category": "a"}]))
    msg = _err(p)
    assert "item 2" in msg and "missing 'prompt'" in msg


def test_error_empty_prompt(tmp_path):
    _write_jsonl(tmp_path / "c.jsonl", [{"category": "a", "prompt": "ok"}, {"category": "a", "prompt": "  "}])
    msg = _err(tmp_path / "c.jsonl")
    assert "line 2" in msg and "empty prompt" in msg


def test_error_empty_category(tmp_path):
    _write_jsonl(tmp_path / "c.jsonl", [{"category": "", "prompt": "ok"}])
    msg = _err(tmp_path / "c.jsonl")
    assert "line 1" in msg and "empty category" in msg


def test_error_duplicate_id_names_both_lines(tmp_path):
    _write_jsonl(
        tmp_path / "c.jsonl",
        [{"id": "q", "category": "a", "prompt": "1"}, {"category": "a", "prompt": "2"}, {"id": "q", "category": "b", "prompt": "3"}],
    )
    msg = _err(tmp_path / "c.jsonl")
    assert "duplicate id 'q'" in msg and "line 3" in msg and "line 1" in msg


def test_error_duplicate_id_csv_names_both_rows(tmp_path):
    _write_csv(tmp_path / "c.csv", [{"id": "q", "category": "a", "prompt": "1"}, {"id": "q", "category": "a", "prompt": "2"}])
    msg = _err(tmp_path / "c.csv")
    assert "duplicate id 'q'" in msg and "line 3" in msg and "line 2" in msg


@pytest.mark.parametrize(
    "row,field,typ",
    [
        ({"category": "a", "prompt": 5}, "prompt", "int"),
        ({"category": ["a"], "prompt": "p"}, "category", "list"),
        ({"id": 7, "category": "a", "prompt": "p"}, "id", "int"),
    ],
)
def test_error_non_string_values(tmp_path, row, field, typ):
    _write_jsonl(tmp_path / "c.jsonl", [{"category": "a", "prompt": "ok"}, row])
    msg = _err(tmp_path / "c.jsonl")
    assert "line 2" in msg and f"'{field}' is a {typ}" in msg and "expected a string" in msg


def test_error_non_object_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('["a", "p"]\n')
    msg = _err(p)
    assert "line 1" in msg and "expected an object" in msg


def test_error_csv_missing_column(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("id,prompt\nx,hello\n")
    msg = _err(p)
    assert "line 1" in msg and "category" in msg


def test_error_csv_extra_fields(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("category,prompt\nchat,ok\nchat,hello, world\n")
    msg = _err(p)
    assert "line 3" in msg and "more fields than the header" in msg


def test_error_csv_empty_prompt_row_number(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text('category,prompt\nchat,"multi\nline"\nchat,\n')
    msg = _err(p)
    assert "line 4" in msg and "empty prompt" in msg
