#!/usr/bin/env bash
# tests/gpu/run.sh: every GPU check of onelora, as one script for a machine with an NVIDIA GPU
# (issue 13). Budget: under 6 minutes on one H200, so that it can run twice in 15 minutes of
# device time. It
#   1. builds build-gpu/ with all cores (-DONELORA_CUDA=ON, test hooks, warnings as errors);
#   2. runs gpu.ops: every backend op on the GPU against the CPU reference, within the error
#      model of tests/gpu/test_backend_ops.c;
#   3. runs tests/gpu/methods.py: every method's gradients and losses on --device cuda against
#      --device cpu (f32, and bf16 weights with the tolerance its docstring derives), and TP = 2
#      over two ranks on the one GPU against TP = 1, on every communication path there is;
#   4. runs the benchmark: full-width LLaMA-2-13B layers (dim 5120, ffn 13824, 40 heads,
#      seq 2048, as many layers as the planner says fit, at most the model's 40) for none, 1lora,
#      lora (bf16 weights) and dora (f32 weights: it reads W's rows), each reporting tokens/s,
#      TFLOP/s over cuBLAS on the model's own GEMM shapes measured in the same run, step over
#      frozen step, and peak GPU memory over the planner's prediction;
# and ends with a summary table (part | result | seconds). Exit: 0 all passed, 1 a failure, 77 no
# GPU here. Outputs and logs go to $ONELORA_GPU_OUT (default build-gpu/gpu-results).
#
# The machine needs onelora's build dependencies (jobs/setup.sh's Debian packages: Open MPI,
# parallel HDF5, OpenBLAS, CMocka, Jansson) and a python3 with numpy and h5py. Where they are
# missing and no archive can be reached, ONELORA_GPU_DEBS=DIR uses the .deb files of DIR
# (`tests/gpu/debs.sh download DIR`, made on a Debian 12 machine with the archive), unpacked
# under a prefix of their own (tests/gpu/debs.sh).
#
# Environment: ONELORA_GPU_LAYERS (benchmark layers, default: the planner's fit, at most 40),
# ONELORA_GPU_STEPS (benchmark steps, default 4), ONELORA_GPU_PARTS (default "ops methods bench").
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${ONELORA_GPU_BUILD:-$root/build-gpu}
out=${ONELORA_GPU_OUT:-$build/gpu-results}
parts=${ONELORA_GPU_PARTS:-ops methods bench}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
start=$SECONDS
summary=()
status=0
note() { summary+=("$(printf '%-10s | %-58s | %5d' "$1" "$2" "$3")"); }

if ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  echo "onelora: tests/gpu/run.sh: no NVIDIA GPU here (nvidia-smi lists none): nothing to check"
  exit 77
fi
nvidia-smi -L
if [ -n "${ONELORA_GPU_DEBS:-}" ]; then
  source "$root/tests/gpu/debs.sh"
  onelora_gpu_debs "$ONELORA_GPU_DEBS" || exit 1
fi
mkdir -p "$out"
python=$(command -v python3)
ncores=$(nproc)

# ---- 1. build ------------------------------------------------------------------------------
t=$SECONDS
if cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DONELORA_CUDA=ON -DONELORA_TEST_HOOKS=ON \
     -DONELORA_WERROR=ON -DONELORA_TEST_PYTHON="$python" >"$out/configure.txt" 2>&1 &&
   cmake --build "$build" -j"$ncores" >"$out/build.txt" 2>&1; then
  note build "built with $ncores cores" $((SECONDS - t))
else
  tail -30 "$out/configure.txt" "$out/build.txt"
  echo "onelora: tests/gpu/run.sh: the build failed (logs in $out)"
  exit 1
fi
bin=$build/onelora
"$bin" bench --preset tiny --seq-len 16 --steps 1 --device cuda 2>&1 | grep "communication" || true

# ---- 2. the op conformance test ------------------------------------------------------------
if [[ " $parts " == *" ops "* ]]; then
  t=$SECONDS
  if (cd "$build" && ctest -L gpu --output-on-failure) >"$out/ops.txt" 2>&1; then
    note gpu.ops "every op within its bound" $((SECONDS - t))
  else
    tail -40 "$out/ops.txt"; status=1
    note gpu.ops "FAILED (see ops.txt)" $((SECONDS - t))
  fi
