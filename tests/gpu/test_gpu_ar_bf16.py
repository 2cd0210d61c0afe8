"""AR batch invariance on a GPU in bf16 (issue 16): run with `pytest -m gpu tests/gpu`."""

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CI has no GPU
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from nlalab.pairs.load import LoadOptions, load_ar  # noqa: E402
from nlalab.reconstruct import BATCH_TOLERANCE, choose_ar_dtype, max_rel_change, reconstruct  # noqa: E402

EXPL = [
    "Formal encyclopedia article about the history of Paris, listing monuments.",
    "Python code defining a function that sorts a list; the final token opens a parenthesis.",
    "A friendly chat reply.",
    "Step-by-step arithmetic where the model has just written an equals sign and expects a number next.",
    "Agent log: the tool call returned an error and the next step retries.",
    "Recipe for bread.",
]


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_gpu_batched_equals_unbatched(fixture_pair, dtype):
    ar = load_ar(fixture_pair.ar, LoadOptions(device="cuda", dtype=dtype), layer=fixture_pair.layer)
    texts = EXPL + EXPL[:3]
    single = torch.cat([reconstruct(ar, [e], batch_size=1) for e in texts])
    free = reconstruct(ar, texts, batch_size=4, pad_free=True)
    assert max_rel_change(free, single) <= BATCH_TOLERANCE[dtype]
    padded = reconstruct(ar, texts, batch_size=4, pad_free=False)
    assert max_rel_change(padded, single) <= BATCH_TOLERANCE[dtype]


def test_gpu_auto_ar_dtype_is_fp32_for_a_small_ar(fixture_pairs):
    assert choose_ar_dtype(fixture_pairs["qwen2"].ar, "auto", device="cuda")[0] == "fp32"
