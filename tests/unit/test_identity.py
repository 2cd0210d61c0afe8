"""A run's identity includes its corpus content; a failed start blocks nothing (issue 14)."""

import hashlib
import json

import pytest

from nlalab.corpus import Item, corpus_digest
from nlalab.errors import NLALabError, UsageError
from nlalab.study.identity import (check_identity, corpus_changes, corpus_record, is_binding, item_sha256,
                                   record_started)

ITEMS = [Item("a", "chat", "Hi"), Item("b", "chat", "Hello"), Item("c", "code", "print(1)")]


def record(items, **ident):
    return {"identity": {"k": 3, "corpus": "c.jsonl", **ident},
            "corpus": {"ref": "c.jsonl", "sha256": corpus_digest(items), **corpus_record(items)}}


def started(tmp_path, items=ITEMS, output=True, **ident):
    record_started(tmp_path, record(items, **ident))
    if output:
        (tmp_path / "stages").mkdir(exist_ok=True)
        (tmp_path / "stages" / "capture.safetensors").write_bytes(b"x")
    return tmp_path


def test_item_hash_is_sha256_of_canonical_json():
    want = hashlib.sha256('{"category":"chat","id":"a","prompt":"Hi"}'.encode()).hexdigest()
    assert item_sha256(ITEMS[0]) == want
    assert item_sha256(Item("a", "chat", "Hi ")) != want  # every byte of the prompt counts


def test_same_corpus_and_settings_pass(tmp_path):
    started(tmp_path)
    check_identity(tmp_path, record(ITEMS), ITEMS, overwrite=False)


def test_edited_corpus_is_refused_naming_items(tmp_path):
    started(tmp_path)
    edited = [Item("a", "chat", "Hi there"), ITEMS[1], Item("d", "code", "x = 1")]
    with pytest.raises(UsageError) as ei:
        check_identity(tmp_path, record(edited), edited, overwrite=False)
    msg = str(ei.value)
    assert "1 item(s) changed (a)" in msg and "1 item(s) added (d)" in msg and "1 item(s) removed (c)" in msg
    assert "--overwrite" in msg and "--out" in msg and "\n" not in msg and ei.value.exit_code == 2
    check_identity(tmp_path, record(edited), edited, overwrite=True)  # --overwrite proceeds


def test_reordered_corpus_is_refused(tmp_path):
    started(tmp_path)
    items = list(reversed(ITEMS))
    with pytest.raises(UsageError, match="the same items in another order"):
        check_identity(tmp_path, record(items), items, overwrite=False)


def test_changed_setting_is_refused(tmp_path):
    started(tmp_path)
    with pytest.raises(UsageError, match=r"different settings \(k: 3 -> 5\)"):
        check_identity(tmp_path, record(ITEMS, k=5), ITEMS, overwrite=False)


def test_failed_start_blocks_nothing(tmp_path):
    """config.json of a start that wrote no stage output does not bind the corrected command."""
    started(tmp_path, output=False, k=7)
    assert not is_binding(tmp_path)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "verbalize.jsonl").write_text("")  # an empty log is no output either
    (tmp_path / "stages" / ".capture.safetensors.tmp123").write_bytes(b"x")  # nor a killed writer's temp
    assert not is_binding(tmp_path)
    check_identity(tmp_path, record(ITEMS, k=3), ITEMS, overwrite=False)
    (tmp_path / "results.json").write_text("{}")
    assert is_binding(tmp_path)


def test_old_run_without_item_hashes_falls_back_to_the_digest(tmp_path):
    rec = record(ITEMS)
    del rec["corpus"]["item_sha256"]
    started(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(rec))
    check_identity(tmp_path, record(ITEMS), ITEMS, overwrite=False)
    edited = ITEMS[:2]
    with pytest.raises(UsageError, match="another version of the corpus"):
        check_identity(tmp_path, record(edited), edited, overwrite=False)


def test_unreadable_config_is_one_line(tmp_path):
    started(tmp_path)
    (tmp_path / "config.json").write_text("{torn")
    with pytest.raises(NLALabError, match="config.json: unreadable.*--overwrite"):
        check_identity(tmp_path, record(ITEMS), ITEMS, overwrite=False)


def test_corpus_changes_known_answer():
    old = [["a", "1"], ["b", "2"], ["c", "3"]]
    assert corpus_changes(old, [["a", "1"], ["b", "9"], ["d", "4"]]) == {
        "changed": ["b"], "added": ["d"], "removed": ["c"], "reordered": []}
    assert corpus_changes(old, old) == {"changed": [], "added": [], "removed": [], "reordered": []}