fi

# ---- 3. every method against the CPU, bf16, TP=2 on one GPU -------------------------------
if [[ " $parts " == *" methods "* ]]; then
  t=$SECONDS
  "$python" "$root/tests/gpu/methods.py" --onelora "$bin" --mpirun "$(command -v mpirun)" \
    --workdir "$build/gpu-methods" >"$out/methods.txt" 2>&1
  rc=$?
  grep -E "^(PASS|FAIL|SKIP)" "$out/methods.txt" | cut -c1-150
  fails=$(grep -c "^FAIL" "$out/methods.txt")
  passes=$(grep -c "^PASS" "$out/methods.txt")
  if [ "$rc" = 0 ]; then note methods "$passes comparisons passed" $((SECONDS - t))
  else status=1; note methods "FAILED: $fails of $((passes + fails)) (rc $rc)" $((SECONDS - t)); fi
fi

# ---- 4. the benchmark: LLaMA-2-13B layers ------------------------------------------------
if [[ " $parts " == *" bench "* ]]; then
  t=$SECONDS
  shape=(--dim 5120 --ffn 13824 --heads 40 --kv-heads 40 --vocab 32000 --max-seq-len 2048)
  batch=(--micro-batch 1 --seq-len 2048)
  gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  # the most layers (at most 40) whose plan fits in 90% of the GPU with the f32 weights of dora
  fit_layers() {
    local dtype=$1 method=$2 layers=40
    while [ "$layers" -gt 1 ]; do
      mib=$("$bin" plan --preset tiny "${shape[@]}" --layers "$layers" "${batch[@]}" --method "$method" \
              --weights-dtype "$dtype" --device cuda | sed -n 's/^peak GPU memory per rank ([^)]*): \([0-9.]*\) MiB.*/\1/p')
      awk -v m="$mib" -v g="$gpu_mib" 'BEGIN { exit !(m < 0.9 * g) }' && break
      layers=$((layers - 4))
    done
    echo "${ONELORA_GPU_LAYERS:-$layers}"
  }
  steps=${ONELORA_GPU_STEPS:-4}
  : >"$out/bench.txt"
  for spec in none:bf16 1lora:bf16 lora:bf16 dora:f32; do
    method=${spec%%:*} dtype=${spec##*:}
    layers=$(fit_layers "$dtype" "$method")
    echo "bench $method, $dtype weights, $layers layers" | tee -a "$out/bench.txt"
    if "$bin" bench --device cuda --preset tiny "${shape[@]}" --layers "$layers" "${batch[@]}" \
         --method "$method" --rank 8 --weights-dtype "$dtype" --steps "$steps" >>"$out/bench.txt" 2>&1; then
      line=$(grep "^bench |" "$out/bench.txt" | tail -1)
      tok=$(sed -n 's/.*| \([0-9]*\) tok\/s |.*/\1/p' <<<"$line")
      ratio=$(sed -n 's/.*| ratio \([0-9.]*\) |.*/\1/p' <<<"$line")
      frozen=$(sed -n 's/.*| step\/frozen \([0-9.a-z\/]*\) |.*/\1/p' <<<"$line")
      mem=$(sed -n 's/.*| GPU\/planned \([0-9.]*\) |.*/\1/p' <<<"$line")
      note "$method" "L=$layers $dtype: $tok tok/s, GEMM ratio $ratio, /frozen $frozen, mem/plan $mem" 0
    else
      status=1; tail -5 "$out/bench.txt"; note "$method" "FAILED (see bench.txt)" 0
    fi
  done
  grep "^bench |" "$out/bench.txt"
  note bench "targets: 1lora GEMM ratio >= 0.60, /frozen <= 1.03" $((SECONDS - t))
fi

echo
echo "== tests/gpu/run.sh summary ($((SECONDS - start)) s in all; logs in $out)"
printf '%-10s | %-58s | %5s\n' part result s
printf '%s\n' "${summary[@]}"
exit $status
