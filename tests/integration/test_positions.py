"""--position all | random | reply: every (item, token) is a unit of the study, keyed item@token_index with its
token text and role, and the report breaks fve_nrm and recall down by position role (issue 16)."""

from __future__ import annotations

import json

import pytest
from runhelpers import cfg_for

from nlalab.study.pipeline import run_study


@pytest.mark.parametrize("position", ["all", "reply"])
def test_multi_position_runs_key_rows_by_item_and_token(fixture_pairs, tmp_path, position):
    p = fixture_pairs["llama"]
    res = run_study(cfg_for(p, tmp_path / position, positions=position, reply_tokens=3, limit_per_category=1,
                            controls=["recon_permutation"]))
    rows = [json.loads(x) for x in (tmp_path / position / "samples.jsonl").read_text().splitlines()]
    units = {r["item_id"] for r in rows}
    assert len(units) > 4 and all("@" in u for u in units)  # 4 items, several tokens each
    assert all(r["item_id"] == f"{r['source_item_id']}@{r['position']}" for r in rows)
    roles = {r["role"] for r in rows}
    assert roles == ({"reply"} if position == "reply" else {"prompt"})
    assert all(isinstance(r["token_text"], str) for r in rows)
    assert set(res["by_role"]) == roles and res["by_role"][next(iter(roles))]["OVERALL"]["n"] == len(rows)
    assert res["n_items"] == len(units) and res["capture"]["positions"] == position
    md = (tmp_path / position / "report.md").read_text()
    assert "By position role" in md
