"""The sample browser's HTML and data, checked without a browser: escaping, payload, errors, run inputs."""

from __future__ import annotations

import json
import math
import re

import pytest

from nlalab.errors import UsageError
from nlalab.report.browser import (FLAGS, _json_for_script, browser_inputs, controls_by_item, display_text,
                                   sample_browser_html)
from nlalab.scorers.keyword import content_words


def _payload(html: str) -> dict:
    m = re.search(r'<script type="application/json" class="nb-data">(.*?)</script>', html, re.S)
    assert m, "no data script"
    return json.loads(m.group(1))


def _row(**kw):
    base = {"item_id": "a", "category": "chat", "prompt": "Explain gravity near planets", "explanation": "x",
            "cos": 0.5, "fve_nrm": 0.25, "recall": 0.5}
    return {**base, **kw}


def test_display_text_replaces_what_cannot_be_shown():
    assert display_text("a\x1bb\x7f\x85\ud800\n\tz") == "a\u241bb\u2421\ufffd\ufffd\n\tz"
    assert display_text(None) == ""
    assert display_text(3) == "3"
    # the replacements are non-ASCII, so they split scorer tokens exactly where the originals did
    assert content_words(display_text("gravity\x1bplanet")) == content_words("gravity\x1bplanet") == {"gravity", "planet"}


def test_script_json_cannot_close_its_element_and_round_trips():
    s = '</script><!-- <b>&amp;</b>\u2028\u2029 "q" \\ \u00e9\u4e2d'
    out = _json_for_script({"t": s})
    assert "<" not in out and ">" not in out and "&" not in out
    assert "\u2028" not in out and "\u2029" not in out
    assert json.loads(out) == {"t": s}


def test_payload_holds_items_once_rows_flags_and_na():
    samples = [
        _row(item_id="a", sample=0, explanation="Gravity!", truncated=True, cjk_smell=True),
        _row(item_id="a", sample=1, explanation="none", cos=math.nan, fve_nrm=math.inf, recall=None, empty=True),
        _row(item_id="b", category="code", prompt="Sort a list in Python", sample=0, explanation="sort", cos=True,
             missing_close_tag=True),
    ]
    html = sample_browser_html(samples, categories=["code", "chat", "agent"])
    assert html.startswith('<section class="nb" id="samples"') and html.endswith("</section>")
    assert html.count("<section") == 1 and html.count('type="application/json"') == 1
    d = _payload(html)
    assert d["cols"] == ["cos", "fve_nrm", "recall"] and d["flags"] == list(FLAGS)
    assert d["cats"] == ["code", "chat", "agent"]  # the caller's order, not the rows'
    assert d["items"] == [["a", 1, "Explain gravity near planets", ["explain", "gravity", "near", "planets"]],
                          ["b", 0, "Sort a list in Python", ["list", "python", "sort"]]]
    # [item, sample, explanation, flag bits, cos, fve_nrm, recall]; bits: truncated 1, missing_close_tag 2,
    # empty 4, cjk_smell 8; NaN and Inf read as n/a (null); a bool is 0/1
    assert d["rows"] == [[0, 0, "Gravity!", 1 | 8, 0.5, 0.25, 0.5],
                         [0, 1, "none", 4, None, None, None],
                         [1, 0, "sort", 2, 1.0, 0.25, 0.5]]
    assert d["controls"] == {} and d["page"] == 100


def test_unknown_categories_are_appended_and_sample_defaults_to_position():
    samples = [_row(item_id="a", category="new"), _row(item_id="a"), _row(item_id="b", category="chat")]
    for r in samples:
        r.pop("sample", None)
    d = _payload(sample_browser_html(samples, categories=["chat"]))
    assert d["cats"] == ["chat", "new"]
    assert [r[:2] for r in d["rows"]] == [[0, 0], [0, 1], [1, 0]]


