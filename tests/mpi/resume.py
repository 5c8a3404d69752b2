#!/usr/bin/python3
"""Checkpoints that survive crashes and resume (DESIGN §6, issue 5), under real mpirun:

- exact resume: N steps, then --resume auto for N more, equals 2N steps in one go bit for bit
  (params, adam_m, adam_v and every logged loss), on 1 rank and on TP=2 x PP=2 (4 ranks);
- elastic resume: a checkpoint written under one layout continues under another (TP=2 -> DP=2,
  PP=2 -> 1 rank) and matches the uninterrupted one-rank run within the float32 reordering
  tolerance of tests/mpi/layouts.py;
- crash safety: SIGKILL of one rank mid-training, and inside a checkpoint write (the test hook
  ONELORA_TEST_CKPT_PAUSE holds the writers), then --resume auto reaches the final state of a
  run that was never killed, bit for bit;
- signals: SIGUSR1 or SIGTERM to one rank makes every rank stop with a checkpoint and exit 75;
- --keep, and bad input: a truncated or bit-flipped checkpoint, one from another model or method,
  an unwritable --ckpt-dir and a full disk each give one clear error and damage no checkpoint.
Prints PASS/FAIL per check; exits nonzero on any failure."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

failures = 0


def check(name, ok, detail=""):
    global failures
    print("%s %s %s" % ("PASS" if ok else "FAIL", name, detail), flush=True)
    failures += 0 if ok else 1
    return ok


class Runner:
    def __init__(self, a, workdir):
        self.bin, self.mpirun, self.dir = a.onelora, a.mpirun, workdir
        self.env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
                        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")

    def w(self, name):
        return os.path.join(self.dir, name)

    def argv(self, ranks, args):
        return ([self.mpirun, "-np", str(ranks), self.bin] if ranks > 1 else [self.bin]) + args

    def run(self, ranks, args, env=None):
        r = subprocess.run(self.argv(ranks, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env or self.env, timeout=300, stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def start(self, ranks, args, env=None):
        err = open(self.w("stderr-%d.txt" % time.monotonic_ns()), "w+")
        p = subprocess.Popen(self.argv(ranks, args), stdout=subprocess.DEVNULL, stderr=err,
                             env=env or self.env, stdin=subprocess.DEVNULL)
        p.err = err
        return p


def children(pid):
    """The processes whose parent is pid (mpirun's local ranks), lowest pid first."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(out)


def rank_pid(p, rank):
    """The pid of local rank `rank` of an mpirun started by Runner.start (its argv says which)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        for pid in children(p.pid):
            try:
                with open("/proc/%d/environ" % pid, "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if ("OMPI_COMM_WORLD_RANK=%d" % rank).encode() in env:
                return pid
        time.sleep(0.05)
    return None


def signal_when(p, rank, sig, ready, seconds=120):
    """Sends sig to local rank `rank` of the mpirun p once ready() holds, then waits for p to end.
    Returns (signalled, exit status or "hung")."""
    pid = rank_pid(p, rank)
    signalled = pid is not None and wait_for(ready, seconds)
    if signalled:
        os.kill(pid, sig)
    try:
        rc = p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = "hung"
    return signalled, rc


def logged(log, kind="step", key="loss"):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        rows = []
        for line in f:
            try:
                j = json.loads(line)
            except ValueError:
                continue  # a line being written
            if j.get("kind") == kind:
                rows.append(j[key] if key else j)
        return rows


def wait_for(cond, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def states(path):
    with h5py.File(path, "r") as f:
        return {g + "/" + k: f[g][k][...] for g in ("params", "adam_m", "adam_v") for k in f[g]}


def identical(a, b):
    """Bit-identical checkpoints: the same tensors with the same float32 bits."""
    sa, sb = states(a), states(b)
    return sorted(sa) == sorted(sb) and all(np.array_equal(sa[k].view(np.uint32), sb[k].view(np.uint32))
                                            for k in sa)


def close(a, b, scale):
    """Relative difference per tensor within the tolerances of tests/mpi/layouts.py x scale."""
    tol = {"params": 5e-5, "adam_m": 1e-5, "adam_v": 5e-5}
    sa, sb = states(a), states(b)
    if sorted(sa) != sorted(sb):
        return float("inf")
    worst = 0.0
    for k in sa:
        x, y = sa[k].astype(np.float64), sb[k].astype(np.float64)
        worst = max(worst, np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30) / (tol[k.split("/")[0]] * scale))
    return worst


def ckpt(d, step):
    return os.path.join(d, "step-%08d.h5" % step)


def complete_steps(d):
    return sorted(int(n[5:13]) for n in os.listdir(d) if n.startswith("step-") and n.endswith(".h5")) \
        if os.path.isdir(d) else []


def one_error_line(err):
    lines = [l for l in err.splitlines() if l.startswith("onelora: error:")]
    return lines[0] if len(lines) == 1 else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    R = Runner(a, a.workdir)
    w = R.w
    rc, _, err = R.run(1, ["init", "--preset", "tiny", "--seed", "3", "--dim", "64", "--heads", "4",
                           "--kv-heads", "2", "--ffn", "96", "--layers", "4", "--out", w("m.h5")])
    if not check("init", rc == 0, err[-300:]):
        return 1
    rng = np.random.default_rng(0)
    with h5py.File(w("d.h5"), "w") as f:
        f.create_dataset("train", data=rng.integers(0, 256, 40000, dtype=np.uint16))
        f.create_dataset("val", data=rng.integers(0, 256, 4000, dtype=np.uint16))
        f.attrs["vocab_size"] = np.int64(256)

    # global batch 4 sequences: micro-batches x DP = 4 on every layout
    def train(steps, ckdir, extra, dp=1, method="1lora,norms", seq=16):
        return ["train", "--model", w("m.h5"), "--data", w("d.h5"), "--method", method,
                "--steps", str(steps), "--seq-len", str(seq), "--micro-batch", "1",
                "--micro-batches", str(4 // dp), "--lr", "0.01", "--clip", "1", "--seed", "5",
                "--ckpt-dir", ckdir, "--log", ckdir + ".jsonl"] + extra

    # ---- exact resume: 3 + 3 steps equal 6 in one go, bit for bit --------------------------
    for name, ranks, layout in (("1rank", 1, []), ("tp2pp2", 4, ["--tp", "2", "--pp", "2"])):
        ref, part = w("ref6-" + name), w("resumed-" + name)
        rc, _, err = R.run(ranks, train(6, ref, layout + ["--ckpt-every", "3"]))
        if not check("exact.%s.reference" % name, rc == 0, err[-300:]):
            continue
        os.makedirs(part)
        shutil.copy(ckpt(ref, 3), part)  # the state after 3 steps, as a separate run leaves it
        rc, out, err = R.run(ranks, train(6, part, layout + ["--resume", "auto"]))
        check("exact.%s.resumed" % name, rc == 0 and "resumed from" in out and "at step 3" in out,
              err[-300:])
        check("exact.%s.state" % name, rc == 0 and identical(ckpt(ref, 6), ckpt(part, 6)),
              "params, adam_m and adam_v bit-identical after step 6")
        check("exact.%s.losses" % name, logged(ref + ".jsonl")[3:] == logged(part + ".jsonl"),
              "%s vs %s" % (logged(ref + ".jsonl")[3:], logged(part + ".jsonl")))

    # ---- elastic resume: written under one layout, continued under another -----------------
    ref = w("ref6-1rank")
    for name, (wr, wl, rr, rl, rdp) in {
            "tp2_to_dp2": (2, ["--tp", "2"], 2, [], 2),
            "pp2_to_1rank": (2, ["--pp", "2"], 1, [], 1)}.items():
        first, second = w("el-first-" + name), w("el-second-" + name)
        rc, _, err = R.run(wr, train(6, first, wl + ["--ckpt-every", "3"]))
        if not check("elastic.%s.write" % name, rc == 0, err[-300:]):
            continue
        os.makedirs(second)
        shutil.copy(ckpt(first, 3), second)
        rc, out, err = R.run(rr, train(6, second, rl + ["--resume", "auto"], dp=rdp))
        with h5py.File(ckpt(first, 3), "r") as f:
            written = (int(f.attrs["tp"]), int(f.attrs["pp"]), int(f.attrs["dp"]))
        d = close(ckpt(ref, 6), ckpt(second, 6), 2) if rc == 0 else float("inf")
        lr, le = logged(ref + ".jsonl")[3:], logged(second + ".jsonl")
        dl = max(abs(x - y) / abs(x) for x, y in zip(lr, le)) if len(lr) == len(le) == 3 else 1
        check("elastic.%s" % name, rc == 0 and d <= 1 and dl < 1e-5,
              "written by tp/pp/dp %s; step-6 state %.2f of tolerance, loss rel diff %.1e %s"
              % (written, d, dl, err[-300:] if rc else ""))

    # ---- crash safety and signals: 2 ranks (DP=2), against an uninterrupted 2-rank run -------
    long_steps = 40
    slow = dict(dp=2, seq=128)  # steps long enough to act on while it runs (~10-50 ms)
    ref40 = w("ref40")
    rc, _, err = R.run(2, train(long_steps, ref40, ["--ckpt-every", "5"], **slow))
    check("crash.reference", rc == 0, err[-300:])

    def resume_and_compare(name, d, expect_from):
        rc, out, err = R.run(2, train(long_steps, d, ["--ckpt-every", "5", "--resume", "auto"], **slow))
        check(name + ".resumed", rc == 0 and ("at step %d " % expect_from) in out,
              "expected a resume from step %d: %s" % (expect_from, (out + err)[-400:]))
        check(name + ".final", rc == 0 and identical(ckpt(ref40, long_steps), ckpt(d, long_steps)),
              "bit-identical to the run that was never interrupted")

    # SIGKILL one rank mid-training
    d = w("killed")
    p = R.start(2, train(long_steps, d, ["--ckpt-every", "5"], **slow))
    reached, rc = signal_when(p, 1, signal.SIGKILL, lambda: len(logged(d + ".jsonl")) >= 12)
    done = len(logged(d + ".jsonl"))
    if check("crash.sigkill.killed", reached and rc not in (0, "hung") and done < long_steps,
             "rank 1 killed after %d logged steps; mpirun exit %s" % (done, rc)):
        last = complete_steps(d)[-1]
        resume_and_compare("crash.sigkill", d, last)

    # SIGKILL inside a checkpoint write: the writers pause in the middle of step 10's file
    d = w("killed-in-write")
    env = dict(R.env, ONELORA_TEST_CKPT_PAUSE="10")
    p = R.start(2, train(long_steps, d, ["--ckpt-every", "5"], **slow), env)
    paused, rc = signal_when(p, 1, signal.SIGKILL, lambda: "pausing inside the write of checkpoint "
                             "step 10" in open(p.err.name).read())
    ok = check("crash.in_write.killed", paused and rc not in (0, "hung"),
               "mpirun exit %s" % rc)
    check("crash.in_write.atomic", complete_steps(d) == [5] and os.path.exists(ckpt(d, 10) + ".tmp"),
          "complete %s; the half-written step 10 is only a .tmp" % complete_steps(d))
    if ok:
        resume_and_compare("crash.in_write", d, 5)
        check("crash.in_write.tmp_removed", not os.path.exists(ckpt(d, 10) + ".tmp"),
              "the dead write's temporary file is cleaned up once newer checkpoints exist")

    # SIGUSR1 to rank 1 / SIGTERM to rank 0: every rank stops after the step, checkpoints, exits 75
    for sig, rank in ((signal.SIGUSR1, 1), (signal.SIGTERM, 0)):
        name = "signal.%s" % sig.name
        d = w("stopped-" + sig.name)
        p = R.start(2, train(long_steps, d, ["--ckpt-every", "100"], **slow))
        reached, rc = signal_when(p, rank, sig, lambda: len(logged(d + ".jsonl")) >= 5)
        done = len(logged(d + ".jsonl"))
        if check(name + ".stopped", reached and rc == 75 and complete_steps(d) == [done] and done < long_steps,
                 "exit %s; checkpoints %s after %d steps" % (rc, complete_steps(d), done)):
            resume_and_compare(name, d, done)

    # ---- --keep ----------------------------------------------------------------------------
    d = w("keep")
    rc, _, err = R.run(1, train(6, d, ["--ckpt-every", "1", "--keep", "2"]))
    check("keep", rc == 0 and complete_steps(d) == [5, 6], "left %s %s" % (complete_steps(d), err[-200:]))

    # ---- bad input -------------------------------------------------------------------------
    def refused(name, args, *words, ranks=1):
        rc, out, err = R.run(ranks, args)
        line = one_error_line(err)
        return check(name, rc not in (0, 75) and line is not None and all(x in line for x in words),
                     "exit %d: %s" % (rc, line or err[-300:]))

    good3 = ckpt(ref, 3)
    bad = w("bad")
    os.makedirs(bad)
    trunc = ckpt(bad, 6)
    with open(ckpt(ref, 6), "rb") as f:
        blob = f.read()
    with open(trunc, "wb") as f:
        f.write(blob[: len(blob) // 2])
    shutil.copy(good3, bad)
    refused("bad.truncated", train(6, w("x1"), ["--resume", trunc]), trunc)
    check("bad.truncated.untouched", os.path.getsize(trunc) == len(blob) // 2,
          "a refused resume leaves the damaged file as it was, for a human to look at")
    rc, out, err = R.run(1, train(6, bad, ["--resume", "auto"]))
    check("bad.truncated.auto_skips", rc == 0 and "skipping" in err and trunc in err and "at step 3" in out
          and identical(ckpt(ref, 6), trunc), "and the continued run's step 6 replaces it: "
          + (out + err)[-300:])

    flipped = w("flipped.h5")
    shutil.copy(good3, flipped)
    with h5py.File(flipped, "r") as f:
        ds = f["params"]["model.layers.1.self_attn.q_proj.onelora_b"]
        offset = ds.id.get_chunk_info(0).byte_offset
    with open(flipped, "r+b") as f:
        f.seek(offset + 8)
        byte = f.read(1)
        f.seek(offset + 8)
        f.write(bytes([byte[0] ^ 0xFF]))
    refused("bad.flipped", train(6, w("x2"), ["--resume", flipped]), flipped, "checksum",
            "model.layers.1.self_attn.q_proj.onelora_b")

    args = train(6, w("x3"), ["--resume", good3])
    args[args.index("--method") + 1] = "lora"
    refused("bad.other_method", args, good3, "--method 1lora,norms", "--method lora")
    rc, _, err = R.run(1, ["init", "--preset", "tiny", "--seed", "3", "--dim", "32", "--heads", "4",
                           "--kv-heads", "2", "--ffn", "96", "--layers", "4", "--out", w("m32.h5")])
    args = train(6, w("x4"), ["--resume", good3])
    args[args.index("--model") + 1] = w("m32.h5")
    refused("bad.other_model", args, good3, "dim")
    args = train(6, w("x5"), ["--resume", good3], dp=2)
    args[args.index("--micro-batches") + 1] = "1"
    refused("bad.other_batch", args, good3, "global batch", ranks=2)
    # a fresh run into a directory holding another run's checkpoints is refused (nothing pruned)
    refused("bad.dir_in_use", train(6, bad, []), bad, "--resume auto")

    blocker = w("a-file")
    open(blocker, "w").close()
    args = train(2, os.path.join(blocker, "ckpt"), [])
    args[args.index("--log") + 1] = w("unwritable.jsonl")
    refused("bad.unwritable_dir", args, "--ckpt-dir", blocker)

    # a full disk: a small tmpfs fills after a few checkpoints
    mnt = w("small-disk")
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", mnt],
                      stderr=subprocess.DEVNULL).returncode != 0:
        print("NOTE bad.full_disk not run: mounting a tmpfs needs CAP_SYS_ADMIN, which this "
              "environment lacks (docs/FORMATS.md describes the behaviour)")
    else:
        try:
            d = os.path.join(mnt, "ckpt")
            rc, out, err = R.run(2, train(30, d, ["--ckpt-every", "1"], dp=2))
            line = one_error_line(err)
            steps = complete_steps(d)
            readable = all(states(ckpt(d, s)) is not None for s in steps)
            leftovers = [n for n in os.listdir(d) if n.endswith(".tmp")]
            check("bad.full_disk", rc not in (0, 75) and line is not None and "disk space" in line and steps and
                  readable and not leftovers,
                  "exit %d: %s; %d complete checkpoints all readable; temporary files left: %s"
                  % (rc, line, len(steps), leftovers))
        finally:
            subprocess.run(["umount", mnt])

    print("%d failed" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
