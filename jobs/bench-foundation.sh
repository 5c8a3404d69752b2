#!/usr/bin/env bash
# The foundation benchmark (docs/PERFORMANCE.md): dim 1024, 4 layers, 8 heads, ffn 2816,
# vocab 4096, micro-batch 4, seq 256, 2 threads, for --method none and 1lora, each run also
# measuring a 2048^3 sgemm. Usage: jobs/bench-foundation.sh [STEPS]   (default 6)
set -euo pipefail
source "$(dirname "$0")/setup.sh"
onelora_install
onelora_build
steps="${1:-6}"
for method in none 1lora none 1lora; do
  OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 "$ONELORA_BUILD/onelora" bench --method "$method" \
    --targets all --dim 1024 --layers 4 --heads 8 --kv-heads 8 --ffn 2816 --vocab 4096 \
    --max-seq-len 256 --micro-batch 4 --seq-len 256 --steps "$steps" | grep '^bench'
done