def test_stopwords_and_columns_are_honoured():
    samples = [_row(explanation="e", centered_cos=0.125)]
    d = _payload(sample_browser_html(samples, categories=["chat"], columns=["centered_cos", "cos"],
                                     stopwords={"explain", "near"}))
    assert d["cols"] == ["centered_cos", "cos"]
    assert d["rows"][0][4:] == [0.125, 0.5]
    assert d["items"][0][3] == ["gravity", "planets"]


def test_controls_are_keyed_by_item_index():
    samples = [_row(item_id="a"), _row(item_id="b")]
    ctrl = {"blind": [{"item_id": "b", "sample": 1, "explanation": "<guess>"}, {"item_id": "a", "explanation": "g"}]}
    d = _payload(sample_browser_html(samples, categories=["chat"], controls=ctrl))
    assert d["controls"] == {"blind": [[1, 1, "<guess>"], [0, None, "g"]]}


def test_page_is_self_contained_and_hostile_text_stays_data():
    html = sample_browser_html([_row(explanation='</script><script src="https://cdn.example/x.js"></script>',
                                     prompt="<img src=x onerror=alert(1)>")], categories=["chat"], title="S & <T>")
    outside_data = re.sub(r'(<script type="application/json" class="nb-data">).*?(</script>)', r"\1\2", html, flags=re.S)
    assert not re.search(r"\b(src|href)=|https?:|@import|url\(", outside_data)
    assert html.count("</script>") == 2  # the data's "</script>" is escaped
    assert '<h2 id="samples-h">S &amp; &lt;T&gt;</h2>' in html and 'aria-labelledby="samples-h"' in html


def test_without_title_there_is_no_heading():
    html = sample_browser_html([_row()], categories=["chat"], title=None, section_id="browse")
    assert "<h2" not in html and html.startswith('<section class="nb" id="browse" aria-label="Sample browser">')


@pytest.mark.parametrize("call, needle", [
    (lambda: sample_browser_html("rows", categories=[]), "samples: expected a list"),
    (lambda: sample_browser_html([{"item_id": "a"}], categories=[]), "samples[0]: no 'explanation'"),
    (lambda: sample_browser_html([_row(), 3], categories=[]), "samples[1]: expected a dict"),
    (lambda: sample_browser_html([_row()], categories="chat"), "categories='chat'"),
    (lambda: sample_browser_html([_row()], categories=[], columns=["prompt"]), "'prompt' is not a numeric column"),
    (lambda: sample_browser_html([_row()], categories=[], columns=[]), "non-empty list"),
    (lambda: sample_browser_html([_row()], categories=[], columns=["cos", "cos"]), "named twice"),
    (lambda: sample_browser_html([_row()], categories=[], columns=["cso"]),
     "['cso'] in no sample row. Fix: choose from the rows' numeric keys: ['cos', 'fve_nrm', 'recall']"),
    (lambda: sample_browser_html([_row(cos="high")], categories=[]), "samples[0]: column 'cos' holds 'high'"),
    (lambda: sample_browser_html([_row()], categories=[], page_size=0), "page_size=0"),
    (lambda: sample_browser_html([_row()], categories=[], section_id="1 x"), "section_id='1 x'"),
    (lambda: sample_browser_html([_row()], categories=[], controls={"blind": [{"explanation": "e"}]}),
     "controls['blind'][0]: expected a dict with 'item_id'"),
    (lambda: sample_browser_html([_row()], categories=[], controls={"blind": [{"item_id": "z", "explanation": "e"}]}),
     "item_id 'z' is not among the samples' items"),
])
def test_bad_input_is_one_usage_error(call, needle):
    with pytest.raises(UsageError) as ei:
        call()
    msg = str(ei.value)
    assert needle in msg and "Fix:" in msg and "\n" not in msg


