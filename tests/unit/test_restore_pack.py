"""scripts/restore_pack.sh brings back a shipped pack of an earlier commit, and the warm-start preset's content
pin tells that pack from the one shipped now (docs/training.md, "Warm starts")."""

import subprocess
from pathlib import Path

import pytest

from nlalab.errors import NLALabError
from nlalab.pairs import shipped
from nlalab.train import warm
from nlalab.train.pipeline import PRESETS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "restore_pack.sh"
PACK = "smollm2-135m-instruct-L20-broad"


def _has_rev(rev: str) -> bool:
    r = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}:src/nlalab/data/pairs/{PACK}/pack.yaml"],
                       capture_output=True)
    return r.returncode == 0


def _restore(rev: str, out: Path) -> Path:
    subprocess.run(["bash", str(SCRIPT), rev, PACK, str(out)], check=True, capture_output=True)
    return out


def _sha(d) -> str:
    return warm.check_pack(str(d), 20, 16, 32, None, True).sha256


@pytest.mark.skipif(not _has_rev("HEAD"), reason="needs a git checkout")
def test_restoring_head_gives_the_shipped_pack(tmp_path):
    # the shipped pack may carry uncommitted edits in a working tree; compare with HEAD's committed files
    got = _restore("HEAD", tmp_path / "p")
    assert (got / "pack.yaml").is_file() and (got / "av_adapter_0" / "adapter_model.safetensors").is_file()
    committed = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--",
                                f"src/nlalab/data/pairs/{PACK}"]).returncode == 0
    if committed:
        assert _sha(got) == _sha(shipped.pack_dir("smollm2-135m-L20-broad"))


def test_the_warm_preset_pins_the_pack_it_continued_not_the_one_shipped_now(tmp_path):
    preset = PRESETS["smollm2-broad-warm"]
    with pytest.raises(NLALabError, match="not the one the recipe continues"):
        warm.check_pack(preset["init_from"], 20, 16, 32, None, True, sha256=preset["init_from_sha256"])
    if not _has_rev("090f1a2"):
        pytest.skip("a shallow clone: commit 090f1a2 is not here")
    old = _restore("090f1a2", tmp_path / "old")
    assert warm.check_pack(str(old), 20, 16, 32, None, True, sha256=preset["init_from_sha256"]).sha256 == \
        preset["init_from_sha256"]


@pytest.mark.skipif(not _has_rev("HEAD"), reason="needs a git checkout")
def test_restore_refuses_an_unknown_pack(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "HEAD", "no-such-pack", str(tmp_path / "x")], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "no pack no-such-pack" in r.stderr and not (tmp_path / "x").exists()
