"""JSONL readers split on "\\n" only: json.dumps(ensure_ascii=False) leaves U+2028/U+2029/U+0085 raw inside
strings, and str.splitlines() would cut such a record in two (seen on the GPU with random-weight output)."""

import json

from nlalab.corpus import load_corpus
from nlalab.rundir.io import read_jsonl

ODD = "a\u2028b\u2029c\x85d\x1ce\r"


def test_report_reader_keeps_records_with_unicode_line_separators(tmp_path):
    rows = [{"explanation": ODD, "i": 0}, {"explanation": "plain", "i": 1}]
    p = tmp_path / "samples.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_jsonl(p) == rows


def test_corpus_reader_keeps_prompts_with_unicode_line_separators(tmp_path):
    rows = [{"id": f"p{i}", "category": "chat", "prompt": f"question {i} {ODD}"} for i in range(2)]
    p = tmp_path / "c.jsonl"
    p.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n", encoding="utf-8")
    items = load_corpus(str(p))
    assert [it.prompt for it in items] == [r["prompt"] for r in rows]
