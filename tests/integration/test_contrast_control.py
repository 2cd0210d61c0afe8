"""--directions: contrast directions (valence, factuality) captured, verbalized and scored like the category
directions, with negation, cross-axis and their chance rates, in results, report.md and the HTML (issue 16)."""

from __future__ import annotations

from runhelpers import cfg_for

from nlalab.study.pipeline import run_study


def test_contrast_directions_control_on_shipped_sets(fixture_pairs, tmp_path):
    p = fixture_pairs["qwen2"]
    res = run_study(cfg_for(p, tmp_path / "c", controls=["contrast_directions"], limit_per_category=2,
                            directions=["valence_v1", "factuality_v1"]))
    sec = res["controls"]["contrast_directions"]
    assert sec["alignment"]["n"] == 2 and sec["negation_symmetry"]["n"] == 2 and sec["cross"]["n"] == 2
    assert sec["alignment"]["chance"] == 0.25 and sec["negation_symmetry"]["chance"] == 0.75
    assert set(sec["sets"]) == {"positive", "negative", "true", "false"} or len(sec["sets"]) == 4
    assert (tmp_path / "c" / "stages" / "control_contrast_directions_capture.safetensors").is_file()
    rows = (tmp_path / "c" / "controls" / "contrast_directions.jsonl").read_text().splitlines()
    assert len(rows) == 6 * 2  # 2 self + 2 neg + 2 cross directions, K = 2
    md = (tmp_path / "c" / "report.md").read_text()
    assert "Contrast directions beyond the training mix" in md and "chance rate 0.25" in md
    assert "Contrast directions: alignment" in res["_summary"]
    # without --directions the control has nothing to do and says "not run"
    none = run_study(cfg_for(p, tmp_path / "n", controls=["contrast_directions"], limit_per_category=2))
    assert none["controls"]["contrast_directions"] is None


def test_contrast_directions_with_several_positions_per_item(fixture_pairs, tmp_path):
    """A run at every prompt token still captures each contrast prompt once (its last token)."""
    res = run_study(cfg_for(fixture_pairs["qwen2"], tmp_path / "a", positions="all", limit_per_category=1,
                            controls=["contrast_directions"], directions=["valence_v1"]))
    assert res["controls"]["contrast_directions"]["alignment"]["n"] == 1
