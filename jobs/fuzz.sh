#!/usr/bin/env bash
# Long fuzz runs of onelora's readers of outside bytes (tests/fuzz: checkpoint, model, data,
# safetensors).
#
#   jobs/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      default: 600 s each, all four targets
#
# With clang and libFuzzer (Debian: clang-14 and libclang-rt-14-dev, installed when missing) the
# targets are built with -fsanitize=fuzzer,address,undefined into build-fuzz/ and libFuzzer runs
# each for the time given, its corpus kept in jobs/out/fuzz/corpus-TARGET between runs. Without
# them the deterministic driver (tests/fuzz/driver.c, gcc with ASan and UBSan) runs as many
# inputs as fit in the time (FUZZ_SEED picks the run; default: the time of day). Seeds are made
# by the built onelora. Prints, per target, the inputs run and the findings; reproducers land in
# jobs/out/fuzz/. FUZZ_ENGINE=driver or libfuzzer forces one. Exit status 1 when any target
# found something.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(checkpoint model data safetensors)
out="$ONELORA_ROOT/jobs/out/fuzz"
build="$ONELORA_ROOT/build-fuzz"
mkdir -p "$out"

engine=${FUZZ_ENGINE:-auto}  # auto (libFuzzer when available), libfuzzer or driver
onelora_install
# libFuzzer, when it can be had: a missing package (offline machine) falls back to the driver
if [ "$engine" != driver ]; then
  (onelora_install clang-14 libclang-rt-14-dev) || echo "fuzz: clang-14/libFuzzer not installable"
fi
clang=$(command -v clang-14 || command -v clang || true)
libfuzzer=0
if [ "$engine" != driver ] && [ -n "$clang" ] &&
   echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' |
   "$clang" -x c -fsanitize=fuzzer - -o "$out/.probe" 2>/dev/null; then
  libfuzzer=1
fi
rm -f "$out/.probe"
if [ "$engine" = libfuzzer ] && [ $libfuzzer = 0 ]; then
  echo "fuzz: FUZZ_ENGINE=libfuzzer, but clang cannot link -fsanitize=fuzzer here" >&2
  exit 2
fi

# (Re)configure build-fuzz for the chosen compiler; a cache made with another one is dropped.
if [ $libfuzzer = 1 ]; then
  cc=$clang
  flags=(-DONELORA_LIBFUZZER=ON -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link)
else
  cc=$(command -v gcc)
  flags=(-DONELORA_LIBFUZZER=OFF -DCMAKE_C_FLAGS=)
fi
if [ -f "$build/CMakeCache.txt" ] && ! grep -q "^CMAKE_C_COMPILER:[A-Z]*=$cc\$" "$build/CMakeCache.txt"; then
  rm -rf "$build"
fi
cmake -S "$ONELORA_ROOT" -B "$build" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DONELORA_SANITIZE=ON "${flags[@]}" >/dev/null
suffix=""
[ $libfuzzer = 1 ] && suffix=_libfuzzer
build_targets=(onelora)
for t in "${targets[@]}"; do build_targets+=("fuzz_$t$suffix"); done
cmake --build "$build" -j"$(nproc)" --target "${build_targets[@]}" >"$out/build.log" 2>&1 ||
  { cat "$out/build.log"; exit 1; }

# HDF5 and Open MPI keep allocations until exit: no leak reports. An allocation above 2 GiB
# fails (returns NULL, which HDF5 handles); onelora's allocator aborts on that, a finding.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:max_allocation_size_mb=2048"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" OMP_NUM_THREADS=1
"$ONELORA_ROOT/tests/fuzz/make_seeds.sh" "$build/onelora" "$out/seeds" >/dev/null

seeds_of() {
  case $1 in
    checkpoint) echo "$out/seeds/ckpt-1lora.h5 $out/seeds/ckpt-lora.h5 $out/seeds/ckpt-vera.h5" ;;
    model) echo "$out/seeds/model-f32.h5 $out/seeds/model-f16.h5" ;;
    data) echo "$out/seeds/data.h5" ;;
    safetensors) echo "$out/seeds/model-f32.safetensors $out/seeds/model-f16.safetensors" ;;
    *) echo "fuzz: unknown target '$1' (checkpoint, model, data, safetensors)" >&2; exit 2 ;;
  esac
}

seed=${FUZZ_SEED:-$(date +%s)}
found=0
summary=()
for t in "${targets[@]}"; do
  log="$out/$t.log"
  echo "fuzz: $t for ${seconds} s ($([ $libfuzzer = 1 ] && echo libFuzzer || echo "driver, --seed $seed")), log $log"
  rc=0
  if [ $libfuzzer = 1 ]; then
    corpus="$out/corpus-$t" seed_dir="$out/seeds-$t"  # libFuzzer takes folders
    mkdir -p "$corpus" && rm -rf "$seed_dir" && mkdir -p "$seed_dir"
    # shellcheck disable=SC2046
    cp $(seeds_of "$t") "$seed_dir"
    (cd "$out" && "$build/tests/fuzz/fuzz_${t}_libfuzzer" -max_total_time="$seconds" -timeout=20 \
       -rss_limit_mb=4096 -malloc_limit_mb=1000000 -close_fd_mask=3 -print_final_stats=1 \
       -artifact_prefix="$out/$t-" "$corpus" "$seed_dir") >"$log" 2>&1 || rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    line="$t: $runs inputs run (libFuzzer), corpus $(ls "$corpus" | wc -l) files"
  else
    # shellcheck disable=SC2046
    (cd "$out" && "$build/tests/fuzz/fuzz_$t" --iterations 1000000000 --max-seconds "$seconds" \
       --seed "$seed" $(seeds_of "$t")) >"$log" 2>&1 || rc=$?
    line=$(grep '^fuzz: .* inputs run' "$log" | tail -1 || true)
    line=${line#fuzz: }
    [ -n "$line" ] || line="$t: stopped early"
  fi
  if [ $rc -ne 0 ]; then
    found=1
    line="$line; FINDING (exit $rc): $(grep -m1 -E 'ERROR: |FINDING|hang|fatal:|SUMMARY' "$log" || echo "see $log")"
  else
    line="$line; no findings"
  fi
  echo "fuzz: $line"
  summary+=("$line")
done
echo
echo "fuzz summary ($seconds s per target; reproducers and logs in $out):"
printf '  %s\n' "${summary[@]}"
exit $found
