#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs ctest and prints its summary; then
# the sanitizer pass: a second build in build-san/ (-DONELORA_SANITIZE=ON: ASan and UBSan, every
# report fatal) runs the unit, cli, fuzz and san tests. Exits nonzero when either pass fails, and
# prints both summaries last.
# Usage: tests/run.sh [ctest arguments, e.g. -L unit or -R oracle]
#   With arguments only the first pass runs, unless ONELORA_SAN=1; ONELORA_SAN=0 skips the
#   sanitizer pass of a full run.
set -euo pipefail
source "$(dirname "$0")/../jobs/setup.sh"
onelora_install python3-torch python3-h5py python3-numpy procps "${ONELORA_SLURM_PKGS[@]}"
onelora_build -DONELORA_TEST_HOOKS=ON  # mpi.resume.in_write needs them (jobs/setup.sh)
sanitize=${ONELORA_SAN:-$([ $# -eq 0 ] && echo 1 || echo 0)}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
status=0

(cd "$ONELORA_BUILD" && ctest --output-on-failure -j2 --timeout 600 "$@") 2>&1 |
  tee "$logs/main.txt" || status=1

if [ "$sanitize" = 1 ]; then
  san_build="$ONELORA_ROOT/build-san"
  start=$SECONDS
  # ONELORA_CUDA=OFF here: the main build compiles the CUDA backend (AUTO, where nvcc is), this
  # one proves that a build without CUDA needs none of it
  echo "onelora: sanitizer pass: building $san_build (ASan + UBSan, ONELORA_CUDA=OFF)"
  if cmake -S "$ONELORA_ROOT" -B "$san_build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
           -DONELORA_SANITIZE=ON -DONELORA_TEST_HOOKS=ON -DONELORA_CUDA=OFF >/dev/null &&
     cmake --build "$san_build" -j"$(nproc)" >"$logs/san-build.txt" 2>&1; then
    built=$((SECONDS - start))
    # every report ends the process, with a status no onelora error uses; Open MPI's and HDF5's
    # allocations live until exit, so leak reports would be theirs
    export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:exitcode=86"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=86"
    (cd "$san_build" && ctest --output-on-failure -j2 --timeout 600 -L 'unit|cli|fuzz|san') 2>&1 |
      tee "$logs/san.txt" || status=1
    echo "onelora: sanitizer pass took $((SECONDS - start)) s (build ${built} s)" | tee -a "$logs/san.txt"
  else
    cat "$logs/san-build.txt"
    echo "sanitizer build failed" >"$logs/san.txt"
    status=1
  fi
fi

summary() {  # the pass/fail line and the failures of one ctest log
  grep -E "tests passed|No tests were found|build failed" "$1" || echo "  (no ctest summary: see above)"
  sed -n '/The following tests FAILED/,/^Errors while running/p' "$1" | grep -v '^Errors while' || true
}
echo
echo "== summary: $ONELORA_BUILD"
summary "$logs/main.txt"
if [ "$sanitize" = 1 ]; then
  echo "== summary: sanitizer pass, build-san (-L 'unit|cli|fuzz|san')"
  summary "$logs/san.txt"
  grep "sanitizer pass took" "$logs/san.txt" || true
fi
exit $status
