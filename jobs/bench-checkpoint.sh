#!/usr/bin/env bash
# Checkpoint write and read time and size for LLaMA-2-13B 1LoRA adapters (2,129,920 values plus
# both Adam moments) from 1, 2 and 4 ranks (TP=1, TP=2, TP=4, TP=2 x PP=2), with
# `onelora bench --checkpoint-only`: only the trainable state is allocated, so 13B fits anywhere.
# Each line also gives the ideal time of one training step at that layout (the step's FLOPs at
# this machine's measured 2048^3 sgemm rate, ranks perfectly balanced; global batch 4 x 4096
# tokens), since a 13B step cannot run on a small machine.
# Usage: jobs/bench-checkpoint.sh [DIR]   (default run/bench-checkpoint; on a cluster, point DIR
# at the parallel file system). Results: DIR/lines.txt
set -euo pipefail
source "$(dirname "$0")/setup.sh"
onelora_install
onelora_build
out="${1:-$ONELORA_ROOT/run/bench-checkpoint}"
mkdir -p "$out"
: > "$out/lines.txt"
for layout in "1 --tp 1" "2 --tp 2" "4 --tp 4" "4 --tp 2 --pp 2"; do
  ranks="${layout%% *}"
  echo "bench-checkpoint: $ranks ranks, ${layout#* }" >&2
  OMP_NUM_THREADS=1 mpirun --oversubscribe -np "$ranks" "$ONELORA_BUILD/onelora" bench \
    --checkpoint-only --preset llama2-13b --method 1lora --targets all --micro-batch 1 \
    --micro-batches 4 --seq-len 4096 ${layout#* } --ckpt-dir "$out/ckpt" | grep '^bench' \
    >> "$out/lines.txt"
done
cat "$out/lines.txt"
