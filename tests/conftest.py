"""Shared fixtures: tiny release-layout NLA pairs, built once per test session (a few seconds on CPU)."""

from __future__ import annotations

import os

import pytest

# CPU tests must behave the same on a GPU machine: default loads go to the CPU in fp32.
# GPU tests pass LoadOptions(device="cuda") explicitly.
os.environ.setdefault("NLALAB_DEVICE", "cpu")
# ... and verbalize on one device unless a test asks for several (GenerationSettings.devices), so the suite
# behaves the same on a machine with several GPUs; tests/unit/test_parallel.py and the GPU tests set it.
os.environ.setdefault("NLALAB_VERBALIZE_DEVICES", "none")

from nlalab.testing import ARCHES, build_fixture_pair


@pytest.fixture(scope="session")
def fixture_pairs(tmp_path_factory):
    """arch -> FixturePair (qwen2, gemma3_text, gemma3_mm, llama), K=2 of 4 layers, d=64."""
    root = tmp_path_factory.mktemp("nla_fixture_pairs")
    return {arch: build_fixture_pair(root / arch, arch) for arch in ARCHES}


@pytest.fixture(params=ARCHES)
def fixture_pair(request, fixture_pairs):
    """One FixturePair per architecture (the test runs once for each)."""
    return fixture_pairs[request.param]
