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
snapshot with a deliberately changed file (--self-test) must fail.

  snapshot.py --onelora B/onelora --mpirun mpirun --out dir/ --devices cpu,cpu-staged

compares the devices of one build instead: the snapshot is taken once per device into dir/DEV
and each is compared with the first's, bit for bit, with a sampled generation on TP x PP =
2 x 2 from the 1lora checkpoint when 1lora is among the methods. A device is DEV or
DEV:COMM, COMM the communication path that ONELORA_COMM forces (cpu-staged:cuda-aware); a
device other than cpu must say in its log that it took that path. --methods and --layouts
take a subset (comma-separated; a method with a comma is written with '+')."""

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


# the log line of each forced communication path (ol_grid_comm_path)
PATH_LOG = {"staged": "staged through pinned host memory", "cuda-aware": "cuda-aware MPI",
            "nccl": "nccl"}


def device_run(a, device):
    """(extra onelora arguments, environment, expected log text or None) for a device spec."""
    dev, _, comm = device.partition(":")
    env = dict(ct.ENV)
    env.pop("ONELORA_COMM", None)
    extra = ["--device", dev] if device else []
    if comm:
        env["ONELORA_COMM"] = comm
    expect = PATH_LOG.get(comm or ("staged" if dev == "cpu-staged" else ""))
    return extra, env, expect


def snapshot(a, out, device=""):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    w = lambda n: os.path.join(out, n)
    rc, _, err = ct.run([a.onelora, "init", "--preset", "tiny", "--seed", "3", "--dim", "64",
                         "--heads", "4", "--kv-heads", "2", "--ffn", "96", "--layers", "4",
                         "--out", w("m.h5")], ct.ENV)
    if rc != 0:
        sys.exit("init failed: " + err)
    ct.write_tokens(w("d.h5"), 256, 20000, 4000)
    extra, env, expect = device_run(a, device)
    name = (device + " ") if device else ""
    for method in a.methods:
        for layout in a.layouts:
            tp, pp, dp = (int(v) for v in layout.split("x"))
            tag = "%s.%s" % (method.replace(",", "+"), layout)
            args = ["train", "--model", w("m.h5"), "--data", w("d.h5"), "--method", method,
                    "--targets", "all", "--steps", "3", "--seq-len", "16", "--no-shuffle",
                    "--clip", "1", "--lr", "0.01", "--rank", "2", "--seed", "5",
                    "--micro-batch", "1", "--micro-batches", str(4 // dp), "--tp", str(tp),
                    "--pp", str(pp), "--ckpt-dir", w(tag), "--log", w(tag + ".jsonl")] + extra
            argv = ([a.mpirun, "-np", str(tp * pp * dp)] if tp * pp * dp > 1 else []) + [a.onelora] + args
            rc, text, err = ct.run(argv, env)
            ct.check(name + tag, rc == 0, err.strip()[-300:] if rc else "")
            if rc == 0 and expect:
                ct.check(name + tag + " took its path", "communication: " + expect in text + err,
                         err.strip()[-300:])
    if a.generate and "1lora" in a.methods:
        ck = w(os.path.join("1lora.%s" % a.layouts[0], "step-00000003.h5"))
        argv = [a.mpirun, "-np", "4", a.onelora, "generate", "--model", w("m.h5"), "--ckpt", ck,
                "--prompt-ids", "1,2,3,4,5", "--tokens", "6", "--temperature", "1", "--seed",
                "9", "--print-ids", "--tp", "2", "--pp", "2"] + extra
        rc, text, err = ct.run(argv, env)
        ct.check(name + "generate 2x2", rc == 0, err.strip()[-300:] if rc else "")
        with open(w("generate.txt"), "w") as f:  # the ids: the last line (a log may precede)
            f.write((text.strip().splitlines() or [""])[-1])


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


def compare(a, out, ref, name=""):
    for method in a.methods:
        for layout in a.layouts:
            tag = "%s.%s" % (method.replace(",", "+"), layout)
            ck = os.path.join(tag, "step-00000003.h5")
            diff = same(os.path.join(ref, ck), os.path.join(out, ck))
            if not diff and losses(os.path.join(ref, tag + ".jsonl")) != losses(os.path.join(out, tag + ".jsonl")):
                diff = "logged losses differ"
            ct.check("identical " + name + tag, not diff, diff)
    texts = [os.path.join(d, "generate.txt") for d in (ref, out)]
    if all(os.path.exists(t) for t in texts):
        with open(texts[0]) as f, open(texts[1]) as g:
            x, y = f.read(), g.read()
        ct.check("identical " + name + "generation", x == y and x.strip() != "", "%r vs %r" % (x, y))


def self_test(out):
    """The comparison can fail: one value of one tensor changed by one ulp."""
    probe = os.path.join(out, "probe.h5")
    src = os.path.join(out, sorted(d for d in os.listdir(out) if d.endswith(".jsonl"))[0][:-6],
                       "step-00000003.h5")
    shutil.copy(src, probe)
    with h5py.File(probe, "r+") as f:
        k = sorted(f["params"])[0]
        x = f["params"][k][...]
        x.flat[0] = np.nextafter(x.flat[0], np.float32(np.inf))
        f["params"][k][...] = x
    ct.check("self-test: a one-ulp change is found", same(src, probe) != "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--mpirun", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", help="a snapshot directory to compare --out with, bit for bit")
    ap.add_argument("--devices", help="DEV[:COMM],...: snapshots of one build on these devices, "
                    "each compared with the first's (in --out/DEV)")
    ap.add_argument("--test-hooks", type=int, choices=(0, 1), default=1,
                    help="0: the build has no test hooks, so no cpu-staged (exits 77 if asked)")
    ap.add_argument("--methods", help="comma-separated subset of the methods ('+' for a comma)")
    ap.add_argument("--layouts", help="comma-separated subset of the layouts TPxPPxDP")
    a = ap.parse_args()
    a.methods = [m.replace("+", ",") for m in a.methods.split(",")] if a.methods else METHODS
    a.layouts = a.layouts.split(",") if a.layouts else LAYOUTS
    a.generate = bool(a.devices)
    if a.devices:
        devices = a.devices.split(",")
        if not a.test_hooks and any(d.partition(":")[0] == "cpu-staged" for d in devices):
            print("SKIP: the device cpu-staged exists only in builds with -DONELORA_TEST_HOOKS=ON")
            return 77
        dirs = [os.path.join(a.out, d.replace(":", "-")) for d in devices]
        for d, out in zip(devices, dirs):
            snapshot(a, out, d)
        for d, out in zip(devices[1:], dirs[1:]):
            compare(a, out, dirs[0], "%s vs %s: " % (d, devices[0]))
        self_test(dirs[0])
        return ct.finish()
    snapshot(a, a.out)
    if a.compare:
        compare(a, a.out, a.compare)
        self_test(a.out)
    return ct.finish()


if __name__ == "__main__":
    sys.exit(main())
