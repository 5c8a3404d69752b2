#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs ctest and prints its summary.
# Usage: tests/run.sh [ctest arguments, e.g. -L unit or -R oracle]
set -euo pipefail
source "$(dirname "$0")/../jobs/setup.sh"
onelora_install python3-torch python3-h5py python3-numpy procps "${ONELORA_SLURM_PKGS[@]}"
onelora_build
cd "$ONELORA_BUILD"
ctest --output-on-failure -j2 --timeout 600 "$@"
