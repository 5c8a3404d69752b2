#!/usr/bin/python3
"""A failing or dying rank must bring the whole job down within seconds, with one line that names
the rank and the cause, never a hang:
  1. rank 1 cannot open its data file (mpirun MPMD: the ranks get different --data);
  2. rank 1 is killed with SIGKILL in the middle of training.
Prints PASS/FAIL per case; exits nonzero on any failure."""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

LIMIT = 60  # seconds: generous for a loaded 2-core machine; a hang would be killed at the limit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = lambda n: os.path.join(a.workdir, n)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    subprocess.run([a.onelora, "init", "--preset", "tiny", "--out", w("m.h5")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    rng = np.random.default_rng(0)
    with h5py.File(w("d.h5"), "w") as f:
        f.create_dataset("train", data=rng.integers(0, 256, 50000, dtype=np.uint16))
        f.create_dataset("val", data=rng.integers(0, 256, 5000, dtype=np.uint16))
        f.attrs["vocab_size"] = np.int64(256)
    failures = 0

    def check(name, ok, detail):
        nonlocal failures
        print("%s %s: %s" % ("PASS" if ok else "FAIL", name, detail))
        failures += 0 if ok else 1

    train = ["train", "--model", w("m.h5"), "--seq-len", "32", "--micro-batch", "2"]
    missing = w("no-such-data.h5")
    t0 = time.time()
    try:
        r = subprocess.run([a.mpirun, "-np", "1", a.onelora] + train + ["--data", w("d.h5"), "--steps", "5"]
                           + [":", "-np", "1", a.onelora] + train + ["--data", missing, "--steps", "5"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=LIMIT)
        err = r.stderr.decode(errors="replace")
        lines = [l for l in err.splitlines() if l.startswith("onelora: error:")]
        ok = r.returncode != 0 and len(lines) == 1 and "rank 1" in lines[0] and missing in lines[0]
        check("rank 1 cannot open its data", ok, "exit %d in %.1f s, %r" % (r.returncode, time.time() - t0,
                                                                        lines))
    except subprocess.TimeoutExpired:
        check("rank 1 cannot open its data", False, "hung for %d s" % LIMIT)

    # layouts that do not fit: agreed on every rank, one line from rank 0, a clean exit
    subprocess.run([a.onelora, "init", "--preset", "tiny", "--layers", "1", "--out", w("m1.h5")],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([a.onelora, "init", "--preset", "tiny", "--layers", "1", "--kv-heads", "1",
                    "--out", w("mkv1.h5")], env=env, check=True, stdout=subprocess.DEVNULL)
    for name, np_, extra, model, mention in [
            ("--pp 2 on 3 ranks", 3, ["--pp", "2"], w("m.h5"), "--pp"),
            ("--pp 2 on a 1-layer model", 2, ["--pp", "2"], w("m1.h5"), "--pp"),
            ("--tp 2 with 1 kv head", 2, ["--tp", "2"], w("mkv1.h5"), "n_kv_heads 1 is not divisible")]:
        try:
            r = subprocess.run([a.mpirun, "-np", str(np_), a.onelora, "train", "--model", model,
                                "--data", w("d.h5"), "--seq-len", "32", "--steps", "1"] + extra,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=LIMIT)
            lines = [l for l in r.stderr.decode(errors="replace").splitlines()
                     if l.startswith("onelora: error:")]
            check(name, r.returncode != 0 and len(lines) == 1 and mention in lines[0],
                  "exit %d, %r" % (r.returncode, lines))
        except subprocess.TimeoutExpired:
            check(name, False, "hung for %d s" % LIMIT)

    marker = w("killme")  # a unique argument to find the ranks' processes
    p = subprocess.Popen([a.mpirun, "-np", "2", a.onelora] + train +
                         ["--data", w("d.h5"), "--steps", "100000", "--ckpt-dir", marker],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pids = []
    for _ in range(200):  # wait until both ranks train
        time.sleep(0.1)
        out = subprocess.run(["pgrep", "-f", marker], stdout=subprocess.PIPE).stdout.decode().split()
        pids = [int(x) for x in out if int(x) != p.pid]
        ranks = [q for q in pids if open("/proc/%d/cmdline" % q, "rb").read().split(b"\0")[0].endswith(b"onelora")]
        if len(ranks) >= 2:
            break
    time.sleep(1.0)
    t0 = time.time()
    os.kill(ranks[-1], signal.SIGKILL)
    try:
        _, err = p.communicate(timeout=LIMIT)
        dt = time.time() - t0
        check("a rank is killed", p.returncode != 0 and dt < LIMIT,
              "mpirun exit %d %.1f s after the kill" % (p.returncode, dt))
    except subprocess.TimeoutExpired:
        p.kill()
        check("a rank is killed", False, "the job hung for %d s after the kill" % LIMIT)
    print("%d passed, %d failed" % (5 - failures, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
