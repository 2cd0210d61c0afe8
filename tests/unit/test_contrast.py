"""Contrast directions: known-answer vectors, the shipped valence/factuality sets, one-line loader errors."""

from __future__ import annotations

import json

import pytest
import torch

from nlalab.errors import UsageError
from nlalab.scorers.keyword import lexicon_hits, top_category
from nlalab.study.contrast import (Contrast, chance_rates, contrast_directions, contrast_items,
                                   load_contrast_sets)


def test_known_answer_directions_with_negation_and_cross():
    acts = {
        "pos": torch.tensor([[1.0, 0, 0], [3.0, 0, 0]]),      # mean (2, 0, 0)
        "neg": torch.tensor([[0.0, 0, 0], [0.0, 2, 0]]),      # mean (0, 1, 0)
        "true": torch.tensor([[0.0, 0, 4]]),                  # mean (0, 0, 4)
        "false": torch.tensor([[1.0, 1, 1], [1.0, 1, 3]]),    # mean (1, 1, 2)
    }
    cs = [Contrast("valence", "pos", "neg"), Contrast("factuality", "true", "false")]
    out = contrast_directions(acts, cs)
    got = {d["name"]: (d["kind"], d["category"], d["vector"].tolist()) for d in out}
    assert [d["name"] for d in out] == ["pos_minus_neg", "true_minus_false", "NEG_pos_minus_neg",
                                        "NEG_true_minus_false", "pos_minus_true", "true_minus_pos"]
    assert got["pos_minus_neg"] == ("self", "pos", [2.0, -1.0, 0.0])
    assert got["true_minus_false"] == ("self", "true", [-1.0, -1.0, 2.0])
    assert got["NEG_pos_minus_neg"] == ("neg", "pos", [-2.0, 1.0, 0.0])
    assert got["pos_minus_true"] == ("cross", "pos", [2.0, 0.0, -4.0])
    assert got["true_minus_pos"] == ("cross", "true", [-2.0, 0.0, 4.0])
    assert all(d["vector"].dtype == torch.float32 for d in out)
    # same keys as nlalab.study.directions.category_directions (plus the contrast's name)
    assert set(out[0]) == {"name", "kind", "category", "vector", "contrast"}


def test_default_pairs_sets_in_order_and_single_contrast_has_no_cross():
    acts = {"a": torch.ones(2, 4), "b": torch.zeros(3, 4)}
    out = contrast_directions(acts)
    assert [(d["name"], d["kind"]) for d in out] == [("a_minus_b", "self"), ("NEG_a_minus_b", "neg")]
    assert out[0]["vector"].tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="cannot be paired"):
        contrast_directions({"a": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="no activations for set 'c'"):
        contrast_directions(acts, [Contrast("x", "a", "c")])


def test_shipped_sets_load_and_their_lexicons_recognise_their_own_side():
    cs = load_contrast_sets(["valence_v1", "factuality_v1"])
    assert cs.categories == ["positive", "negative", "true", "false"]
    assert [c.name for c in cs.contrasts] == ["valence", "factuality"]
    for prompts in cs.sets.values():
        assert 12 <= len(prompts) <= 20 and len(set(prompts)) == len(prompts)
    assert len(cs.sets["positive"]) == len(cs.sets["negative"])  # twins
    items = contrast_items(cs)
    assert len(items) == sum(len(p) for p in cs.sets.values()) and items[0][0] == "positive/00"
    assert top_category(lexicon_hits("A joyful, happy and grateful celebration.", cs.lexicon)) == "positive"
    assert top_category(lexicon_hits("Grief and despair after a tragic loss.", cs.lexicon)) == "negative"
    assert top_category(lexicon_hits("An accurate, well established scientific fact.", cs.lexicon)) == "true"
    assert top_category(lexicon_hits("A false claim, a common misconception and myth.", cs.lexicon)) == "false"
    # lexicons are disjoint across all four sets
    words = [w for ws in cs.lexicon.values() for w in ws]
    assert len(words) == len(set(words))


def test_chance_rates():
    assert chance_rates(4) == {"self": 0.25, "cross": 0.25, "neg": 0.75}
    assert chance_rates(2)["neg"] == 0.5


def _write(tmp_path, data, name="c.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


GOOD = {"kind": "nlalab_contrast_sets", "version": 1, "contrasts": [{"name": "x", "plus": "a", "minus": "b"}],
        "sets": {"a": ["p1", "p2"], "b": ["q1", "q2"]}}


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.update(kind="other"), "not a contrast-set file"),
    (lambda d: d["sets"].update(a=["only one"]), "at least 2"),
    (lambda d: d.update(contrasts=[{"name": "x", "plus": "a", "minus": "zz"}]), "minus set 'zz' is not in 'sets'"),
    (lambda d: d.update(contrasts=[{"name": "x", "plus": "a", "minus": "a"}]), "with itself"),
    (lambda d: d.update(lexicon={"categories": {"c": ["w"]}}), "not sets"),
    (lambda d: d["sets"].update(b=["ok", ""]), "non-empty prompt strings"),
])
def test_loader_errors_are_one_line(tmp_path, edit, needle):
    data = json.loads(json.dumps(GOOD))
    edit(data)
    with pytest.raises(UsageError) as e:
        load_contrast_sets(_write(tmp_path, data))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_loader_missing_file_bad_json_and_clash(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_contrast_sets(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_contrast_sets(str(bad))
    p = _write(tmp_path, GOOD)
    assert load_contrast_sets(p).categories == ["a", "b"]
    with pytest.raises(UsageError, match="also appear"):
        load_contrast_sets([p, p])


def test_capture_contrast_directions_on_a_fixture(fixture_pairs):
    from nlalab.capture import capture
    from nlalab.pairs.load import load_target
    from nlalab.study.contrast import capture_contrast_directions
    from nlalab.testing import torch_threads

    p = fixture_pairs["qwen2"]
    cs = load_contrast_sets(["valence_v1", "factuality_v1"])
    for s in cs.sets:  # keep it fast: 3 prompts a set
        cs.sets[s] = cs.sets[s][:3]
    with torch_threads(1):
        tg = load_target(p.target, p.layer)
        dirs, acts, meta = capture_contrast_directions(tg.model, tg.tokenizer, p.layer, cs)
        pos = capture(tg.model, tg.tokenizer, cs.sets["positive"], p.layer).vectors.double().mean(0)
        neg = capture(tg.model, tg.tokenizer, cs.sets["negative"], p.layer).vectors.double().mean(0)
    assert acts.shape[0] == 12 and [m["set"] for m in meta][:4] == ["positive"] * 3 + ["negative"]
    d = {x["name"]: x for x in dirs}
    torch.testing.assert_close(d["positive_minus_negative"]["vector"], (pos - neg).float(), rtol=1e-5, atol=1e-5)
    assert {x["kind"] for x in dirs} == {"self", "neg", "cross"} and len(dirs) == 6
