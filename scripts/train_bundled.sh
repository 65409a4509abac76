#!/usr/bin/env bash
# The whole recipe of one bundled model, resumable: run it again after an interruption and every stage picks up
# from its latest checkpoint (a finished stage only rewrites its final folder).
#
#   scripts/train_bundled.sh fashion32|faces64
#
# Stages: data -> StyleGAN2 -> Phase I (W encoder) -> Phase II (hypernetworks) -> package (fp16, directions,
# samples, model card) -> evaluation on the held-out set. Each trainer uses one CPU thread by default so that
# two domains can train side by side on a 2-core machine; set THREADS to change that.
set -euo pipefail
cd "$(dirname "$0")/.."
domain=${1:?usage: scripts/train_bundled.sh fashion32|faces64}
case "$domain" in
  fashion32) name=fashion-32; heldout=data/fashion32/test; examples=data/fashion32/test; identity=() ;;
  faces64) name=faces-64; heldout=data/faces64/heldout; examples=data/faces64/heldout; identity=(--identity) ;;
  *) echo "unknown domain $domain (fashion32 or faces64)" >&2; exit 2 ;;
esac
export OMP_NUM_THREADS=${THREADS:-1}
bin=.venv/bin
make data
for stage in generator w-encoder hypernetwork; do
  $bin/hyperinverter train "$stage" --config "configs/$domain/$stage.yaml"
done
$bin/python scripts/package_bundled.py --domain "$domain" --runs runs --out "src/hyperinverter/bundled/$name" \
  --examples "$examples"
$bin/hyperinverter evaluate --model "$name" --data "$heldout" "${identity[@]}" \
  --out "benchmarks/results/$name-heldout"
