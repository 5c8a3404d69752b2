#!/usr/bin/env bash
# "What fits where" (docs/PERFORMANCE.md): for LLaMA-2-7B, 13B and 70B and each method on all
# layers, the fewest ranks whose largest rank fits in 16, 24, 40 and 80 GiB, by `onelora plan`
# (predicted: nothing is allocated). Layouts are tried by rank count (1, 2, 4, ... 128), TP up to
# 8 (one node) first, then PP. Weights bf16 (f32 for dora, which needs f32 W), micro-batch 1.
# Usage: jobs/what-fits.sh [SEQ_LEN] [extra plan flags, e.g. --recompute]   (default 2048)
set -euo pipefail
source "$(dirname "$0")/setup.sh"
seq="${1:-2048}"
shift || true
B="$ONELORA_BUILD/onelora"
[ -x "$B" ] || { onelora_install; onelora_build >/dev/null; }
peak() {  # MiB of the largest rank, or "" when the layout does not divide the model
  "$B" plan "$@" 2>/dev/null | sed -n 's/^peak memory per rank.*: \([0-9.]*\) MiB$/\1/p'
}
echo "| model | method | weights | 16 GiB | 24 GiB | 40 GiB | 80 GiB |"
echo "|---|---|---|---|---|---|---|"
for model in llama2-7b llama2-13b llama2-70b; do
  for method in 1lora lora vera dora mora bitfit 1lora,norms full; do
    dtype=bf16
    [ "$method" = dora ] && dtype=f32
    row="| $model | $method | $dtype |"
    for gib in 16 24 40 80; do
      cell="> 128 ranks"
      for ranks in 1 2 4 8 16 32 64 128; do
        tp=$((ranks < 8 ? ranks : 8)) pp=$((ranks < 8 ? 1 : ranks / 8))
        m=$(peak --preset "$model" --method "$method" --weights-dtype "$dtype" --micro-batch 1 \
                 --seq-len "$seq" --tp "$tp" --pp "$pp" "$@")
        if [ -n "$m" ] && awk -v m="$m" -v g="$gib" 'BEGIN { exit !(m <= g * 1024) }'; then
          cell="TP$tp$([ "$pp" -gt 1 ] && echo "×PP$pp") ($(printf '%.1f' "$(awk -v m="$m" 'BEGIN { print m / 1024 }')") GiB)"
          break
        fi
      done
      row="$row $cell |"
    done
    echo "$row"
  done
done
