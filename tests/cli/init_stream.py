#!/usr/bin/python3
"""`onelora init` streams: it generates and writes a model a block of rows at a time, so its peak
memory stays far below the model's size. Measured as the peak RSS that init reports for a model
whose largest tensor is 128 MiB as f32, above that of a tiny init (the process's own baseline:
MPI, HDF5, BLAS). Bound: half the largest tensor's f32 bytes, which writing any whole
tensor from memory would exceed, while the writer's two block buffers (2^22 values as f32 and
f16: 24 MiB) fit with room for HDF5. Also checks the file holds every value at 2 bytes (f16).
Prints PASS/FAIL per check and exits nonzero on any failure."""

import argparse
import os
import re
import subprocess
import sys

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clitest as ct  # noqa: E402

check = ct.check



def peak_rss_bytes(argv):
    """Runs an init; returns the peak RSS (VmHWM) it reports. Not getrusage: a child's ru_maxrss
    includes the memory of the Python process it was forked from."""
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        print("command failed:", " ".join(argv), "\n", r.stderr.decode(errors="replace"))
        sys.exit(1)
    m = re.search(r"peak RSS ([0-9.]+) MiB", r.stdout.decode())
    if not m:
        print("no peak RSS in the output of", " ".join(argv), "\n", r.stdout.decode())
        sys.exit(1)
    return float(m.group(1)) * 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    tiny, big = os.path.join(a.workdir, "tiny.h5"), os.path.join(a.workdir, "big.h5")
    base = peak_rss_bytes([a.onelora, "init", "--preset", "tiny", "--dtype", "f16", "--out", tiny])
    V, D, L, F = 65536, 512, 8, 1408  # the embedding and LM head: 128 MiB each as f32
    peak = peak_rss_bytes([a.onelora, "init", "--preset", "tiny", "--vocab", str(V), "--dim", str(D),
                           "--layers", str(L), "--heads", "8", "--kv-heads", "4", "--ffn", str(F),
                           "--dtype", "f16", "--out", big])
    largest = V * D * 4
    check("init.peak_memory", peak - base < largest / 2,
          "peak RSS %.1f MiB above the tiny init's %.1f MiB; bound %.1f MiB (half the largest "
          "tensor as f32)" % ((peak - base) / 2**20, base / 2**20, largest / 2**20 / 2))
    with h5py.File(big, "r") as f:
        values = sum(f[k].size for k in f.keys())
        dtypes = {str(f[k].dtype) for k in f.keys()}
    size = os.path.getsize(big)
    check("init.f16_file", dtypes == {"float16"} and 2 * values <= size < 2 * values + 2**20,
          "%d values, %d bytes, dtypes %s" % (values, size, sorted(dtypes)))
    for p in (tiny, big):
        os.remove(p)
    return ct.finish()


if __name__ == "__main__":
    sys.exit(main())
