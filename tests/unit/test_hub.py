"""The hub path (never hit in tests): arguments passed to huggingface_hub, and errors mapped to one fixable line."""

import pytest

from nlalab.errors import NLALabError
from nlalab.pairs import hub
from nlalab.pairs.registry import spec_from_args
from nlalab.pairs.resolve import resolve_pair


def test_local_dirs_never_touch_the_network(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: pytest.fail("network used"))
    assert hub.resolve_dir(str(tmp_path)) == tmp_path


def test_hub_ids_download_with_revision_and_token(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake(**kw):
        calls.append(kw)
        d = tmp_path / kw["repo_id"].replace("/", "--") / "snapshots" / "abc123"
        d.mkdir(parents=True, exist_ok=True)
        return str(d)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    p = hub.resolve_dir("kitft/nla-qwen2.5-7b-L20-av", revision="v1", allow_patterns=hub.LIGHT_PATTERNS)
    assert calls[0]["repo_id"] == "kitft/nla-qwen2.5-7b-L20-av" and calls[0]["revision"] == "v1"
    assert calls[0]["token"] == "hf_x" and "value_head.safetensors" in calls[0]["allow_patterns"]
    assert hub.revision_of(p) == "abc123"
    # a registered pair resolves all three ids; the layer comes from the registry
    dirs = resolve_pair(spec_from_args(pair="gemma3-12b-L32"), light=True)
    assert [c["repo_id"] for c in calls[1:]] == ["kitft/nla-gemma3-12b-L32-av", "kitft/nla-gemma3-12b-L32-ar",
                                                 "google/gemma-3-12b-it"]
    assert dirs.layer == 32 and dirs.provenance()["av"]["revision"] == "abc123"


@pytest.mark.parametrize("exc_name,needle", [
    ("GatedRepoError", "is gated"),
    ("RepositoryNotFoundError", "was not found"),
    ("LocalEntryNotFoundError", "cannot be reached"),
])
def test_hub_errors_are_one_fixable_line(monkeypatch, exc_name, needle):
    import huggingface_hub
    from huggingface_hub import errors

    exc_type = getattr(errors, exc_name)

    def boom(**kw):
        e = exc_type.__new__(exc_type)  # these errors want an HTTP response; the type is what matters
        Exception.__init__(e, "nope")
        raise e

    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    with pytest.raises(NLALabError) as e:
        hub.resolve_dir("google/gemma-3-12b-it", what="target")
    assert needle in str(e.value) and "Fix:" in str(e.value)


def test_bad_refs(tmp_path):
    with pytest.raises(NLALabError, match="neither an existing directory"):
        hub.resolve_dir(str(tmp_path / "missing" / "dir"))
    with pytest.raises(NLALabError, match="Unknown pair"):
        spec_from_args(pair="qwen-nope")


def test_validate_reports_an_unreachable_target_as_one_failed_check(fixture_pairs, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors
    from typer.testing import CliRunner

    from nlalab.cli import app

    def gated(**kw):
        e = errors.GatedRepoError.__new__(errors.GatedRepoError)
        Exception.__init__(e, "gated")
        raise e

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    p = fixture_pairs["qwen2"]
    res = CliRunner().invoke(app, ["validate", "--av", str(p.av), "--ar", str(p.ar), "--target", "google/gemma-3-12b-it"])
    assert res.exit_code == 1
    assert "is gated" in res.output and res.output.count("FAIL") == 1 and "ok    AV marker" in res.output
