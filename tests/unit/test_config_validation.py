"""Every RunConfig setting is range-checked before work starts, as one UsageError line (issue 14)."""

import pytest

from nlalab.errors import EXIT_USAGE, UsageError
from nlalab.settings import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, Position, PositionError, SamplingSettings
from nlalab.study.config import RunConfig, control_names, field_range, load_config_file


def bad(**kw) -> str:
    with pytest.raises(UsageError) as ei:
        RunConfig(out="x", **kw)
    msg = str(ei.value)
    assert "\n" not in msg and "Fix:" in msg and ei.value.exit_code == EXIT_USAGE
    return msg


@pytest.mark.parametrize("kw,needle", [
    (dict(k=0), "--k: found 0, allowed k >= 1"),
    (dict(k=-2), "--k: found -2, allowed k >= 1"),
    (dict(temperature=-1), "--temperature: found -1, allowed temperature >= 0"),
    (dict(temperature=float("nan")), "expected a finite number"),
    (dict(top_p=2), "--top-p: found 2, allowed 0 < top_p <= 1"),
    (dict(top_p=0), "--top-p: found 0, allowed 0 < top_p <= 1"),
    (dict(max_new_tokens=0), "--max-new-tokens: found 0, allowed max_new_tokens >= 1"),
    (dict(n_perm=0), "--n-perm: found 0"),
    (dict(n_boot=0), "--n-boot: found 0"),
    (dict(n_random=0), "--n-random: found 0"),
    (dict(batch_size=0), "--batch-size: found 0"),
    (dict(capture_batch_size=0), "--capture-batch-size: found 0"),
    (dict(ar_batch_size=-1), "--ar-batch-size: found -1"),
    (dict(ar_share_prefix="yes"), "--ar-share-prefix: found 'yes', allowed 'auto', 'on' or 'off'"),
    (dict(limit_per_category=0), "--limit-per-category: found 0"),
    (dict(layer=-1), "--layer: found -1"),
    (dict(seed=-1), "--seed: found -1"),
    (dict(k="three"), "--k: found 'three', expected a whole number (k >= 1)"),
    (dict(positions="first"), "--position: 'first' is not a position"),
    (dict(reply_tokens=0), "--reply-tokens: found 0"),
    (dict(engine="fats"), "--engine: found 'fats', allowed 'auto', 'fast', 'loop', 'hf' or 'tp'"),
    (dict(dtype="f16"), "unknown dtype 'f16' (did you mean 'fp16'?)"),
    (dict(controls=["random_gausian"]), "unknown control 'random_gausian' (did you mean 'random_gaussian'?)"),
    (dict(force=["captur"]), "unknown stage 'captur' (did you mean 'capture'?)"),
    (dict(temprature=0.5), "unknown setting 'temprature' (did you mean 'temperature'?)"),
    (dict(out=""), "--out: found an empty value"),
])
def test_each_bad_setting_is_one_line(kw, needle):
    if "out" in kw:
        with pytest.raises(UsageError, match="--out: found an empty value"):
            RunConfig(**kw)
        return
    assert needle in bad(**kw)


def test_several_problems_on_one_line():
    msg = bad(k=0, top_p=3)
    assert msg.count("Fix:") == 2 and "--k" in msg and "--top-p" in msg


def test_missing_out_names_the_flag():
    with pytest.raises(UsageError, match="setting 'out' is required. Fix: pass --out"):
        RunConfig()


def test_good_values_pass_and_keep_their_form():
    c = RunConfig(out="x", temperature=0, top_p=1, positions=-3, controls="random_gaussian, blind", k=1)
    assert (c.positions, c.controls, c.temperature) == ("-3", ["random_gaussian", "blind"], 0)
    assert RunConfig(out="x", positions=" LAST ").positions == "last"
    assert RunConfig(out="x", controls="all").controls == control_names()
    assert RunConfig(out="x", controls="none").controls == []
    assert Position.parse(RunConfig(out="x", positions="7").positions).capture_arg() == [7]


def test_field_range_reads_the_declared_bounds():
    assert field_range("top_p") == "0 < top_p <= 1"
    assert field_range("k") == "k >= 1"
    assert field_range("pair") == ""


def test_position_type():
    assert Position.parse("last") == Position("last") and Position.parse("-1") == Position("index", -1)
    assert Position.parse(5).capture_arg() == [5] and str(Position.parse("+5")) == "5"
    assert Position.parse("random").capture_arg() == "random" and not Position.parse("all").one_per_item
    for v in ("first", "1.5", "", True):
        with pytest.raises(PositionError):
            Position.parse(v)
    assert RunConfig(out="x", positions="all").positions == "all"  # every prompt token becomes a unit
    with pytest.raises(PositionError, match="captured from the target's own reply"):
        Position.parse("reply").capture_arg()


def test_sampling_settings_declared_once():
    s = SamplingSettings()
    assert (s.temperature, s.max_new_tokens) == (DEFAULT_TEMPERATURE, DEFAULT_MAX_NEW_TOKENS)
    c = RunConfig(out="x")
    assert c.sampling() == s  # RunConfig's flat fields default to the same values
    assert RunConfig(out="x", temperature=0.0).sampling().is_greedy
    with pytest.raises(UsageError, match="--top-p: found 1.5, allowed 0 < top_p <= 1"):
        SamplingSettings(top_p=1.5)
    from nlalab.verbalize import GenerationSettings

    # the generation backends check the same ranges (explain, GRPO and evaluate build these directly)
    with pytest.raises(UsageError, match="--max-new-tokens: found 0"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(UsageError, match="--temperature: found -1"):
        GenerationSettings(temperature=-1)

    assert GenerationSettings().max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    g = GenerationSettings.from_sampling(RunConfig(out="x", temperature=0.7, seed=3).sampling(), batch_size=4)
    assert (g.temperature, g.seed, g.batch_size, g.top_p) == (0.7, 3, 4, 1.0)


# ------------------------------------------------------------------------------------ --config files


def test_config_file_yaml_and_json(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("k: 2\ntemperature: 0.5\n")
    assert load_config_file(y) == {"k": 2, "temperature": 0.5}
    j = tmp_path / "c.json"
    j.write_text('{"k": 2}')
    assert load_config_file(j) == {"k": 2}
    e = tmp_path / "empty.yaml"
    e.write_text("")
    assert load_config_file(e) == {}


@pytest.mark.parametrize("name,text,needle", [
    ("bad.yaml", "k: 2\ntemperature: [0.5\n", "line 3 column 1: malformed YAML"),
    ("bad.json", '{"k": 2,\n "x": }', "line 2 column 7: malformed JSON"),
    ("list.yaml", "- k\n- 2\n", "holds a list, expected a mapping"),
    ("num.yaml", "1: 2\n", "setting name 1 is not text"),
])
def test_config_file_faults_are_one_line(tmp_path, name, text, needle):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(UsageError) as ei:
        load_config_file(f)
    assert needle in str(ei.value) and "\n" not in str(ei.value) and str(f) in str(ei.value)


def test_config_file_missing(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_config_file(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="is a directory"):
        load_config_file(tmp_path)


def test_unknown_key_from_a_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("n_perms: 10\n")
    with pytest.raises(UsageError, match=r"unknown setting 'n_perms' \(did you mean 'n_perm'\?\)"):
        RunConfig(out="x", **load_config_file(f))
