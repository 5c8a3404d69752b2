#!/usr/bin/env bash
# Installs what onelora needs (Debian packages, only when missing) and builds it into ./build.
# Sourced by jobs/demo.sh and tests/run.sh. Extra packages may be passed as arguments.
set -euo pipefail
ONELORA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ONELORA_BUILD="${ONELORA_BUILD:-$ONELORA_ROOT/build}"

# What the Slurm job scripts and their test (tests/slurm) need besides the build: a local Slurm
# (controller, node daemon, client commands), Slurm's PMIx plugin for `srun --mpi=pmix`
# (mpi_pmix.so is in slurm-wlm-basic-plugins; it loads libpmix2, the PMIx that Debian's Open MPI
# uses) and gnuplot for jobs/analysis.sh. tests/run.sh installs them.
ONELORA_SLURM_PKGS=(slurmctld slurmd slurm-client slurm-wlm-basic-plugins libpmix2 gnuplot-nox)

onelora_install() {
  local pkgs=(build-essential cmake libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
              libopenblas-dev libopenblas-openmp-dev libcmocka-dev libjansson-dev "$@")
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "onelora: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# onelora_build [cmake -D flags...]: configures and builds $ONELORA_BUILD. An option not passed
# keeps what the build directory's cache holds, so the two users of build/ never undo each other:
# tests/run.sh passes -DONELORA_TEST_HOOKS=ON, and jobs/demo.sh, passing nothing, builds build/
# as it finds it (the hooks act only under their test-only environment variables; a fresh build/
# has none).
onelora_build() {
  local flags=("$@")
  [ -n "${CI:-}" ] && flags+=(-DONELORA_WERROR=ON)
  cmake -S "$ONELORA_ROOT" -B "$ONELORA_BUILD" -DCMAKE_BUILD_TYPE=Release "${flags[@]}" >/dev/null
  cmake --build "$ONELORA_BUILD" -j"$(nproc)"
}

# mpirun as root (containers, CI) needs these; they change nothing for other users.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
