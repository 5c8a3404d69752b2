#!/usr/bin/env bash
# Reproduces jobs/data/base-kjv.h5, the demo's base model: the `small` preset (D=256, L=4, H=8,
# Hkv=4, F=688, byte vocabulary) pretrained from random with --method full on the King James
# Bible (public domain; Debian package bible-kjv), then stored as f16.
# Takes about 25 minutes on 2 cores. The shipped file was made with an earlier random
# initialisation (the weights are now counter-based, keyed by tensor name, row and column), so a
# rerun gives an equivalent model (the same recipe; the shipped one reached validation loss
# 1.154 nats/byte), not the same bytes. Usage: jobs/pretrain-demo-model.sh [WORKDIR]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
onelora_install bible-kjv
onelora_build
work="${1:-$ONELORA_ROOT/run/pretrain}"
mkdir -p "$work"
bin="$ONELORA_BUILD/onelora"
steps="${PRETRAIN_STEPS:-1200}"

# The whole Bible, one verse per line, without the "Ge1:1 " references.
bible -f Gen1:1-Rev22:21 2>/dev/null | sed -E 's/^[0-9A-Za-z]+[0-9]+:[0-9]+ //' > "$work/kjv.txt"
"$bin" tokenize --in "$work/kjv.txt" --out "$work/kjv.h5" --val-fraction 0.02
"$bin" init --preset small --seed 7 --out "$work/init.h5"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}" "$bin" train --model "$work/init.h5" --data "$work/kjv.h5" \
  --method full --steps "$steps" --micro-batch 16 --seq-len 256 --lr 2e-3 --min-lr 1e-4 \
  --warmup 50 --schedule cosine --clip 1.0 --seed 7 --eval-every 200 --eval-batches 8 \
  --ckpt-dir "$work/ckpt" --ckpt-every 200 --log "$work/pretrain.jsonl"
"$bin" merge --model "$work/init.h5" --ckpt "$(ls "$work"/ckpt/step-*.h5 | tail -1)" \
  --dtype f16 --out "$ONELORA_ROOT/jobs/data/base-kjv.h5"
ls -la "$ONELORA_ROOT/jobs/data/base-kjv.h5"
