"""Shared-prefix AR forwards on a GPU (nlalab.reconstruct.trie): within the batch tolerance of the padded
forward, fp32 (the default) and bf16 (opt-in). Run with `pytest -m gpu tests/gpu`."""

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CI has no GPU
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from nlalab.pairs.load import LoadOptions, load_ar  # noqa: E402
from nlalab.reconstruct import BATCH_TOLERANCE, ar_input_ids, max_rel_change, reconstruct, trie  # noqa: E402

SENTS = ["The user asks about Paris.", "It names the Louvre.", "The reply will list museums.", "Key words: art."]
TEXTS = [" ".join(SENTS[:i]) for i in range(1, len(SENTS) + 1)] + ["A friendly chat reply.", "Recipe for bread."]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gpu_shared_prefix_matches_the_padded_forward(fixture_pair, dtype):
    ar = load_ar(fixture_pair.ar, LoadOptions(device="cuda", dtype=dtype), layer=fixture_pair.layer)
    ids = ar_input_ids(ar, TEXTS)
    assert sum(len(c.tokens) for c in trie.plan(ids)) < sum(map(len, ids))
    info: dict = {}
    shared = reconstruct(ar, TEXTS, batch_size=3, share_prefix="auto" if dtype == "fp32" else "on", info=info)
    assert info["forward"] == "shared-prefix"
    padded = reconstruct(ar, TEXTS, batch_size=3, share_prefix="off")
    assert max_rel_change(shared, padded) <= BATCH_TOLERANCE[dtype]
    assert max_rel_change(shared[:1], shared[-1:]) > 1e-2  # rows differ, so the check above can fail
