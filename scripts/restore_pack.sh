#!/usr/bin/env bash
# Restore a shipped adapter pack as it was at a git revision into a folder, e.g. to continue it with
# `nlalab train --set init_from=FOLDER` after a later commit replaced it (docs/training.md, "Warm starts").
# usage: bash scripts/restore_pack.sh REV PACK OUT
#   bash scripts/restore_pack.sh 090f1a2 smollm2-135m-instruct-L20-broad /tmp/broad_run1
set -euo pipefail
if [ $# -ne 3 ]; then echo "usage: bash scripts/restore_pack.sh REV PACK OUT (PACK: a folder under src/nlalab/data/pairs)" >&2; exit 2; fi
rev=$1; pack=$2; out=$3
src=src/nlalab/data/pairs/$pack
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
if ! git cat-file -e "$rev:$src/pack.yaml" 2>/dev/null; then
  echo "no pack $pack at revision $rev (no $src/pack.yaml there)" >&2; exit 1
fi
mkdir -p "$out"
git archive "$rev" "$src" | tar -x -C "$out" --strip-components=5
echo "restored $pack at $(git rev-parse --short "$rev") into $out"
