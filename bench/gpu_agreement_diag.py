"""Device diagnostic: greedy bf16 agreement of the fast engine (graphs, uncompiled) with loop on the qwen2
fixture, under the old and new decode-attention launches, beside loop's agreement with itself at batch 1."""
import sys, tempfile, torch
from pathlib import Path
from nlalab.testing import build_fixture_pair
from nlalab.pairs.load import load_av, LoadOptions
from nlalab.verbalize import GenerationSettings, verbalize, fast
from nlalab.verbalize.fast import kernel
BF16 = LoadOptions(device="cuda")
def agree(a, b):
    fr = []
    for x, y in zip(a, b):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]: n += 1
        fr.append(n / max(len(x), len(y), 1))
    return sum(fr) / len(fr)
root = Path(tempfile.mkdtemp())
for arch in sys.argv[1].split(",") if len(sys.argv) > 1 else ("qwen2", "llama", "gemma3_text"):
    p = build_fixture_pair(root / arch, arch)
    av = load_av(p.av, BF16)
    for seed in (0, 1, 2):
        vecs = torch.randn(6, av.d_model, generator=torch.Generator().manual_seed(seed)) * 30
        toks = lambda r: [x.token_ids for x in r]
        loop = toks(verbalize(av, vecs, settings=GenerationSettings(engine="loop", max_new_tokens=24, greedy=True)))
        loop1 = toks(verbalize(av, vecs, settings=GenerationSettings(engine="loop", max_new_tokens=24, greedy=True, batch_size=1)))
        res = {"loop_vs_loop_b1": round(agree(loop, loop1), 3)}
        for name, launch in (("old", {"bn": None, "num_warps": 4, "num_stages": 2}), ("new", {"bn": 32, "num_warps": 2, "num_stages": 2})):
            kernel.LAUNCH.update(launch)
            fast.release_engines(av.model)
            ours = toks(verbalize(av, vecs, settings=GenerationSettings(engine="fast", max_new_tokens=24, greedy=True)))
            res[name] = round(agree(ours, loop), 3)
        print(arch, "seed", seed, res, flush=True)
