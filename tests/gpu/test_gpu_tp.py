"""Tensor parallel on 2 GPUs (NCCL, one process per GPU, ranks spawned by nlalab): the rows of one GPU.
Run on a machine with >= 2 GPUs: ``pytest -m gpu tests/gpu/test_gpu_tp.py -o addopts="" -s``."""

import time

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available() or torch.cuda.device_count() < 2:  # pragma: no cover - CI has no GPU
    pytest.skip("needs 2 CUDA GPUs", allow_module_level=True)

from nlalab.pairs.load import LoadOptions, load_av  # noqa: E402
from nlalab.testing import chat_prompt_ids  # noqa: E402
from nlalab.verbalize import GenerationSettings, verbalize  # noqa: E402
from nlalab.verbalize import tp  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _group():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old
    tp.shutdown()


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_tp_two_gpus_equal_loop_on_one(fixture_pairs, name):
    """fp32: token-identical to the loop engine on cuda:0 (greedy and sampled); bf16: most rows identical
    (split sums round differently at near-ties, as another micro-batch shape does)."""
    for dtype, need in (("fp32", 1.0), ("bf16", 0.5)):
        av = load_av(fixture_pairs[name].av, LoadOptions(device="cuda:0", dtype=dtype))
        torch.manual_seed(0)
        vecs = torch.randn(8, av.d_model) * 30
        for gs in (dict(greedy=True), dict(temperature=1.0, seed=11)):
            one = verbalize(av, vecs, k=2, settings=GenerationSettings(engine="loop", devices=None, max_new_tokens=24,
                                                                        batch_size=16, **gs))
            t0 = time.perf_counter()
            two = verbalize(av, vecs, k=2, settings=GenerationSettings(engine="tp", devices=2, max_new_tokens=24,
                                                                        batch_size=16, **gs))
            dt = time.perf_counter() - t0
            same = sum(a.token_ids == b.token_ids for a, b in zip(one, two)) / len(one)
            print(f"{name} {dtype} {gs}: {same:.2f} identical, tp {dt:.2f} s")
            assert tp.current().world == 2 and tp.current().devices[1] == torch.device("cuda", 1)
            assert same >= need, (name, dtype, gs, same)
        tp.release(av.model)


def test_tp_two_gpus_plain_capture_and_ar_equal_one_gpu(fixture_pairs):
    """fp32 on 2 GPUs: the blind control's plain rows equal loop on cuda:0; capture and AR reconstructions
    within 1e-5 relative per row (the study's stages with --engine tp)."""
    from nlalab.capture import capture
    from nlalab.pairs.load import av_eos_ids, load_ar, load_target
    from nlalab.reconstruct import reconstruct
    from nlalab.verbalize.plain import generate_texts

    p = fixture_pairs["gemma3_text"]
    opts = LoadOptions(device="cuda:0", dtype="fp32")
    tg = load_target(p.target, p.layer, opts, truncate=False)
    tok = tg.tokenizer
    texts = ["Hi", "What is the capital of Brazil and why?", "Prove it.", "x " * 20]
    prompts = chat_prompt_ids(tok, texts)
    eos = av_eos_ids(tok, tg.model)
    gs = dict(max_new_tokens=16, temperature=1.0, seed=3)
    one = generate_texts(tg.model, tok, prompts, eos, 2, [1, 2, 3, 4], GenerationSettings(engine="loop", **gs))
    two = generate_texts(tg.model, tok, prompts, eos, 2, [1, 2, 3, 4],
                         GenerationSettings(engine="tp", devices=2, **gs))
    assert [r.token_ids for r in two] == [r.token_ids for r in one]
    rel = lambda a, b: float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())  # noqa: E731
    ref = capture(tg.model, tok, texts, p.layer, positions="all")
    got = capture(tg.model, tok, texts, p.layer, positions="all", tensor_parallel=2)
    assert rel(got.vectors, ref.vectors) < 1e-5
    tp.release(tg.model)
    ar = load_ar(p.ar, opts, layer=p.layer)
    assert rel(reconstruct(ar, texts, tensor_parallel=2), reconstruct(ar, texts)) < 1e-5
    tp.release(ar.model)
