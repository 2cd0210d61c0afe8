"""AR outputs do not depend on batch composition (issue 16): batched vs one-at-a-time, CPU fp32."""

from __future__ import annotations

import pytest
import torch

from nlalab.batching import exact_length_batches
from nlalab.errors import UsageError
from nlalab.pairs.load import LoadOptions, load_ar
from nlalab.reconstruct import BATCH_TOLERANCE, ar_param_count, choose_ar_dtype, max_rel_change, reconstruct
from nlalab.testing import torch_threads

EXPL = [
    "Formal encyclopedia article about the history of Paris, listing monuments.",
    "Python code defining a function that sorts a list; the final token opens a parenthesis.",
    "A friendly chat reply.",
    "Step-by-step arithmetic where the model has just written an equals sign and expects a number next.",
    "Agent log: the tool call returned an error and the next step retries.",
    "Recipe for bread.",
]


def test_exact_length_batches_never_mix_lengths():
    seqs = [[1] * 3, [1] * 5, [1] * 3, [1] * 5, [1] * 5, [1] * 2]
    got = list(exact_length_batches(seqs, 2))
    assert got == [[1, 3], [4], [0, 2], [5]]  # longest first, <= 2 per batch, one length per batch
    with pytest.raises(ValueError):
        list(exact_length_batches(seqs, 0))


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3_text"])
def test_batched_equals_unbatched_fp32(fixture_pairs, arch):
    p = fixture_pairs[arch]
    with torch_threads(1):
        ar = load_ar(p.ar, LoadOptions(device="cpu", dtype="fp32"), layer=p.layer)
        texts = EXPL + EXPL[:3]  # repeats share a length, so pad-free batches really hold several rows
        single = torch.cat([reconstruct(ar, [e], batch_size=1) for e in texts])
        free = reconstruct(ar, texts, batch_size=4, pad_free=True)
        padded = reconstruct(ar, texts, batch_size=4, pad_free=False)
    assert max_rel_change(free, single) <= BATCH_TOLERANCE["fp32"]
    assert max_rel_change(padded, single) <= BATCH_TOLERANCE["fp32"]
    # rows come back in input order: the repeats equal their originals
    torch.testing.assert_close(free[len(EXPL):], free[:3], rtol=BATCH_TOLERANCE["fp32"], atol=0)


def test_choose_ar_dtype(fixture_pairs):
    p = fixture_pairs["qwen2"]
    n = ar_param_count(p.ar)
    assert n > 0
    assert choose_ar_dtype(p.ar, "bf16") == ("bf16", "--ar-dtype bf16")
    assert choose_ar_dtype(p.ar, "auto", device="cpu")[0] == "fp32"
    need = 4 * n * 1.25
    assert choose_ar_dtype(p.ar, "auto", device="cuda", free_bytes=int(need) + 1)[0] == "fp32"
    dt, why = choose_ar_dtype(p.ar, "auto", device="cuda", free_bytes=int(need) - 1)
    assert dt == "bf16" and "exceed" in why
    with pytest.raises(UsageError, match="--ar-dtype"):
        choose_ar_dtype(p.ar, "fp8")
