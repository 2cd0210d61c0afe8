"""nlalab.rundir.io: torn-tail repair, raw line separators inside records, one-line errors, the lock, temp
files and file modes."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from nlalab.errors import EXIT_RUNTIME, NLALabError
from nlalab.rundir import io


def _line(row: dict) -> bytes:
    return (json.dumps(row) + "\n").encode()


def test_torn_tail_is_cut_and_appends_continue(tmp_path):
    p = tmp_path / "log.jsonl"
    good = _line({"i": 0}) + _line({"i": 1})
    p.write_bytes(good + b'{"i": 2, "x": "half')  # a crash in the middle of the third record
    log = io.JsonlLog(p)
    assert log.read() == [{"i": 0}, {"i": 1}]
    assert p.read_bytes() == good  # the torn bytes are gone from the file
    log.append([{"i": 2}])
    assert log.read() == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_unterminated_last_record_is_cut_only_when_repairing(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_bytes(_line({"i": 0}) + b'{"i": 1}')  # valid JSON, but the newline never made it to disk
    assert io.read_jsonl(p) == [{"i": 0}, {"i": 1}]
    assert io.read_jsonl(p, repair=True) == [{"i": 0}]
    assert p.read_bytes() == _line({"i": 0})


def test_line_separators_stay_inside_a_record(tmp_path):
    p = tmp_path / "s.jsonl"
    text = "one\u2028two\u0085three\u2029four"
    io.write_jsonl(p, [{"explanation": text}, {"explanation": "b"}])
    raw = p.read_bytes()
    assert "\u2028".encode() in raw and raw.count(b"\n") == 2  # written raw, not escaped
    assert io.read_jsonl(p) == [{"explanation": text}, {"explanation": "b"}]
    assert io.read_jsonl(p, repair=True) == [{"explanation": text}, {"explanation": "b"}]
    assert p.read_bytes() == raw  # nothing was "repaired" away


def test_malformed_line_is_one_line_naming_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(_line({"i": 0}) + b"{oops\n" + _line({"i": 2}))
    with pytest.raises(NLALabError) as e:
        io.read_jsonl(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(p) in msg and "line 2" in msg and "Fix:" in msg


def test_missing_jsonl(tmp_path):
    assert io.read_jsonl(tmp_path / "none.jsonl", missing_ok=True) == []
    with pytest.raises(NLALabError, match="none.jsonl: not found. Fix:"):
        io.read_jsonl(tmp_path / "none.jsonl")


def test_read_json_errors_name_the_file(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{"a": 1,\n "b": }', encoding="utf-8")
    with pytest.raises(NLALabError, match=r"r\.json: malformed JSON at line 2\. Fix: do X\."):
        io.read_json(p, fix="do X")
    with pytest.raises(NLALabError, match=r"nothere\.json: not found\. Fix:"):
        io.read_json(tmp_path / "nothere.json")


def test_dir_lock_refusal_names_the_holder(tmp_path):
    with io.dir_lock(tmp_path, what="nlalab run"):
        assert (tmp_path / (io.LOCK_NAME + ".who")).read_text().strip() == f"pid {os.getpid()} (nlalab run)"
        with pytest.raises(NLALabError) as e:
            with io.dir_lock(tmp_path, wait=0, what="nlalab score"):
                pass
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path} is in use by pid {os.getpid()} (nlalab run). Fix:")
        assert "\n" not in msg and e.value.exit_code == EXIT_RUNTIME
    assert not (tmp_path / (io.LOCK_NAME + ".who")).exists()
    with io.dir_lock(tmp_path, wait=0):  # free again once released
        pass


def test_clean_tmp_removes_only_temp_files(tmp_path):
    (tmp_path / "sub").mkdir()
    left = [io.tmp_path(tmp_path / "results.json"), io.tmp_path(tmp_path / "sub" / "rows.jsonl")]
    for p in left:
        p.write_text("partial")
    keep = [tmp_path / "results.json", tmp_path / ".hidden", tmp_path / "sub" / "a.tmp"]
    for p in keep:
        p.write_text("x")
    assert sorted(io.clean_tmp(tmp_path)) == sorted(left)
    assert all(not p.exists() for p in left) and all(p.exists() for p in keep)
    assert io.clean_tmp(tmp_path / "absent") == []


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o027, 0o640)])
def test_atomic_write_honours_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        p = tmp_path / "results.json"
        io.atomic_write_json(p, {"a": 1})
        io.write_jsonl(tmp_path / "s.jsonl", [{"a": 1}])
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "s.jsonl").stat().st_mode) == mode
    assert json.loads(p.read_text()) == {"a": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["results.json", "s.jsonl"]  # no temp file left


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "results.json"
    io.atomic_write_json(p, {"v": 1})

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(NLALabError) as e:
        io.atomic_write_json(p, {"v": 2})
    assert str(e.value).startswith(f"{p}: no space left on the device. Fix:")
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["results.json"]  # the temp file was removed


def test_file_sha256(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_bytes(b"abc")
    assert io.file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 "abc"
