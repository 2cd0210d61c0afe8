"""The CUDA Triton sampler's CPU-testable parts: the slices' combine step, the CPU path ignoring ``screen``,
and (where Triton is installed) the kernels themselves in Triton's interpreter. The kernels on a GPU:
tests/gpu/test_gpu_sampler_kernel.py."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from nlalab.verbalize.fast import maths, sampler_kernel
from nlalab.verbalize.sampling import row_keys, sample_next

INF = float("inf")


def test_combine_takes_the_best_slice_and_the_first_column_among_ties():
    V = 100
    best = torch.tensor([[1.0, 3.0, 2.0],      # best slice 1
                         [5.0, -INF, 5.0],     # tie between slices 0 and 2: the smaller column
                         [-INF, -INF, -INF],   # a row of -inf: its candidates tie at -inf
                         [9.0, 2.0, 1.0]],     # slice 0 had no candidate (idx == V): ignored
                        dtype=torch.float64)
    idx = torch.tensor([[3, 40, 70], [12, V, 7], [5, V, 66], [V, 41, 80]], dtype=torch.int32)
    assert sampler_kernel.combine(best, idx, V).tolist() == [40, 7, 5, 41]


def test_combine_nan_rows_take_the_first_nan():
    # pass 2 marks the slices of a NaN row with best = +inf and their first NaN column
    best = torch.tensor([[-INF, INF, INF]], dtype=torch.float64)
    idx = torch.tensor([[100, 55, 31]], dtype=torch.int32)
    assert sampler_kernel.combine(best, idx, 100).tolist() == [31]


def test_the_cpu_path_ignores_screen():
    g = torch.Generator().manual_seed(0)
    V = 5000
    hv = maths.token_hash(V, "cpu")
    lg = torch.randn(8, V, generator=g) * 3
    keys = row_keys(7, torch.arange(8), torch.zeros(8, dtype=torch.long))
    for step in range(3):
        for T, top_k in ((1.0, 0), (0.7, 20)):
            ref = sample_next(lg, keys, step, temperature=T, top_k=top_k)
            got = maths._sample(lg, keys, torch.tensor([step]), hv, T, top_k, 1.0, False, screen=True)
            assert torch.equal(got, ref)


def test_key_premix_is_noise_bits_row_half():
    V = 300
    hv = maths.token_hash(V, "cpu")
    keys = torch.tensor([0, 1, 2 ** 32 - 1, 123456789])
    k = maths.key_premix(keys, 5)
    assert k.dtype == torch.int32
    x = (k[:, None] ^ hv[None]).clone()
    assert torch.equal(maths._hash32_tail_(x), maths.noise_bits(keys, 5, hv))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (its interpreter runs on the CPU)")
def test_kernels_in_the_triton_interpreter_pick_the_full_paths_tokens():
    code = ("from nlalab.verbalize.fast import maths\n"
            "print('RESULT', repr(maths.screen_self_check(maths.token_hash(2500, 'cpu'), rows=5)))\n")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert "RESULT ''" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
