"""What the CLI test scripts of issue 11 share (hf_import, weights_dtype, map_weights,
plan_memory): PASS/FAIL reporting, running the binary, the environment of oversubscribed mpirun
ranks as root, the standard arguments and a random token data file."""

import argparse
import os
import shutil
import struct
import subprocess

import h5py
import numpy as np

failures = 0


def check(name, ok, detail=""):
    """Prints PASS/FAIL name detail and counts the failures."""
    global failures
    print("%s %s %s" % ("PASS" if ok else "FAIL", name, detail))
    failures += 0 if ok else 1
    return ok


def finish():
    """The exit status: nonzero on any failure."""
    print("%d failures" % failures)
    return 1 if failures else 0


def run(argv, env=None):
    """(returncode, stdout, stderr) of argv."""
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                       env=env)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


# mpirun as root, more ranks than cores (ranks yield while they wait), one thread a rank
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
           OMPI_MCA_mpi_yield_when_idle="1")


def setup(mpirun_required=False, extra=()):
    """Parses --onelora, --mpirun, --workdir and the required (flag, help) pairs of `extra`;
    empties the work directory. Returns (args, path function for files in it)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--mpirun", required=mpirun_required, default="")
    ap.add_argument("--workdir", required=True)
    for flag, help_text in extra:
        ap.add_argument(flag, required=True, help=help_text)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    return a, lambda n: os.path.join(a.workdir, n)


def write_tokens(path, vocab, n_train, n_val, seed=0):
    """A data file of uniformly random tokens (uint16)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=rng.integers(0, vocab, n_train, dtype=np.uint16))
        f.create_dataset("val", data=rng.integers(0, vocab, n_val, dtype=np.uint16))
        f.attrs["vocab_size"] = vocab


def same_ckpt(a, b):
    """Every params, adam_m and adam_v dataset of two checkpoints equal byte for byte."""
    with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
        groups = ("params", "adam_m", "adam_v")
        if any(sorted(f[grp]) != sorted(g[grp]) for grp in groups):
            return False
        return all(f[grp][k][...].tobytes() == g[grp][k][...].tobytes() for grp in groups for k in f[grp])


def flip_dataset_bytes(path, dataset):
    """Flips bytes inside the stored data of `dataset` (its first chunk), not its checksum."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        raw = ds[...].astype("<f4").tobytes()
        try:
            off = ds.id.get_chunk_info(0).byte_offset
        except (AttributeError, TypeError):
            off = None
    blob = bytearray(open(path, "rb").read())
    if off is None or blob[off:off + 16] != raw[:16]:
        off = blob.find(raw)
        assert off >= 0 and blob.find(raw, off + 1) < 0, "cannot locate the data of " + dataset
    for i in range(4):
        blob[off + i] ^= 0x5A
    with open(path, "wb") as f:
        f.write(blob)


def png_size(path):
    """(width, height) of a PNG, None when the file is not one (signature, then IHDR)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])
