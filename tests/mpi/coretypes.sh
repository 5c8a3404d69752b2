#!/usr/bin/env bash
# Portability of the parallel-layout tests (issue 10): runs the whole `mpi` label once per OpenBLAS
# kernel family, selected with OPENBLAS_CORETYPE (Debian's OpenBLAS is built with DYNAMIC_ARCH). The
# only script that sets OPENBLAS_CORETYPE: the suite itself runs with whatever the machine has.
#
# Before each pass it checks one sgemm of the very OpenBLAS that onelora links against a float64
# product (some OpenBLAS builds compute wrong results on some processors: then that core type is
# reported as "blas wrong" and not run). A core type whose instructions this CPU lacks (SkylakeX
# needs AVX-512) is reported as "not on this CPU".
#
# Usage: tests/mpi/coretypes.sh [core types...]   (default: Haswell Zen Prescott SkylakeX)
# Needs a build (tests/run.sh or jobs/setup.sh's onelora_build); ONELORA_BUILD picks another one.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${ONELORA_BUILD:-$root/build}"
[ -x "$build/onelora" ] || { echo "coretypes: error: no $build/onelora: build first (tests/run.sh)" >&2; exit 1; }
lib="$(ldd "$build/onelora" | awk '/libopenblas/ {print $3; exit}')"
[ -n "$lib" ] || { echo "coretypes: error: $build/onelora does not link OpenBLAS" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cores=("$@")
[ ${#cores[@]} -gt 0 ] || cores=(Haswell Zen Prescott SkylakeX)

# One sgemm (C = A B, 67 x 53 x 129, leading dimensions as stored) against numpy in float64.
# float32 with sums of k = 129 terms: |error| <= k u sum|a b| (u = 2^-24); prints the core name
# OpenBLAS chose and the largest error as a fraction of that bound.
sgemm_check() {
  OPENBLAS_CORETYPE="$1" /usr/bin/python3 - "$lib" <<'EOF'
import ctypes, sys
import numpy as np
lib = ctypes.CDLL(sys.argv[1])
lib.openblas_get_corename.restype = ctypes.c_char_p
m, n, k = 67, 53, 129
rng = np.random.default_rng(1)
a = rng.standard_normal((m, k)).astype(np.float32)
b = rng.standard_normal((k, n)).astype(np.float32)
c = np.zeros((m, n), np.float32)
p = lambda x: x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
# cblas_sgemm(RowMajor=101, NoTrans=111, NoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
lib.cblas_sgemm(101, 111, 111, m, n, k, ctypes.c_float(1), p(a), k, p(b), n, ctypes.c_float(0), p(c), n)
exact = a.astype(np.float64) @ b.astype(np.float64)
bound = k * 2.0 ** -24 * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
print(lib.openblas_get_corename().decode(), float(np.max(np.abs(c - exact) / bound)))
EOF
}

has_flag() { grep -qw "$1" /proc/cpuinfo; }
summary=()
status=0
for core in "${cores[@]}"; do
  need=""
  case "${core,,}" in
    skylakex|cooperlake|sapphirerapids) need=avx512f ;;
    haswell|zen) need=avx2 ;;
  esac
  if [ -n "$need" ] && ! has_flag "$need"; then
    summary+=("$core: not on this CPU (no $need)")
    continue
  fi
  read -r name err < <(sgemm_check "$core")
  if ! awk -v e="$err" 'BEGIN { exit !(e <= 1) }'; then
    summary+=("$core: blas wrong (OpenBLAS core $name: sgemm error $err of its bound), not run")
    status=1
    continue
  fi
  echo "== OPENBLAS_CORETYPE=$core (OpenBLAS core $name, sgemm error $err of its bound)"
  log="$build/coretypes-$core.log"
  start=$(date +%s)
  if (cd "$build" && OPENBLAS_CORETYPE="$core" ctest -L mpi --output-on-failure --timeout 900) >"$log" 2>&1; then
    verdict=passed
  else
    verdict=FAILED
    status=1
  fi
  line="$(grep -E 'tests passed|tests failed' "$log" | tail -1)"
  summary+=("$core: $verdict: $line ($(( $(date +%s) - start )) s, OpenBLAS core $name; log $log)")
  grep -E '^ *[0-9]+/[0-9]+ Test' "$log" || true
done
echo
echo "core type summary ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')):"
printf '  %s\n' "${summary[@]}"
exit $status
