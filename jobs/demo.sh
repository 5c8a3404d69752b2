#!/usr/bin/env bash
# The main job: fine-tune the shipped base model (pretrained by onelora on the King James Bible,
# jobs/data/base-kjv.h5) with 1LoRA on a different text domain, the computing and science
# fortunes from Debian's `fortunes` package. Prints the validation loss before and after, the
# trainable parameter count, tokens/s and peak memory, then a sample of text from the base model
# and from the fine-tuned one (same prompt, same seed). About 2 minutes on 2 cores.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
onelora_install fortunes
onelora_build

work="$ONELORA_ROOT/run/demo"
rm -rf "$work" && mkdir -p "$work"
bin="$ONELORA_BUILD/onelora"
fortunes=/usr/share/games/fortunes
cat "$fortunes/computers" "$fortunes/science" "$fortunes/linux" > "$work/fortunes.txt"
"$bin" tokenize --in "$work/fortunes.txt" --out "$work/fortunes.h5" --val-fraction 0.1

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
"$bin" train --model "$ONELORA_ROOT/jobs/data/base-kjv.h5" --data "$work/fortunes.h5" \
  --method 1lora --targets all --steps "${DEMO_STEPS:-100}" --micro-batch 16 --seq-len 256 \
  --lr 1e-2 --warmup 5 --schedule cosine --clip 1.0 --seed 1 \
  --eval-every 50 --eval-batches 4 --ckpt-dir "$work/ckpt" --log "$work/train.jsonl"
echo "demo: log $work/train.jsonl, checkpoint in $work/ckpt"

# The domain shift, as text: the same prompt and seed sampled from the base model and from the
# fine-tuned checkpoint (its 1LoRA adapters applied unmerged).
ckpt="$(ls "$work"/ckpt/step-*.h5 | tail -n 1)"
prompt="A computer is"
sample=(--prompt "$prompt" --tokens 160 --temperature 0.8 --top-k 40 --seed 1)
echo "demo: a sample from the base model (King James Bible):"
"$bin" generate --model "$ONELORA_ROOT/jobs/data/base-kjv.h5" "${sample[@]}" 2>/dev/null
echo
echo "demo: the same prompt and seed after fine-tuning ($ckpt):"
"$bin" generate --model "$ONELORA_ROOT/jobs/data/base-kjv.h5" --ckpt "$ckpt" "${sample[@]}" 2>/dev/null
