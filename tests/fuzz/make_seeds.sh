#!/usr/bin/env bash
# Makes the fuzz targets' seed files with the built onelora (no binary blobs in the tree):
#   make_seeds.sh ONELORA OUTDIR
# OUTDIR gets model-f32.h5 and model-f16.h5 (a small random model), data.h5 (tokenized text) and
# ckpt-1lora.h5, ckpt-lora.h5, ckpt-vera.h5 (checkpoints after one training step; vera adds the
# `frozen` group, lora 2-D tensors), model-f32.safetensors and model-f16.safetensors (merged), hf-config.json and hf-config-index.bin
# (fuzz_hf's input: config.json, NUL, the index). A few seconds; the files are 10-100 KB each.
set -euo pipefail
onelora=$1
out=$2
rm -rf "$out"
mkdir -p "$out"
cd "$out"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}  # a sanitized onelora: MPI's leaks are not ours
shape=(--preset tiny --dim 16 --layers 2 --heads 2 --kv-heads 1 --ffn 32 --max-seq-len 32)
"$onelora" init "${shape[@]}" --seed 1 --out model-f32.h5 >/dev/null
"$onelora" init "${shape[@]}" --seed 2 --dtype f16 --out model-f16.h5 >/dev/null
# a few KB of text (the tokenizer takes any bytes)
for i in $(seq 1 80); do echo "line $i of the fuzz seed text: the quick brown fox $((i * 7919))"; done >text.txt
"$onelora" tokenize --in text.txt --out data.h5 --val-fraction 0.1 >/dev/null
train=(train --model model-f32.h5 --data data.h5 --steps 1 --micro-batch 2 --seq-len 8)
"$onelora" "${train[@]}" --method 1lora,norms --ckpt-dir ck-1lora >/dev/null
"$onelora" "${train[@]}" --method lora --rank 2 --targets q,v --ckpt-dir ck-lora >/dev/null
"$onelora" "${train[@]}" --method vera --rank 2 --targets attn --ckpt-dir ck-vera >/dev/null
for m in 1lora lora vera; do mv "ck-$m/step-00000001.h5" "ckpt-$m.h5" && rmdir "ck-$m"; done
# safetensors: the merged model (the reader's input), f32 and f16
for t in f32 f16; do
  "$onelora" merge --model model-f32.h5 --ckpt ckpt-1lora.h5 --dtype $t --out st-$t/model.safetensors >/dev/null
  mv st-$t/model.safetensors model-$t.safetensors
  [ $t = f32 ] && mv st-$t/config.json hf-config.json
  rm -r st-$t
done
# a Hugging Face directory's JSON: config.json alone, and config.json NUL index.json
{ cat hf-config.json; printf '\0{"metadata": {}, "weight_map": {"pad": "a.safetensors"}}'; } >hf-config-index.bin
rm text.txt
ls -l
