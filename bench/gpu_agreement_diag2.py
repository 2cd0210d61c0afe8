import torch, tempfile
from pathlib import Path
from nlalab.testing import build_fixture_pair
from nlalab.pairs.load import load_av, LoadOptions
from nlalab.verbalize import GenerationSettings, verbalize, fast
def agree(a, b):
    fr = []
    for x, y in zip(a, b):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]: n += 1
        fr.append(n / max(len(x), len(y), 1))
    return fr
p = build_fixture_pair(Path(tempfile.mkdtemp()) / "qwen2", "qwen2")
av = load_av(p.av, LoadOptions(device="cuda"))
vecs = torch.randn(18, av.d_model, generator=torch.Generator().manual_seed(0)) * 30
toks = lambda r: [x.token_ids for x in r]
gs = GenerationSettings(engine="fast", max_new_tokens=24, greedy=True)
loop = toks(verbalize(av, vecs, settings=GenerationSettings(engine="loop", max_new_tokens=24, greedy=True)))
for scale in (30, 10, 3):
    v = vecs / 30 * scale
    loop = toks(verbalize(av, v, settings=GenerationSettings(engine="loop", max_new_tokens=24, greedy=True)))
    loopb = toks(verbalize(av, v[:9], settings=GenerationSettings(engine="loop", max_new_tokens=24, greedy=True))) + toks(verbalize(av, v[9:], settings=GenerationSettings(engine="loop", max_new_tokens=24, greedy=True)))
    ours = toks(verbalize(av, v, settings=gs))
    fr = agree(ours, loop)
    print("scale", scale, "ours-loop mean %.3f" % (sum(fr)/len(fr)), [round(x,2) for x in fr], "loop 18 vs 9+9: %.3f" % (sum(agree(loop, loopb))/18), flush=True)
