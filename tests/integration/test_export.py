"""`nlalab export`: one row per sample in every format, the run's metadata beside it."""

import json

import pytest
from typer.testing import CliRunner

from nlalab.cli import app
from nlalab.export import read_export_meta
from nlalab.study.pipeline import run_study

from runhelpers import cfg_for

runner = CliRunner()


@pytest.fixture(scope="module")
def small_run(fixture_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_run")
    run_study(cfg_for(fixture_pairs["qwen2"], out, controls=[], limit_per_category=2))
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    cfg = json.loads((out / "config.json").read_text())
    return out, rows, cfg


def test_parquet_reads_back_in_pandas_one_row_per_sample(small_run, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    run, rows, cfg = small_run
    out = tmp_path / "s.parquet"
    res = runner.invoke(app, ["export", str(run), "--format", "parquet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert len(df) == len(rows) == 8 * 2  # 2 items x 4 categories, k=2
    assert list(df.columns[:6]) == ["item_id", "category", "prompt", "vector_index", "sample", "explanation"]
    assert list(zip(df.item_id, df["sample"])) == [(r["item_id"], r["sample"]) for r in rows]
    assert df.cos.tolist() == pytest.approx([r["cos"] for r in rows], abs=0)
    assert df.explanation.tolist() == [r["explanation"] for r in rows]
    meta = read_export_meta(out)
    assert meta["corpus"]["sha256"] == cfg["corpus"]["sha256"]
    assert meta["config"]["seed"] == cfg["config"]["seed"] and meta["pair"]["layer"] == 2
    assert meta["n_rows"] == 16 and "schema_version" in meta
    assert json.loads((tmp_path / "s.parquet.meta.json").read_text())["corpus"] == cfg["corpus"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_formats_keep_every_row_and_value(small_run, tmp_path, fmt):
    pd = pytest.importorskip("pandas")
    run, rows, _ = small_run
    out = tmp_path / f"s.{fmt}"
    assert runner.invoke(app, ["export", str(run), "--format", fmt, "--out", str(out)]).exit_code == 0
    df = pd.read_csv(out, keep_default_na=False) if fmt == "csv" else pd.read_json(out, lines=True)
    assert len(df) == len(rows)
    assert df.explanation.tolist() == [r["explanation"] for r in rows]  # newlines and quotes survive
    assert df.fve_nrm.tolist() == pytest.approx([r["fve_nrm"] for r in rows], rel=1e-12)
    assert read_export_meta(out)["n_rows"] == len(rows)


def test_hf_dataset_saved_to_disk(small_run, tmp_path):
    datasets = pytest.importorskip("datasets")
    run, rows, cfg = small_run
    out = tmp_path / "hf"
    assert runner.invoke(app, ["export", str(run), "--format", "hf", "--out", str(out)]).exit_code == 0
    ds = datasets.load_from_disk(str(out))
    assert ds.num_rows == len(rows) and ds[3]["explanation"] == rows[3]["explanation"]
    assert json.loads(ds.info.description)["corpus"]["sha256"] == cfg["corpus"]["sha256"]
    assert read_export_meta(out)["n_rows"] == len(rows)


def test_export_refuses_cleanly(small_run, tmp_path):
    run, rows, _ = small_run
    out = tmp_path / "x.csv"
    assert runner.invoke(app, ["export", str(run), "--format", "csv", "--out", str(out)]).exit_code == 0
    res = runner.invoke(app, ["export", str(run), "--format", "csv", "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(app, ["export", str(tmp_path), "--format", "csv"])
    assert res.exit_code == 2 and "no samples.jsonl" in res.output
    res = runner.invoke(app, ["export", str(run), "--format", "xlsx"])
    assert res.exit_code == 2 and "parquet, csv, jsonl, hf" in res.output
    res = runner.invoke(app, ["export", str(run), "--format", "jsonl", "--out", "-"])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == len(rows)


def test_scorer_columns_join_on_item_and_sample(small_run, tmp_path):
    pd = pytest.importorskip("pandas")
    run, rows, _ = small_run
    res = runner.invoke(app, ["score", str(run), "--scorer", "keyword", "--n-perm", "20", "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    scored = {(r["item_id"], r["sample"]): r for r in map(json.loads, (run / "scores" / "keyword.jsonl").read_text().splitlines())}
    out = tmp_path / "s.jsonl"
    assert runner.invoke(app, ["export", str(run), "--format", "jsonl", "--out", str(out)]).exit_code == 0
    df = pd.read_json(out, lines=True)
    metrics = [k for k in next(iter(scored.values())) if k not in ("item_id", "sample", "category")]
    assert metrics and read_export_meta(out)["scorers"] == ["keyword"]
    assert any(r[m] is not None for r in scored.values() for m in metrics)  # numbers, not only missing values
    for m in metrics:
        want = [scored[(i, s)][m] for i, s in zip(df.item_id, df["sample"])]
        got = df[f"score_keyword_{m}"].tolist()
        assert [g is None or g != g for g in got] == [w is None for w in want]  # missing stays missing
        assert [g for g, w in zip(got, want) if w is not None] == pytest.approx([w for w in want if w is not None])
