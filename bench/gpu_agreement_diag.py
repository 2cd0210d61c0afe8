"""Device diagnostic (bf16, one GPU): greedy agreement of the fast engine with ``loop`` on the d=64 fixtures.

    PYTHONPATH=src python3 bench/gpu_agreement_diag.py launches qwen2,llama,gemma3_text   # 3 seeds x 6 rows,
        the old and the round-3 decode-attention launch, beside loop against itself at batch 1
    PYTHONPATH=src python3 bench/gpu_agreement_diag.py rows qwen2      # 18 rows (the GPU test's), per row,
        beside loop against itself split 9 + 9

Agreement = mean fraction of each row's tokens before the first difference. Behind the bound of
tests/gpu/test_gpu_engine.py::test_compile_auto_plans_per_call (docs/performance.md, fourth round)."""
import sys
import tempfile
from pathlib import Path

import torch

from nlalab.pairs.load import LoadOptions, load_av
from nlalab.testing import build_fixture_pair
from nlalab.testing import prefix_agreement as agree
from nlalab.verbalize import GenerationSettings, fast, verbalize
from nlalab.verbalize.fast import kernel


def toks(av, vecs, engine, **kw):
    gs = GenerationSettings(engine=engine, max_new_tokens=24, greedy=True, **kw)
    return [x.token_ids for x in verbalize(av, vecs, settings=gs)]


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "launches"
    arches = sys.argv[2].split(",") if len(sys.argv) > 2 else ["qwen2", "llama", "gemma3_text"]
    root = Path(tempfile.mkdtemp())
    for arch in arches:
        av = load_av(build_fixture_pair(root / arch, arch).av, LoadOptions(device="cuda"))
        if mode == "rows":
            vecs = torch.randn(18, av.d_model, generator=torch.Generator().manual_seed(0)) * 30
            loop = toks(av, vecs, "loop")
            split = toks(av, vecs[:9], "loop") + toks(av, vecs[9:], "loop")
            fr = agree(toks(av, vecs, "fast"), loop)
            print(arch, "fast vs loop %.3f" % (sum(fr) / len(fr)), [round(x, 2) for x in fr],
                  "loop 18 vs 9+9 %.3f" % (sum(agree(loop, split)) / 18), flush=True)
            continue
        for seed in (0, 1, 2):
            vecs = torch.randn(6, av.d_model, generator=torch.Generator().manual_seed(seed)) * 30
            loop = toks(av, vecs, "loop")
            res = {"loop_vs_loop_b1": round(sum(agree(loop, toks(av, vecs, "loop", batch_size=1))) / 6, 3)}
            for name, launch in (("old", {"bn": None, "num_warps": 4, "num_stages": 2}),
                                 ("round3", {"bn": 32, "num_warps": 2, "num_stages": 2})):
                kernel.LAUNCH.update(launch)
                fast.release_engines(av.model)
                res[name] = round(sum(agree(toks(av, vecs, "fast"), loop)) / 6, 3)
            print(arch, "seed", seed, res, flush=True)


if __name__ == "__main__":
    main()
