#!/usr/bin/env bash
# The foundation benchmark (docs/PERFORMANCE.md): dim 1024, 4 layers, 8 heads, ffn 2816,
# vocab 4096, micro-batch 4, seq 256, 2 threads. The 1lora run also times every step with its
# adapters detached (exactly --method none's work), so the 1LoRA/frozen ratio comes from one
# run; each run also measures a 2048^3 sgemm. Usage: jobs/bench-foundation.sh [STEPS] (10)
set -euo pipefail
source "$(dirname "$0")/setup.sh"
onelora_install
onelora_build
steps="${1:-10}"
for method in none 1lora; do
  OMP_NUM_THREADS=2 "$ONELORA_BUILD/onelora" bench --method "$method" --targets all \
    --dim 1024 --layers 4 --heads 8 --kv-heads 8 --ffn 2816 --vocab 4096 --max-seq-len 256 \
    --micro-batch 4 --seq-len 256 --steps "$steps" | grep '^bench'
done