def test_controls_by_item_maps_each_control_kind():
    samples = [{"item_id": "a", "vector_index": 0, "explanation": ""}, {"item_id": "b", "vector_index": 1,
                                                                      "explanation": ""}]
    raw = {
        "random_gaussian": [{"vector_index": 0, "sample": 0, "paired_item_id": "b", "explanation": "r"}],
        "blind": [{"vector_index": 1, "sample": 1, "explanation": "bl"}, {"vector_index": 9, "explanation": "?"}],
        "seed1042": [{"vector_index": 0, "sample": 0, "explanation": "s"}],
        "directions": [{"vector_index": 0, "sample": 0, "direction": "chat_vs_other", "explanation": "d"}],
        "prefix": [{"item_id": "a", "sample": 2, "explanation": "p"}],
    }
    assert controls_by_item(samples, raw) == {
        "random_gaussian": [{"item_id": "b", "sample": 0, "explanation": "r"}],
        "blind": [{"item_id": "b", "sample": 1, "explanation": "bl"}],  # vector_index 9 is no item: left out
        "seed1042": [{"item_id": "a", "sample": 0, "explanation": "s"}],
        "prefix": [{"item_id": "a", "sample": 2, "explanation": "p"}],
    }
    # directions' vector_index is a direction, not an item: mapped only when the caller says so
    assert controls_by_item(samples, raw, item_indexed=["directions"])["directions"] == [
        {"item_id": "a", "sample": 0, "explanation": "d"}]
    assert "blind" not in controls_by_item(samples, raw, item_indexed=["directions"])


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_browser_inputs_reads_a_run_directory(tmp_path):
    samples = [{"item_id": "a", "category": "chat", "prompt": "p", "vector_index": 0, "sample": 0, "explanation": "e"},
               {"item_id": "b", "category": "code", "prompt": "q", "vector_index": 1, "sample": 0, "explanation": "f"}]
    _jsonl(tmp_path / "samples.jsonl", samples)
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 1, "categories": ["code", "chat"]}))
    _jsonl(tmp_path / "controls/random_gaussian.jsonl", [{"vector_index": 0, "paired_item_id": "a", "explanation": "r"}])
    _jsonl(tmp_path / "controls/directions.jsonl", [{"vector_index": 0, "explanation": "d"}])
    _jsonl(tmp_path / "stages/control_blind.jsonl", [{"vector_index": 1, "sample": 0, "explanation": "bl"}])
    _jsonl(tmp_path / "stages/control_seed1042.jsonl", [{"vector_index": 0, "sample": 1, "explanation": "s"}])
    _jsonl(tmp_path / "stages/control_random_gaussian.jsonl", [{"vector_index": 0, "explanation": "stage copy"}])
    got = browser_inputs(tmp_path)
    assert got["samples"] == samples and got["categories"] == ["code", "chat"]
    assert got["controls"] == {
        "random_gaussian": [{"item_id": "a", "sample": None, "explanation": "r"}],
        "blind": [{"item_id": "b", "sample": 0, "explanation": "bl"}],
        "seed1042": [{"item_id": "a", "sample": 1, "explanation": "s"}],
    }
    # a blind control written under controls/ wins over its stage log
    _jsonl(tmp_path / "controls/blind.jsonl", [{"item_id": "a", "explanation": "moved"}])
    assert browser_inputs(tmp_path)["controls"]["blind"] == [{"item_id": "a", "sample": None, "explanation": "moved"}]
    html = sample_browser_html(**browser_inputs(tmp_path))
    assert _payload(html)["controls"]["blind"] == [[0, None, "moved"]]


def test_browser_inputs_without_samples_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"samples.jsonl: not found\. Fix: pass a finished run directory"):
        browser_inputs(tmp_path)


def test_numpy_scalars_truthy_flags_and_missing_category():
    np = pytest.importorskip("numpy")
    row = _row(cos=np.float32(0.5), fve_nrm=np.int64(2), recall=np.float64("nan"), truncated=1, empty=0)
    row["category"] = None
    d = _payload(sample_browser_html([row], categories=[]))
    assert d["rows"] == [[0, 0, "x", 1, 0.5, 2.0, None]]
    assert d["cats"] == ["(no category)"]
