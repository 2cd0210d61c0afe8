"""CLI conventions: --config precedence, --version, help text (examples, escaped brackets, the controls list),
one --seed default, --format with hidden --json, exit codes, `ls` untruncated when piped."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from nlalab import cli
from nlalab.cli import app, build_run_config
from nlalab.errors import UsageError
from nlalab.study.config import control_names

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def _help(*args) -> str:
    res = runner.invoke(app, [*args, "--help"], env=WIDE)
    assert res.exit_code == 0, res.output
    return res.output


def _commands():
    import typer.main

    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a sub-group (sidecar)
            out += [(name, sub, c) for sub, c in cmd.commands.items()]
        else:
            out.append((name, None, cmd))
    return out


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == f"nlalab {version('nlalab')}"


def test_completion_options_exist():
    out = _help()
    assert "--install-completion" in out and "--show-completion" in out


def test_every_command_has_an_example_and_the_exit_codes():
    cmds = _commands()
    assert {c[0] for c in cmds} >= {"ls", "validate", "explain", "run", "score", "compare", "report", "export",
                                    "train", "sidecar"}
    for name, sub, _ in cmds:
        out = _help(name, *([sub] if sub else []))
        assert "Examples:" in out and f"nlalab {name}" in out.split("Examples:")[1], (name, sub)
        assert "Exit codes: 0 ok; 1 a check failed" in out, (name, sub)


def test_explain_help_keeps_the_brackets():
    out = _help("explain")
    assert "[n, d] or [d] vectors" in out


def test_controls_help_lists_every_control():
    text = cli._controls_help()
    for c in control_names():
        assert c in text
    out = " ".join(_help("run").split())
    assert "recon_permutation" in out and "grounding" in out and "seeds" in out


def test_one_seed_default_and_format_everywhere():
    cmds = {(n, s): c for n, s, c in _commands()}
    seeds = {k: p.default for k, c in cmds.items() for p in c.params if p.name == "seed"}
    # score's default is the run's own seed (None), every other command's is 42
    assert {("explain", None), ("run", None), ("compare", None), ("report", None), ("train", None)} <= set(seeds)
    assert {k: v for k, v in seeds.items() if k != ("score", None)} == {k: 42 for k in seeds if k != ("score", None)}
    assert seeds[("score", None)] is None
    for k, c in cmds.items():
        names = {o for p in c.params for o in getattr(p, "opts", [])}
        assert "--restart" not in names or any(p.hidden for p in c.params if "--restart" in p.opts), k
        for p in c.params:
            if "--json" in p.opts:
                assert p.hidden and "--format" in names, k


def test_device_flags_only_where_a_model_loads():
    cmds = {(n, s): c for n, s, c in _commands()}
    has = {k for k, c in cmds.items() if any("--device" in p.opts for p in c.params)}
    assert has == {("run", None), ("explain", None), ("train", None)}
    for k in (("run", None), ("explain", None)):
        opts = {o for p in cmds[k].params for o in p.opts}
        assert {"--dtype", "--device-map", "--max-memory"} <= opts


def test_ls_is_tsv_when_piped_and_names_are_whole():
    from nlalab.pairs.registry import registry

    res = runner.invoke(app, ["ls"])  # CliRunner's stdout is not a TTY
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert lines[0].split("\t")[:3] == ["name", "target", "layer"]
    reg = registry()
    rows = {ln.split("\t")[0]: ln.split("\t") for ln in lines[1:] if "\t" in ln}
    for name, r in reg.items():
        assert rows[name][-2:] == [r.av, r.ar]  # the full hub ids, however long
    js = json.loads(runner.invoke(app, ["ls", "--json"]).output)
    assert set(js) == set(reg) and js[next(iter(reg))]["av"] == next(iter(reg.values())).av


def test_usage_errors_exit_2_and_name_the_fix(tmp_path):
    res = runner.invoke(app, ["explain", "--av", "x", "--ar", "y"])
    assert res.exit_code == 2 and "Give --prompt" in res.output
    res = runner.invoke(app, ["compare", str(tmp_path), str(tmp_path), "--format", "xml"])
    assert res.exit_code == 2 and "Unknown --format 'xml'" in res.output
    res = runner.invoke(app, ["run", "--config", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "not found" in res.output
    (tmp_path / "bad.yaml").write_text("sede: 7\n")
    res = runner.invoke(app, ["run", "--config", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 2 and "unknown setting 'sede' (did you mean 'seed'?)" in res.output
    assert "Traceback" not in res.output


def test_build_run_config_precedence():
    params = {"out": "runs/default", "seed": 42, "n_perm": 1000, "k": None, "controls": "all", "force": None,
              "position": "last"}
    # file values beat flag defaults ...
    cfg = build_run_config(params, set(), {"seed": 7, "n_perm": 200, "out": "runs/x"}, demo=False)
    assert (cfg.seed, cfg.n_perm, cfg.out, cfg.k) == (7, 200, "runs/x", 3)
    # ... typed flags beat the file, and the demo defaults fill what neither gives
    cfg = build_run_config({**params, "seed": 9, "position": "-2"}, {"seed", "position"}, {"seed": 7}, demo=True)
    assert (cfg.seed, cfg.positions, cfg.k, cfg.max_new_tokens) == (9, "-2", 2, 128)
    cfg = build_run_config(params, set(), {"controls": "none", "k": 5}, demo=True)
    assert cfg.controls == [] and cfg.k == 5
    with pytest.raises(UsageError, match="seed"):
        build_run_config(params, set(), {"seed": "seven"}, demo=False)
    with pytest.raises(UsageError, match=r"unknown control 'blnd' \(did you mean 'blind'\?\)"):
        build_run_config({**params, "controls": "blind,blnd"}, {"controls"}, {}, demo=False)
    with pytest.raises(UsageError, match=r"--force: unknown stage 'bogus'"):
        build_run_config({**params, "force": ["bogus"]}, {"force"}, {}, demo=False)


def test_config_file_values_reach_config_json(fixture_pairs, tmp_path):
    """The issue's case: a YAML with seed 7 and n_perm 200 ran with seed 42 and 1000 permutations."""
    p = fixture_pairs["qwen2"]
    conf = tmp_path / "run.yaml"
    conf.write_text(yaml.safe_dump({"seed": 7, "n_perm": 200, "k": 1, "max_new_tokens": 4, "n_boot": 50,
                                    "limit_per_category": 1, "controls": "none"}))
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--config", str(conf), "--av", str(p.av), "--ar", str(p.ar), "--target",
                              str(p.target), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    c = json.loads((out / "config.json").read_text())["config"]
    assert (c["seed"], c["n_perm"], c["k"], c["controls"]) == (7, 200, 1, [])
    # a typed flag still wins over the file
    res = runner.invoke(app, ["run", "--config", str(conf), "--av", str(p.av), "--ar", str(p.ar), "--target",
                              str(p.target), "--out", str(tmp_path / "run2"), "--seed", "11", "--quiet"])
    assert res.exit_code == 0, res.output
    c = json.loads((tmp_path / "run2" / "config.json").read_text())["config"]
    assert (c["seed"], c["n_perm"]) == (11, 200)


