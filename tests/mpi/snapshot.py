#!/usr/bin/python3
"""Numerics unchanged across a refactor: checkpoints of every method after 3 steps at one rank,
TPxPPxDP = 2x1x1 and 1x2x2, written by one build and compared bit for bit with another's.

  snapshot.py --onelora OLD/onelora --mpirun mpirun --out before/
  (refactor, rebuild)
  snapshot.py --onelora NEW/onelora --mpirun mpirun --out after/ --compare before/

Every dataset of every group (params, adam_m, adam_v, frozen) and every logged loss must be
equal byte for byte: the refactor moves code, it does not reorder a sum. The model, the data and
the arguments are fixed here, so two builds on the same machine (the same BLAS kernels) must
agree exactly; across machines they need not. Exits nonzero on any difference; --compare of a
snapshot with a deliberately changed file (--self-test) must fail."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cli"))
import clitest as ct  # noqa: E402

METHODS = ["none", "1lora", "1lora,norms", "norms", "full", "bitfit", "1lora-random", "lora",
           "lora,norms", "dora", "vera", "mora", "mora6"]
LAYOUTS = ["1x1x1", "2x1x1", "1x2x2"]
GROUPS = ("params", "adam_m", "adam_v", "frozen")


def snapshot(a):
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    w = lambda n: os.path.join(a.out, n)
    rc, _, err = ct.run([a.onelora, "init", "--preset", "tiny", "--seed", "3", "--dim", "64",
                         "--heads", "4", "--kv-heads", "2", "--ffn", "96", "--layers", "4",
                         "--out", w("m.h5")], ct.ENV)
    if rc != 0:
        sys.exit("init failed: " + err)
    ct.write_tokens(w("d.h5"), 256, 20000, 4000)
    for method in METHODS:
        for layout in LAYOUTS:
            tp, pp, dp = (int(v) for v in layout.split("x"))
            tag = "%s.%s" % (method.replace(",", "+"), layout)
            args = ["train", "--model", w("m.h5"), "--data", w("d.h5"), "--method", method,
                    "--targets", "all", "--steps", "3", "--seq-len", "16", "--no-shuffle",
                    "--clip", "1", "--lr", "0.01", "--rank", "2", "--seed", "5",
                    "--micro-batch", "1", "--micro-batches", str(4 // dp), "--tp", str(tp),
                    "--pp", str(pp), "--ckpt-dir", w(tag), "--log", w(tag + ".jsonl")]
            argv = ([a.mpirun, "-np", str(tp * pp * dp)] if tp * pp * dp > 1 else []) + [a.onelora] + args
            rc, _, err = ct.run(argv, ct.ENV)
            ct.check(tag, rc == 0, err.strip()[-300:] if rc else "")


def losses(path):
    with open(path) as f:
        return [r["loss"] for r in map(json.loads, f) if r.get("kind") == "step"]


def same(a, b):
    """'' when checkpoints a and b hold the same datasets with the same bytes, else the first
    difference."""
    with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
        for grp in GROUPS:
            names = sorted(f[grp]) if grp in f else []
            if names != (sorted(g[grp]) if grp in g else []):
                return "group %s lists other tensors" % grp
            for k in names:
                x, y = f[grp][k][...], g[grp][k][...]
                if x.shape != y.shape or x.tobytes() != y.tobytes():
                    return "%s/%s differs (max |diff| %g)" % (grp, k, float(np.max(np.abs(x - y))))
    return ""


def compare(out, ref):
    for method in METHODS:
        for layout in LAYOUTS:
            tag = "%s.%s" % (method.replace(",", "+"), layout)
            ck = os.path.join(tag, "step-00000003.h5")
            diff = same(os.path.join(ref, ck), os.path.join(out, ck))
            if not diff and losses(os.path.join(ref, tag + ".jsonl")) != losses(os.path.join(out, tag + ".jsonl")):
                diff = "logged losses differ"
            ct.check("identical " + tag, not diff, diff)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--mpirun", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", help="a snapshot directory to compare --out with, bit for bit")
    a = ap.parse_args()
    snapshot(a)
    if a.compare:
        compare(a.out, a.compare)
        # the comparison can fail: one value of one tensor changed by one ulp
        probe = os.path.join(a.out, "probe.h5")
        src = os.path.join(a.out, "1lora.1x1x1", "step-00000003.h5")
        shutil.copy(src, probe)
        with h5py.File(probe, "r+") as f:
            k = sorted(f["params"])[0]
            x = f["params"][k][...]
            x.flat[0] = np.nextafter(x.flat[0], np.float32(np.inf))
            f["params"][k][...] = x
        ct.check("self-test: a one-ulp change is found", same(src, probe) != "")
    return ct.finish()


if __name__ == "__main__":
    sys.exit(main())
