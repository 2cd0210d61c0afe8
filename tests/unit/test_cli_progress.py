"""The Progress reporter: plain per-stage lines with counts, elapsed and ETA off a TTY; silent with quiet."""

import io

from nlalab.progress import Progress, eta_seconds, fmt_duration


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_fmt_duration_and_eta_known_answers():
    assert [fmt_duration(s) for s in (0, 42.4, 60, 185, 3720)] == ["0s", "42s", "1m00s", "3m05s", "1h02m"]
    assert eta_seconds(3, 10, 30.0) == 70.0  # 10 s per unit, 7 left
    assert eta_seconds(0, 10, 5.0) is None and eta_seconds(3, None, 5.0) is None
    assert eta_seconds(12, 10, 6.0) == 0.0


def test_log_lines_show_counts_elapsed_and_eta():
    buf, clock = io.StringIO(), Clock()
    p = Progress(buf, tty=False, interval=10, clock=clock)
    p.note("controls: blind, prefix")
    clock.t += 5
    p.stage("verbalize", total=10)
    clock.t += 3
    p.advance(1)  # 3 s since the stage line: under the interval, no line
    clock.t += 27
    p.advance(2)  # 30 s, 3 of 10 done: 10 s each, ETA 70 s
    clock.t += 70
    p.advance(7)  # the last unit always prints
    clock.t += 1
    p.stage("reconstruct")
    clock.t += 4
    p.done("run")
    lines = buf.getvalue().splitlines()
    assert lines == [
        "[nlalab] controls: blind, prefix",
        "[nlalab] verbalize: started (10 to do) at 5s into the run",
        "[nlalab] verbalize: 3/10 (30%), elapsed 30s, ETA 1m10s",
        "[nlalab] verbalize: 10/10 (100%), elapsed 1m40s, ETA 0s",
        "[nlalab] verbalize: done (10/10) in 1m41s",
        "[nlalab] reconstruct: started at 1m46s into the run",
        "[nlalab] reconstruct: done in 4s",
        "[nlalab] run finished in 1m50s",
    ]
    assert p.timings == {"verbalize": 101.0, "reconstruct": 4.0}


def test_on_stage_hook_of_run_study():
    buf, clock = io.StringIO(), Clock()
    p = Progress(buf, tty=False, clock=clock)
    for name, dt in (("capture", 2), ("verbalize", 30), ("score", 1), ("done", 0)):
        p.on_stage(name)
        clock.t += dt
    out = buf.getvalue()
    assert "capture: done in 2s" in out and "verbalize: done in 30s" in out and "score: done in 1s" in out
    assert "done: started" not in out
    p.on_stage("verbalize", 4)  # a caller that knows the count gets counts and ETA
    clock.t += 8
    p.advance(4)
    assert buf.getvalue().splitlines()[-1] == "[nlalab] verbalize: 4/4 (100%), elapsed 8s, ETA 0s"


def test_quiet_prints_nothing():
    buf = io.StringIO()
    p = Progress(buf, quiet=True, tty=False)
    p.note("x")
    p.stage("s", total=2)
    p.advance(2)
    p.done()
    assert buf.getvalue() == ""


def test_tty_draws_a_bar_and_keeps_lines():
    buf = io.StringIO()
    p = Progress(buf, tty=True)
    p.stage("verbalize", total=4)
    assert p._bar is not None
    p.advance(4)
    p.note("hello")
    p.done()
    assert p._bar is None
    out = buf.getvalue()
    assert "hello" in out and "verbalize: done (4/4)" in out


def test_cli_run_log_is_plain_lines(fixture_pairs, tmp_path):
    """`nlalab run` with stderr not a TTY: controls announced, each stage with its elapsed time."""
    from typer.testing import CliRunner

    from nlalab.cli import app

    p = fixture_pairs["qwen2"]
    res = CliRunner().invoke(app, ["run", "--av", str(p.av), "--ar", str(p.ar), "--target", str(p.target),
                                   "--out", str(tmp_path / "r"), "--k", "1", "--max-new-tokens", "4",
                                   "--limit-per-category", "1", "--controls", "random_gaussian", "--n-random", "2",
                                   "--n-boot", "50", "--n-perm", "50"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "[nlalab] controls: random_gaussian (+ keyword-recall permutation, always)" in out
    import re

    for stage in ("capture", "verbalize", "reconstruct", "score"):
        assert f"[nlalab] {stage}: started" in out and re.search(rf"\[nlalab\] {stage}: done( \(\d+/\d+\))? in ", out)
    # counts and an ETA for the stages whose size is known
    assert re.search(r"\[nlalab\] verbalize: \d+/\d+ \(100%\), elapsed \S+, ETA", out)
    assert "[nlalab] run finished in " in out
    quiet = CliRunner().invoke(app, ["run", "--av", str(p.av), "--ar", str(p.ar), "--target", str(p.target),
                                     "--out", str(tmp_path / "r"), "--k", "1", "--max-new-tokens", "4",
                                     "--limit-per-category", "1", "--controls", "random_gaussian", "--n-random",
                                     "2", "--n-boot", "50", "--n-perm", "50", "--quiet"])
    assert quiet.exit_code == 0 and "[nlalab]" not in quiet.output
