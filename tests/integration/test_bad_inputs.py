"""The bad-input matrix of issue 14: every hostile-but-realistic input ends in a correct result (with a
warning where the data is degenerate) or in a non-zero exit with ONE line naming the problem and the fix,
never a traceback, and nothing already written is lost.

Each row drives the CLI in-process on a tiny fixture pair. Rows that need wiring in the pipeline or the
CLI (owned elsewhere) are xfail(strict=False) with the reason; they pass once that wiring lands.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from nlalab.cli import app

runner = CliRunner()
TINY = {"--k": "1", "--max-new-tokens": "4", "--controls": "none", "--limit-per-category": "2",
        "--n-perm": "20", "--n-boot": "20"}
WIRING = "needs pipeline wiring"
CLI_WIRING = "needs CLI wiring (cli.run should read --config with nlalab.study.config.load_config_file)"


@dataclass
class Ctx:
    pair: object          # FixturePair (maybe a damaged copy)
    tmp: Path
    out: Path             # a finished run directory (a copy), for `run` rows


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list]
    code: int
    needle: str
    setup: Optional[Callable[[Ctx], None]] = None
    xfail: Optional[str] = None
    check: Optional[Callable[[Ctx, object], None]] = None  # extra assertions after the run
    keeps_run: bool = True  # the finished run in ctx.out must be byte-identical afterwards
    marks: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------- helpers


def run_argv(ctx: Ctx, out: Optional[Path] = None, **over) -> list:
    flags = {**TINY, **{("--" + k.replace("_", "-")): str(v) for k, v in over.items()}}
    p = ctx.pair
    argv = ["run", "--av", str(p.av), "--ar", str(p.ar), "--target", str(p.target), "--out", str(out or ctx.out)]
    for k, v in flags.items():
        argv += [k, v]
    return argv


def explain_argv(ctx: Ctx, vec: Path, *extra) -> list:
    return ["explain", "--vectors", str(vec), "--av", str(ctx.pair.av), "--ar", str(ctx.pair.ar),
            "--max-new-tokens", "4", *extra]


def validate_argv(ctx: Ctx) -> list:
    p = ctx.pair
    return ["validate", "--av", str(p.av), "--ar", str(p.ar), "--target", str(p.target)]


def snapshot(d: Path) -> dict:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


def damaged_copy(ctx: Ctx) -> None:
    """Point ctx.pair at a private copy of the AV and AR, so a row can damage them."""
    from nlalab.testing import FixturePair

    p = ctx.pair
    av, ar = ctx.tmp / "pair" / "av", ctx.tmp / "pair" / "ar"
    shutil.copytree(p.av, av)
    shutil.copytree(p.ar, ar)
    ctx.pair = FixturePair(arch=p.arch, target=p.target, av=av, ar=ar, layer=p.layer)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def edit_sidecar(which: str, **fields):
    def setup(ctx: Ctx) -> None:
        damaged_copy(ctx)
        f = getattr(ctx.pair, which) / "nla_meta.yaml"
        raw = yaml.safe_load(f.read_text())
        raw.update(fields)
        f.write_text(yaml.safe_dump(raw))
    return setup


def damage(which: str, name: str, how: str = "truncate"):
    def setup(ctx: Ctx) -> None:
        damaged_copy(ctx)
        f = getattr(ctx.pair, which) / name
        if how == "truncate":
            truncate(f)
        else:
            f.write_bytes(b"<html>404 Not Found</html>" * 4)
    return setup


def vec_file(name: str, make: Callable[[Path], None]):
    def argv(ctx: Ctx) -> list:
        f = ctx.tmp / name
        make(f)
        return explain_argv(ctx, f)
    return argv


def write_config(ctx: Ctx, text: str, name: str = "c.yaml") -> Path:
    f = ctx.tmp / name
    f.write_text(text)
    return f


def corpus_file(ctx: Ctx, rows: list[dict], name: str = "corpus.jsonl") -> Path:
    f = ctx.tmp / name
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


CORPUS = [{"id": f"{c}-{i}", "category": c, "prompt": f"Question {i} about {c}?"} for c in ("chat", "code")
          for i in range(2)]


def results_has_warning(code: str, fve_undefined: bool = False):
    def check(ctx: Ctx, res) -> None:
        r = json.loads((ctx.tmp / "w" / "results.json").read_text())
        assert code in [w["code"] for w in r.get("data_warnings", [])], r.get("warnings")
        if fve_undefined:  # a degenerate B_rv: fve_nrm is n/a everywhere, never -3.8e32
            assert r["per_category"]["OVERALL"]["fve_nrm"]["mean"] is None
            assert '"fve_nrm": -' not in (ctx.tmp / "w" / "results.json").read_text()
            assert "fve_nrm=" not in (ctx.tmp / "w" / "report.md").read_text()
    return check


def no_stage_output(ctx: Ctx, res) -> None:
    assert not (ctx.tmp / "fresh" / "stages" / "capture.safetensors").exists(), "a model ran before the check"


def edited_corpus_run(ctx: Ctx) -> list:
    """Run once on a corpus, edit one prompt in place, rerun into the same directory."""
    f = corpus_file(ctx, CORPUS)
    first = runner.invoke(app, run_argv(ctx, ctx.tmp / "c", corpus=f))
    assert first.exit_code == 0, first.output
    rows = [dict(r) for r in CORPUS]
    rows[1]["prompt"] = "An entirely different prompt?"
    corpus_file(ctx, rows)
    return run_argv(ctx, ctx.tmp / "c", corpus=f)


def failed_then_fixed(ctx: Ctx) -> list:
    bad = runner.invoke(app, run_argv(ctx, ctx.tmp / "f", k=0))
    assert bad.exit_code == 2 and "--k" in bad.output
    return run_argv(ctx, ctx.tmp / "f")


def corrupt_stage(ctx: Ctx) -> None:
    truncate(ctx.out / "stages" / "capture.safetensors")


# --------------------------------------------------------------------------------------------- cases

CASES = [
    # ---- run: settings checked before any model loads (exit 2) ------------------------------------
    Case("run-k-0", lambda c: run_argv(c, k=0), 2, "--k: found 0, allowed k >= 1"),
    Case("run-k-negative", lambda c: run_argv(c, k=-2), 2, "--k: found -2"),
    Case("run-temperature-negative", lambda c: run_argv(c, temperature=-1), 2, "--temperature: found -1"),
    Case("run-top-p-2", lambda c: run_argv(c, top_p=2), 2, "allowed 0 < top_p <= 1"),
    Case("run-batch-size-0", lambda c: run_argv(c, batch_size=0), 2, "--batch-size: found 0"),
    Case("run-max-new-tokens-0", lambda c: run_argv(c, max_new_tokens=0), 2, "--max-new-tokens: found 0"),
    Case("run-position-first", lambda c: run_argv(c, position="first"), 2, "'first' is not a position"),
    Case("run-n-perm-0", lambda c: run_argv(c, n_perm=0), 2, "--n-perm: found 0"),
    Case("run-n-boot-0", lambda c: run_argv(c, n_boot=0), 2, "--n-boot: found 0"),
    Case("run-n-random-0", lambda c: run_argv(c, n_random=0), 2, "--n-random: found 0"),
    Case("run-unknown-control", lambda c: run_argv(c, controls="random_gausian"), 2,
         "did you mean 'random_gaussian'"),
    Case("run-unknown-force-stage", lambda c: run_argv(c, force="captur"), 2, "did you mean 'capture'"),
    Case("run-unknown-dtype", lambda c: run_argv(c, dtype="f16"), 2, "did you mean 'fp16'"),
    Case("run-config-unknown-key", lambda c: run_argv(c, config=write_config(c, "n_perms: 10\n")), 2,
         "unknown setting 'n_perms' (did you mean 'n_perm'?)"),
    Case("run-config-bad-value", lambda c: run_argv(c, config=write_config(c, "top_p: 3\n")), 2,
         "allowed 0 < top_p <= 1"),
    Case("run-config-yaml-syntax", lambda c: run_argv(c, config=write_config(c, "k: 2\ntop_p: [1\n")), 2,
         "malformed YAML"),
    Case("run-config-not-mapping", lambda c: run_argv(c, config=write_config(c, "- k\n- 2\n")), 2,
         "expected a mapping"),
    Case("run-config-missing", lambda c: run_argv(c, config=c.tmp / "nope.yaml"), 2, "not found"),
    Case("run-max-memory-bad", lambda c: run_argv(c, max_memory="70GiB"), 2, "is not DEVICE=SIZE"),
    Case("run-corpus-empty-prompt", lambda c: run_argv(c, c.tmp / "e", corpus=corpus_file(
        c, [{"category": "chat", "prompt": " "}])), 2, "empty prompt"),
    # ---- run: faults found at resolution or capture --------------------------------------------------
    Case("run-position-outside-prompt", lambda c: run_argv(c, c.tmp / "p", position=999), 2,
         "--position 999 is outside item"),
    Case("run-layer-mismatch", lambda c: run_argv(c, c.tmp / "fresh", layer=1), 2,
         "extraction_layer_index", check=no_stage_output),
    Case("run-corrupt-stage-file", lambda c: run_argv(c, force="reconstruct"), 3, "--force capture",
         setup=corrupt_stage, keeps_run=False),
    # ---- run: identity -----------------------------------------------------------------------------
    Case("run-corpus-edited-in-place", edited_corpus_run, 2, "1 item(s) changed (chat-1)"),
    Case("run-failed-start-then-fixed", failed_then_fixed, 0, ""),
    # ---- run: degenerate data is a warning in results.json, not a silent number -------------------
    Case("run-position-shared-template-token", lambda c: run_argv(c, c.tmp / "w", position=0), 0, "",
         check=results_has_warning("identical_activations", fve_undefined=True)),
    Case("run-single-item-category", lambda c: run_argv(c, c.tmp / "w", corpus=corpus_file(
        c, CORPUS + [{"id": "solo", "category": "agent", "prompt": "Book a flight?"}])), 0, "",
         check=results_has_warning("single_item_category")),
    # ---- validate: pair files (exit 1, one FAIL line each) ------------------------------------------
    Case("validate-truncated-ar-weights", validate_argv, 1, "model.safetensors: file size",
         setup=damage("ar", "model.safetensors")),
    Case("validate-truncated-value-head", validate_argv, 1, "value_head.safetensors: file size",
         setup=damage("ar", "value_head.safetensors")),
    Case("validate-html-instead-of-weights", validate_argv, 1, "safetensors header",
         setup=damage("av", "model.safetensors", how="html")),
    Case("validate-sidecar-d-model-text", validate_argv, 1, "d_model: found 'sixty-four'",
         setup=edit_sidecar("ar", d_model="sixty-four")),
    Case("validate-sidecar-token-id-text", validate_argv, 1, "tokens.injection_token_id: found 'abc'",
         setup=edit_sidecar("av", tokens={"injection_char": "x", "injection_token_id": "abc"})),
    # ---- explain: vector files and model files ------------------------------------------------------
    Case("explain-object-npy", vec_file("o.npy", lambda f: np.save(f, np.array([{"a": 1}], dtype=object),
                                                                    allow_pickle=True)), 2, "object array"),
    Case("explain-not-npy-bytes", vec_file("t.npy", lambda f: f.write_text("1,2,3\n")), 2, "not a .npy file"),
    Case("explain-wrong-ndim", vec_file("3d.npy", lambda f: np.save(f, np.ones((2, 2, 64), np.float32))), 2,
         "have shape (2, 2, 64)"),
    Case("explain-zero-vector", vec_file("z.npy", lambda f: np.save(f, np.zeros(64, np.float32))), 2,
         "are all zeros"),
    Case("explain-nan-vector", vec_file("n.npy", lambda f: np.save(f, np.full(64, np.nan, np.float32))), 2,
         "NaN or Inf"),
    Case("explain-max-new-tokens-0", lambda c: explain_argv(c, _ok_vec(c)) + ["--max-new-tokens", "0"], 2,
         "--max-new-tokens: found 0"),
    Case("explain-truncated-av-weights", lambda c: explain_argv(c, _ok_vec(c)), 3,
         "model.safetensors: file size", setup=damage("av", "model.safetensors")),
    Case("explain-truncated-value-head", lambda c: explain_argv(c, _ok_vec(c)), 3,
         "value_head.safetensors: file size", setup=damage("ar", "value_head.safetensors")),
    Case("explain-sidecar-d-model-text", lambda c: explain_argv(c, _ok_vec(c)), 2,
         "d_model: found 'sixty-four'", setup=edit_sidecar("ar", d_model="sixty-four")),
]


def _ok_vec(ctx: Ctx) -> Path:
    f = ctx.tmp / "ok.npy"
    np.save(f, np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32))
    return f


# ---------------------------------------------------------------------------------------------- test


@pytest.fixture(scope="module")
def finished_run(fixture_pairs, tmp_path_factory):
    """One finished tiny run; each row works on a copy of it."""
    p = fixture_pairs["qwen2"]
    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    ctx = Ctx(pair=p, tmp=out.parent, out=out)
    res = runner.invoke(app, run_argv(ctx))
    assert res.exit_code == 0, res.output
    return out


def _params():
    for c in CASES:
        marks = list(c.marks)
        if c.xfail:
            marks.append(pytest.mark.xfail(strict=False, reason=c.xfail))
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, fixture_pairs, finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    ctx = Ctx(pair=fixture_pairs["qwen2"], tmp=tmp_path, out=out)
    if case.setup:
        case.setup(ctx)
    before = snapshot(out)
    argv = [str(a) for a in case.argv(ctx)]
    res = runner.invoke(app, argv)
    text = res.output
    assert "Traceback" not in text
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == case.code, text[-2000:]
    if case.code:
        errors = [ln for ln in text.splitlines() if ln.startswith("error:") or ln.startswith("FAIL")]
        assert errors, text[-2000:]
        line = next((ln for ln in errors if case.needle in ln), None)
        assert line is not None, errors
        assert "Fix:" in line  # the problem and its fix on the same (one) line
    if case.keeps_run:
        assert snapshot(out) == before, "a failed command changed a finished run"
    if case.check:
        case.check(ctx, res)


# ------------------------------------------------------------------------------ library-level rows


def _st(tmp: Path, tensors=None) -> Path:
    import torch
    from safetensors.torch import save_file

    f = tmp / "w.safetensors"
    save_file(tensors or {"a": torch.ones(4, 4), "b": torch.zeros(3)}, str(f))
    return f


def test_check_safetensors_known_sizes(tmp_path):
    from nlalab.errors import FileFault
    from nlalab.pairs.load import check_safetensors

    f = _st(tmp_path)
    header = check_safetensors(f)
    assert set(header) - {"__metadata__"} == {"a", "b"}
    n = int.from_bytes(f.read_bytes()[:8], "little")
    assert f.stat().st_size == 8 + n + (16 + 3) * 4  # the size the check expects, by hand
    data = f.read_bytes()
    for cut, needle in ((len(data) - 1, "truncated"), (4, "safetensors header"), (8 + n - 1, "safetensors header")):
        f.write_bytes(data[:cut])
        with pytest.raises(FileFault, match=needle) as ei:
            check_safetensors(f)
        assert str(f) in str(ei.value) and "Fix:" in str(ei.value) and "re-download" in str(ei.value) and ei.value.exit_code == 3
    f.write_bytes(data + b"\0")
    with pytest.raises(FileFault, match="longer than its header says"):
        check_safetensors(f)


def test_check_weight_files_missing_shard(tmp_path):
    from nlalab.errors import FileFault
    from nlalab.pairs.load import check_weight_files

    _st(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "w.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(FileFault, match="model-00002-of-00002.safetensors: found no such file"):
        check_weight_files(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    assert [p.name for p in check_weight_files(tmp_path)] == ["w.safetensors"]


def test_check_layer_against_the_ar(fixture_pairs):
    from nlalab.errors import ValidationProblem
    from nlalab.pairs.load import check_layer

    p = fixture_pairs["qwen2"]
    assert check_layer(p.ar, p.layer, p.target) == 2
    with pytest.raises(ValidationProblem, match="found 2 \\(the AR's layer K\\), expected 1.*pass --layer 2"):
        check_layer(p.ar, 1)


@pytest.mark.parametrize("make,needle", [
    (lambda f: f.write_bytes(b"\x93NUMPY\x01\x00garbage"), "unreadable .npy"),
    (lambda f: np.save(f, np.array(["a", "b"])), "holds <U1 values, expected numbers"),
    (lambda f: np.save(f, np.ones((0, 4), np.float32)), "expected [d] or [n, d] with n, d >= 1"),
    (lambda f: np.save(f, np.array([[1.0, np.inf]], np.float32)), "(n=1, d=2) contain NaN or Inf values (rows [0])"),
    (lambda f: np.save(f, np.array([[1.0, 2.0], [0, 0], [3, 4]], np.float32)), "rows [1] are all zeros"),
])
def test_vector_file_faults(tmp_path, make, needle):
    from nlalab.errors import UsageError
    from nlalab.vectors_io import load_vectors

    f = tmp_path / "v.npy"
    make(f)
    with pytest.raises(UsageError) as ei:
        load_vectors(f)
    assert needle in str(ei.value) and "Fix:" in str(ei.value) and "\n" not in str(ei.value)


def test_vector_file_truncated_safetensors(tmp_path):
    import torch

    from nlalab.errors import UsageError
    from nlalab.vectors_io import load_vectors

    f = _st(tmp_path, {"v": torch.ones(2, 8)})
    assert load_vectors(f).shape == (2, 8)
    truncate(f, 0.8)
    with pytest.raises(UsageError, match="file size: found .* \\(truncated\\).*Fix: save the vectors again"):
        load_vectors(f)


def test_load_option_faults():
    from nlalab.errors import UsageError
    from nlalab.pairs.load import LoadOptions, parse_max_memory

    assert parse_max_memory("0=70GiB,cpu=1GiB") == {0: "70GiB", "cpu": "1GiB"}
    with pytest.raises(UsageError, match="'70GiB' is not DEVICE=SIZE. Fix:"):
        parse_max_memory("70GiB")
    with pytest.raises(UsageError, match="Unknown dtype 'f16'. Fix:"):
        LoadOptions(device="cpu", dtype="f16").resolved_dtype()
