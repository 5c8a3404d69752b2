#!/usr/bin/env bash
# Every method at the foundation benchmark's shape (dim 1024, 4 layers, 8 heads, ffn 2816,
# vocab 4096, micro-batch 4, seq 256, 2 threads), one `onelora bench` run each, then a
# Markdown table: step time relative to `none` (paired within the run for adapter-only methods,
# else against the none run's median), peak RSS, trainable count and activation bytes kept.
# Usage: jobs/bench-methods.sh [STEPS] [RANK]   (defaults 6, 1). Results: run/bench-methods.md
set -euo pipefail
source "$(dirname "$0")/setup.sh"
onelora_install
onelora_build
steps="${1:-6}" rank="${2:-1}"
out="$ONELORA_ROOT/run/bench-methods"
mkdir -p "$out"
shape=(--dim 1024 --layers 4 --heads 8 --kv-heads 8 --ffn 2816 --vocab 4096 --max-seq-len 256
       --micro-batch 4 --seq-len 256 --targets all --rank "$rank" --steps "$steps")
: > "$out/lines.txt"
for m in none 1lora 1lora-random bitfit vera lora dora mora mora6 norms 1lora,norms full; do
  echo "bench: $m" >&2
  OMP_NUM_THREADS=2 "$ONELORA_BUILD/onelora" bench --method "$m" "${shape[@]}" | grep '^bench' \
    >> "$out/lines.txt"
done
# field helper: the value after "<key> " in a bench line
awk -F' [|] ' -v tokens=1024 '
  function val(key,   i) { for (i = 1; i <= NF; i++) if (index($i, key " ") == 1) return substr($i, length(key) + 2); return "" }
  {
    m = val("method"); step = val("median step") + 0; kept = val("kept") + 0
    if (m == "none") { none_step = step; none_kept = kept }
    rel = val("step/frozen"); how = "paired"
    if (rel == "n/a") { rel = sprintf("%.4f", step / none_step); how = "vs none run" }
    printf "| %s | %s | %s | %s (%s) | %s | %.2f | %.1f |\n", m, val("trainable"), val("median step"),
      rel, how, val("peak RSS"), kept, (kept - none_kept) * 1048576 / tokens
  }
  BEGIN { print "| method | trainable | median step | step / none | peak RSS | kept MiB | extra bytes kept per token |"
          print "|---|---|---|---|---|---|---|" }
' "$out/lines.txt" | tee "$out/table.md"
