#!/usr/bin/python3
"""Every parallel layout against the single-rank result (DESIGN §5): for each method, the loss of
every step and the checkpoint after 3 steps under mpirun must match a one-rank run of the same
global batch within 1e-5 relative. Layouts are given as TPxPPxDP; the one-rank reference runs the
same global batch of 4 sequences as 4 micro-batches. Prints PASS/FAIL per case; exits nonzero on
any failure.

Tolerances, per tensor as ||x - y|| / ||x||: the layouts differ from the reference only in the
order of float32 sums (an all-reduce of partial gradients instead of accumulation in one buffer),
so gradients agree to f32 rounding (~1e-7): the losses and adam_m (a linear combination of the
gradients) must agree within 1e-5. The parameters and adam_v pass through AdamW's normalisation
m / sqrt(v), which turns the relative rounding of a *small* gradient into a relative change of
its step: LoRA's A has a gradient of order |B| ~ lr at step 2, and measured differences reach
1.2e-5 there (DP=2 x PP=2), so they get 5e-5. A wrong term (a missing reduction, a wrong data
slice, a stage's layers updated twice) shows as 1e-2 or more. BitFit leaves out k_proj: a key bias shifts every score of a query by
the same amount, which softmax ignores, so its gradient is exactly zero and Adam turns pure rounding
noise into its steps."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

STEPS = 3
GLOBAL_BATCH = 4


def run(argv, env):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=300,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def losses(log):
    with open(log) as f:
        return [json.loads(l)["loss"] for l in f if '"kind": "step"' in l]


def dp_bytes(log):
    with open(log) as f:
        return [json.loads(l)["bytes_dp"] for l in f if '"kind": "step"' in l]


def trainable(ckpt):
    with h5py.File(ckpt, "r") as f:
        return sum(ds.size for ds in f["params"].values())


def compare_ckpt(a, b):
    """Largest relative difference over the tensors of each group, as a fraction of its tolerance
    (<= 1 passes)."""
    tolerance = {"params": 5e-5, "adam_m": 1e-5, "adam_v": 5e-5}
    worst = 0.0
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for g in ("params", "adam_m", "adam_v"):
            if sorted(fa[g]) != sorted(fb[g]):
                return float("inf")
            for k in fa[g]:
                x, y = fa[g][k][...].astype(np.float64), fb[g][k][...].astype(np.float64)
                if x.shape != y.shape:
                    return float("inf")
                rel = np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30)
                worst = max(worst, rel / tolerance[g])
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--layouts", default="1x1x2", help="comma list of TPxPPxDP[g], g = GPipe")
    ap.add_argument("--methods", default="1lora", help="semicolon list, e.g. '1lora;1lora,norms'")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = lambda n: os.path.join(a.workdir, n)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    rc, _, err = run([a.onelora, "init", "--preset", "tiny", "--seed", "3", "--dim", "64", "--heads",
                      "4", "--kv-heads", "2", "--ffn", "96", "--layers", "4", "--out", w("m.h5")], env)
    if rc != 0:
        print("FAIL init: " + err)
        return 1
    rng = np.random.default_rng(0)
    with h5py.File(w("d.h5"), "w") as f:
        f.create_dataset("train", data=rng.integers(0, 256, 20000, dtype=np.uint16))
        f.create_dataset("val", data=rng.integers(0, 256, 4000, dtype=np.uint16))
        f.attrs["vocab_size"] = np.int64(256)

    failures = count = 0
    for method in a.methods.split(";"):
        targets = "q,v,o,gate,up,down" if "bitfit" in method else "all"
        common = ["train", "--model", w("m.h5"), "--data", w("d.h5"), "--method", method,
                  "--targets", targets, "--steps", str(STEPS), "--seq-len", "16", "--no-shuffle",
                  "--clip", "0", "--lr", "0.01", "--rank", "2", "--seed", "5", "--micro-batch", "1"]
        tag = method.replace(",", "+")
        ref = w("ref-" + tag)
        rc, _, err = run([a.onelora] + common + ["--micro-batches", str(GLOBAL_BATCH), "--ckpt-dir",
                                                 ref, "--log", ref + ".jsonl"], env)
        if rc != 0:
            print("FAIL %s: the one-rank reference failed: %s" % (tag, err.strip()[-500:]))
            failures, count = failures + 1, count + 1
            continue
        for layout in a.layouts.split(","):
            gpipe = layout.endswith("g")  # e.g. 1x2x1g: the GPipe schedule instead of 1F1B
            tp, pp, dp = (int(v) for v in layout.rstrip("g").split("x"))
            name, count = "%s.%s" % (tag, layout), count + 1
            par = w("par-" + name)
            rc, _, err = run([a.mpirun, "-np", str(tp * pp * dp), a.onelora] + common +
                             ["--tp", str(tp), "--pp", str(pp), "--micro-batches",
                              str(GLOBAL_BATCH // dp), "--ckpt-dir", par, "--log", par + ".jsonl"]
                             + (["--pp-schedule", "gpipe"] if gpipe else []), env)
            if rc != 0:
                print("FAIL %s: the parallel run failed: %s" % (name, err.strip()[-500:]))
                failures += 1
                continue
            lref, lpar = losses(ref + ".jsonl"), losses(par + ".jsonl")
            dl = (max(abs(x - y) / abs(x) for x, y in zip(lref, lpar))
                  if len(lref) == len(lpar) == STEPS else float("inf"))
            ck = "step-%08d.h5" % STEPS
            dc = compare_ckpt(os.path.join(ref, ck), os.path.join(par, ck))
            # communication accounting (the log is rank 0's): without TP or PP rank 0 holds every
            # trainable value and its DP traffic per step is the flat gradient buffer, 4 bytes
            # per value (DESIGN §5); nothing with one replica; a stage's share under PP
            got = dp_bytes(par + ".jsonl")
            if pp == 1 and tp == 1:
                want = 4 * trainable(os.path.join(ref, ck)) if dp > 1 else 0
            else:
                want = got[0] if dp > 1 and 0 < got[0] < 4 * trainable(os.path.join(ref, ck)) else 0
            ok = dl < 1e-5 and dc <= 1 and got == [want] * STEPS
            failures += 0 if ok else 1
            print("%s %s: loss rel diff %.2e, checkpoint diff %.2f of tolerance, DP bytes/step %s (want %d)"
                  % ("PASS" if ok else "FAIL", name, dl, dc, got[:1], want))
    print("%d passed, %d failed" % (count - failures, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