def test_ls_table_format_still_renders():
    res = runner.invoke(app, ["ls", "--format", "table"], env=WIDE)
    assert res.exit_code == 0 and "Registered NLA pairs" in res.output and "Shipped with nlalab" in res.output


def test_explain_format_json_and_its_hidden_alias(fixture_pairs):
    p = fixture_pairs["qwen2"]
    base = ["explain", "--av", str(p.av), "--ar", str(p.ar), "--target", str(p.target), "-p", "Hello there",
            "--max-new-tokens", "4", "--quiet"]
    a = runner.invoke(app, base + ["--format", "json"])
    b = runner.invoke(app, base + ["--json"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    rows_a = [json.loads(x) for x in a.stdout.splitlines()]
    rows_b = [json.loads(x) for x in b.stdout.splitlines()]
    assert len(rows_a) == 1 and rows_a == rows_b  # same seed (42), same sample
    assert {"cos", "fve_nrm_seed", "explanation"} <= set(rows_a[0])


def test_train_config_file_beats_flag_defaults(fixture_pairs, tmp_path):
    from nlalab.train.pipeline import TrainConfig

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "p0", "category": "chat", "format": "prompt", "text": "Hi?"}) + "\n")
    out = tmp_path / "from_file"
    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump({"out": str(out), "seed": 7, "device": "cpu"}))
    args = ["train", "--config", str(conf), "--base", str(fixture_pairs["qwen2"].target), "--corpus", str(corpus),
            "--stop-after", "corpus"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    saved = TrainConfig.model_validate(json.loads((out / "config.json").read_text()))
    assert (saved.seed, saved.device, saved.out) == (7, "cpu", str(out))
    typed = tmp_path / "typed"
    res = runner.invoke(app, args + ["--seed", "3", "--out", str(typed)])
    assert res.exit_code == 0, res.output
    saved = TrainConfig.model_validate(json.loads((typed / "config.json").read_text()))
    assert (saved.seed, saved.out) == (3, str(typed))
