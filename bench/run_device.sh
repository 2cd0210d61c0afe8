#!/usr/bin/env bash
# One device call: GPU tests, then the benchmark shapes. Logs and JSON land in $OUT (and bench/results).
# usage: bash bench/run_device.sh [tests] [shape:only[:timeout_s] ...]   e.g. bash bench/run_device.sh tests qwen2.5-7b:all
#        BENCH_ARGS="--devices 2" bash bench/run_device.sh qwen2.5-7b:dp   (extra bench flags: 1 vs 2 GPUs)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --find-links .whl pydantic pyyaml typer rich pytest 2>&1 | tail -1; fi
nvidia-smi -L; python3 -c "import torch,transformers;print(torch.__version__,transformers.__version__)"
for job in "$@"; do
  case "$job" in
    tests) timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu -rA -W ignore -k "${TESTS_K:-gpu}" 2>&1 \
             | tee "$OUT/gpu_tests.log" | grep -E "passed|failed|PASSED|FAILED|^E " | head -40 ;;
    *) IFS=: read -r shape only tmo <<< "$job"; [ "$only" = all ] && only=default,static,ours
       timeout ${tmo:-${BENCH_TIMEOUT:-220}} python3 bench/bench_verbalize.py --shape "$shape" --only "$only" ${BENCH_ARGS:-} 2>&1 \
         | tee "$OUT/bench_$shape.log" | grep -E "^\[" ;;
  esac
done
