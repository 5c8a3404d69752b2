#!/usr/bin/env bash
# tests/gpu/bare-check.sh: proves tests/gpu/debs.sh without a GPU machine. In a bare Debian 12
# chroot (debootstrap minbase with a compiler, CMake and python3 with numpy and h5py, as the
# device machines are described: no MPI, HDF5, OpenBLAS, CMocka or Jansson) with this machine's
# CUDA toolkit bind-mounted, it unpacks the bundle with onelora_gpu_debs, configures and builds
# as tests/gpu/run.sh does (-DONELORA_CUDA=ON, warnings as errors), and runs the unit, mpi and cli
# tests (those that import torch fail there: the chroot has none).
# Needs root, debootstrap and the Debian archive. Usage: tests/gpu/bare-check.sh [ROOT]
# (default /opt/onelora-bare; kept, so that a second run skips debootstrap). Exit: ctest's.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
root=${1:-/opt/onelora-bare}
cuda=$(readlink -f /usr/local/cuda)
command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
if [ ! -x "$root/usr/bin/cmake" ]; then
  debootstrap --variant=minbase --include=gcc,g++,make,cmake,python3,python3-numpy,python3-h5py,procps \
    bookworm "$root" http://deb.debian.org/debian
fi
mkdir -p "$root/usr/local/cuda" "$root/debs" "$root/proc" "$root/dev" "$root/sys"
mountpoint -q "$root/usr/local/cuda" || mount --bind "$cuda" "$root/usr/local/cuda"
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
mountpoint -q "$root/sys" || mount --bind /sys "$root/sys"  # hwloc reads the topology there
trap 'umount "$root/usr/local/cuda" "$root/proc" "$root/dev" "$root/sys" 2>/dev/null || true' EXIT
[ -n "$(ls "$repo"/.gpu-debs/*.deb 2>/dev/null)" ] || "$repo/tests/gpu/debs.sh" download
rm -rf "$root/repo" "$root/debs" && mkdir -p "$root/debs"
cp "$repo"/.gpu-debs/*.deb "$root/debs/"
git -C "$repo" ls-files -z | (cd "$repo" && tar --null -T - -cf -) | (mkdir -p "$root/repo" && tar -xf - -C "$root/repo")
chroot "$root" /bin/bash -c '
  set -e; cd /repo; export PATH=/usr/local/cuda/bin:$PATH
  rm -rf /opt/onelora-deps; source tests/gpu/debs.sh; onelora_gpu_debs /debs
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DONELORA_CUDA=ON -DONELORA_TEST_HOOKS=ON \
    -DONELORA_WERROR=ON -DONELORA_TEST_PYTHON=/usr/bin/python3 | grep -E "Found (MPI_C|HDF5)|onelora:"
  cmake --build build-gpu -j"$(nproc)" >/tmp/build.txt || { tail -30 /tmp/build.txt; exit 1; }
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
  cd build-gpu && ctest -j2 --timeout 300 -L "unit|mpi|cli"'
