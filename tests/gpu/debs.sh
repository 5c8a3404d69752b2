#!/usr/bin/env bash
# tests/gpu/debs.sh: onelora's build and run dependencies as Debian packages, for a GPU machine
# that has a compiler, CMake, CUDA and python3 (numpy, h5py) but no package archive to reach
# (this workplace's device machines).
#
#   tests/gpu/debs.sh download [DIR]    on a Debian 12 machine with the archive: apt-get download
#                                       the packages below into DIR (default .gpu-debs, ignored
#                                       by git; about 27 MiB, to carry with the working tree)
#   source tests/gpu/debs.sh; onelora_gpu_debs DIR [PREFIX]
#                                       on the GPU machine: unpack them under PREFIX (default
#                                       /opt/onelora-deps), never over /, so that no library of the
#                                       machine is replaced, and export what finds them (PATH,
#                                       LD_LIBRARY_PATH, LIBRARY_PATH, CMAKE_PREFIX_PATH, and
#                                       Open MPI's and PMIx's own)
#
# Where the machine already has a library (by soname, ldconfig -p), its own copy is used: the
# bundle's name for it becomes a link to the machine's, so that the programs it runs keep one
# copy of libssl, libcurl or libgfortran. tests/gpu/run.sh calls onelora_gpu_debs when
# ONELORA_GPU_DEBS names such a folder.

# Open MPI 4.1 and what it loads, parallel HDF5 1.10 and the libraries it links (libcurl's
# closure for its read-only S3 driver), OpenBLAS's OpenMP build, CMocka and Jansson
ONELORA_GPU_DEB_PACKAGES=(
  libopenmpi3 libopenmpi-dev openmpi-bin openmpi-common libpmix2 libevent-core-2.1-7
  libevent-pthreads-2.1-7 libhwloc15 libfabric1 libucx0 libibverbs1 librdmacm1 libpsm2-2
  libpsm-infinipath1 libnl-3-200 libnl-route-3-200 libnuma1 libmunge2 libltdl7
  libhdf5-openmpi-103-1 libhdf5-openmpi-hl-100 libhdf5-openmpi-dev libsz2 libaec0 libcurl4 libssl3
  libnghttp2-14 librtmp1 libssh2-1 libpsl5 libbrotli1 libldap-2.5-0 libsasl2-2
  libopenblas0-openmp libopenblas-openmp-dev libopenblas-dev libgfortran5
  libcmocka0 libcmocka-dev libjansson4 libjansson-dev
)

onelora_gpu_debs() {
  local dir=$1 prefix=${2:-/opt/onelora-deps} f
  local debs=("$dir"/*.deb)
  if [ ! -e "${debs[0]}" ]; then
    echo "onelora: error: ONELORA_GPU_DEBS=$dir holds no .deb files (make them with tests/gpu/debs.sh download)" >&2
    return 1
  fi
  mkdir -p "$prefix"
  for f in "${debs[@]}"; do dpkg-deb -x "$f" "$prefix" || return 1; done
  local usr=$prefix/usr arch
  arch=$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
  local lib=$usr/lib/$arch
  # Debian's alternatives are links dpkg makes when it installs, which dpkg-deb -x does not
  for f in mpicc mpirun mpiexec h5pcc; do
    [ -e "$usr/bin/$f" ] || ln -s "$f.openmpi" "$usr/bin/$f"
  done
  sed -i "s|^prefix=\"/usr\"|prefix=\"$usr\"|" "$usr/bin/h5pcc.openmpi"  # its one absolute path
  # the machine's own copy of every library it has
  local name path
  while read -r name path; do
    for f in "$lib/$name" "$lib/openblas-openmp/$name"; do
      if [ -e "$f" ] || [ -L "$f" ]; then ln -sfn "$path" "$f"; fi
    done
  done < <(ldconfig -p | sed -n "s|^\t\([^ ]*\) (libc6,x86-64[^)]*) => \(/.*\)$|\1 \2|p")
  local libs="$lib:$prefix/lib/$arch"  # Debian 12 puts some libraries under /lib
  export PATH="$usr/bin:$PATH"
  export LD_LIBRARY_PATH="$libs:$lib/openblas-openmp:$lib/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LIBRARY_PATH="$libs${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export CMAKE_PREFIX_PATH="$usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export OPAL_PREFIX=$usr  # Open MPI is relocatable; PMIx is told where its plugins are
  export PMIX_MCA_mca_base_component_path=$lib/pmix2/lib/pmix
  export OMPI_MCA_mca_base_component_show_load_errors=0  # the transports it has no hardware for
  # Open MPI refuses to start, even on one node, without a remote shell to name; it runs none
  command -v ssh >/dev/null || command -v rsh >/dev/null || export OMPI_MCA_plm_rsh_agent=false
  # h5pcc links -lcrypto -lcurl -lsz -lz, whose development links (libz.so) are -dev packages:
  # link each it names and nothing provides to the library's runtime name, ours or the machine's
  local flag so
  for flag in $(h5pcc -show -shlib); do
    case $flag in -l*) ;; *) continue ;; esac
    name=lib${flag#-l}.so
    if [ -e "$lib/$name" ] || [ -e "/usr/lib/$arch/$name" ] || [ -e "/lib/$arch/$name" ] ||
       ldconfig -p | grep -q "^[[:space:]]$name "; then continue; fi
    so=$(ls "$lib/$name".* "$prefix/lib/$arch/$name".* 2>/dev/null | head -1)
    [ -n "$so" ] || so=$(ldconfig -p | sed -n "s|^\t$name\.[0-9][^ ]* (libc6,x86-64[^)]*) => \(/.*\)$|\1|p" | head -1)
    if [ -n "$so" ]; then ln -sfn "$so" "$lib/$name"; fi
  done
  echo "onelora: dependencies unpacked under $prefix (${#debs[@]} packages)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
  download)
    root=$(cd "$(dirname "$0")/../.." && pwd)
    dir=${2:-$root/.gpu-debs}
    mkdir -p "$dir"
    (cd "$dir" && apt-get download "${ONELORA_GPU_DEB_PACKAGES[@]}")
    echo "onelora: $(ls "$dir"/*.deb | wc -l) packages, $(du -sh "$dir" | cut -f1), in $dir"
    ;;
  *)
    echo "usage: tests/gpu/debs.sh download [DIR]   (or source it and call onelora_gpu_debs DIR [PREFIX])" >&2
    exit 2
    ;;
  esac
fi
