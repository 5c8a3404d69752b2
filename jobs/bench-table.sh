#!/usr/bin/env bash
# One benchmark table (issue 11, docs/PERFORMANCE.md "Benchmark table"): per method, one
# `onelora bench` run on a synthetic model, and one Markdown row of what that run measured:
# tokens/s, achieved GFLOP/s over the sgemm rate measured by the same process, the step over the
# frozen-only step (paired within the run for adapter-only methods), peak RSS, and peak RSS over
# the planner's prediction. Every row comes from this one invocation.
#
# Usage: jobs/bench-table.sh [--shape foundation|7b|FLAGS...] [--dtype f32|bf16] [--steps N]
#                            [--methods "none 1lora ..."] [--out DIR]
#   foundation: dim 1024, 4 layers, 8 heads, ffn 2816, vocab 4096, micro-batch 4, seq 256
#   7b:         LLaMA-2-7B (32 layers, dim 4096, ffn 11008), micro-batch 1, seq 512
# Results: DIR/lines.txt (the bench lines) and DIR/table.md (default run/bench-table).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
shape=foundation dtype=f32 steps=4 methods="none 1lora" out="$ONELORA_ROOT/run/bench-table"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) shape=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --help|-h) sed -n '2,14p' "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
case "$shape" in
  foundation) flags=(--dim 1024 --layers 4 --heads 8 --kv-heads 8 --ffn 2816 --vocab 4096
                     --max-seq-len 256 --micro-batch 4 --seq-len 256) ;;
  7b) flags=(--preset llama2-7b --micro-batch 1 --seq-len 512) ;;
  *) echo "onelora: error: --shape $shape: expected foundation or 7b" >&2; exit 2 ;;
esac
onelora_install
onelora_build >/dev/null
mkdir -p "$out"
: > "$out/lines.txt"
for m in $methods; do
  echo "bench-table: $m ($shape, $dtype, $steps steps)" >&2
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}" "$ONELORA_BUILD/onelora" bench --method "$m" \
    --targets all --steps "$steps" --weights-dtype "$dtype" "${flags[@]}" "${extra[@]}" |
    grep '^bench' >> "$out/lines.txt"
done
awk -F' [|] ' '
  function val(key,   i) { for (i = 1; i <= NF; i++) if (index($i, key " ") == 1) return substr($i, length(key) + 2); return "" }
  function num(unit,   i, n) {  # a field "<number> <unit>"
    for (i = 1; i <= NF; i++) { n = split($i, w, " "); if (n == 2 && w[2] == unit) return w[1] }
    return ""
  }
  BEGIN { print "| method | tok/s | GFLOP/s | sgemm GFLOP/s | ratio | step / frozen | peak RSS | planned | RSS / planned |"
          print "|---|---|---|---|---|---|---|---|---|" }
  {
    printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", val("method"), num("tok/s"),
      num("GFLOP/s"), val("sgemm 2048^3"), val("ratio"), val("step/frozen"), val("peak RSS"),
      val("planned"), val("RSS/planned")
  }
' "$out/lines.txt" | tee "$out/table.md"
