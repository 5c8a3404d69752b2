#!/usr/bin/python3
"""Checkpoints that survive crashes and resume (DESIGN §6, issue 5), under real mpirun:

- exact resume: N steps, then --resume auto for N more, equals 2N steps in one go bit for bit
  (params, adam_m, adam_v and every logged loss), on 1 rank and on TP=2 x PP=2 (4 ranks);
- elastic resume: a checkpoint written under one layout continues under another (TP=2 -> DP=2,
  PP=2 -> TP=2 x DP=2): the step a layout takes from a shared checkpoint has the gradient and loss
  of the one-rank run's step from it, within the error model of tests/mpi/equivalence.py;
- crash safety: SIGKILL of one rank mid-training, then --resume auto reaches the final state of a
  run that was never killed, bit for bit;
- signals: SIGUSR1 or SIGTERM to one rank makes every rank stop with a checkpoint and exit 75;
- --keep, and bad input: a truncated or bit-flipped checkpoint, one from another model or method,
  an unwritable --ckpt-dir and a checkpoint over the file size limit (RLIMIT_FSIZE, no privileges
  needed) each give one clear error and damage no checkpoint; after the limit, --resume auto
  continues bit for bit.
--full-disk-only (ctest mpi.resume.full_disk): a real full disk, a small tmpfs that fills after a
  few checkpoints. Mounting it needs CAP_SYS_ADMIN; without it the script exits 77 (skipped).
--in-write-only (ctest mpi.resume.in_write): SIGKILL of one rank inside a checkpoint write (the
  test hook ONELORA_TEST_CKPT_PAUSE holds the writers), then --resume auto as above. The hook is
  compiled only with -DONELORA_TEST_HOOKS=ON, which CMake passes on as --test-hooks 1; without it
  the script exits 77 (skipped).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import equivalence as eq  # noqa: E402

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


def ckpt(d, step):
    return os.path.join(d, "step-%08d.h5" % step)


def complete_steps(d):
    return sorted(int(n[5:13]) for n in os.listdir(d) if n.startswith("step-") and n.endswith(".h5")) \
        if os.path.isdir(d) else []


# The crash tests: 2 ranks (DP=2) against an uninterrupted 2-rank run of LONG_STEPS steps, with
# steps long enough to act on while it runs (~10-50 ms)
LONG_STEPS = 40
SLOW = dict(dp=2, seq=128)


def resume_and_compare(R, train, name, ref, d, expect_from):
    """--resume auto in d reaches the final state of the uninterrupted run ref, bit for bit."""
    rc, out, err = R.run(2, train(LONG_STEPS, d, ["--ckpt-every", "5", "--resume", "auto"], **SLOW))
    check(name + ".resumed", rc == 0 and ("at step %d " % expect_from) in out,
          "expected a resume from step %d: %s" % (expect_from, (out + err)[-400:]))
    check(name + ".final", rc == 0 and identical(ckpt(ref, LONG_STEPS), ckpt(d, LONG_STEPS)),
          "bit-identical to the run that was never interrupted")


def one_error_line(err):
    lines = [l for l in err.splitlines() if l.startswith("onelora: error:")]
    return lines[0] if len(lines) == 1 else None


# Runs argv[2:] with RLIMIT_FSIZE = argv[1] bytes and SIGXFSZ ignored (so that a write past the
# limit fails with EFBIG instead of killing the process; an ignored disposition survives exec). It
# sits between mpirun and each rank: on mpirun itself the limit breaks its PMIx shared-memory store
# (ftruncate past the limit: "PMIX ERROR: OUT-OF-RESOURCE"), and mpirun resets the signals of the
# ranks it starts to the default, which for SIGXFSZ kills them.
FSIZE_WRAPPER = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                 "n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
                 "os.execv(sys.argv[2], sys.argv[2:])")


def run_limited(R, ranks, args, limit, seconds=120):
    """R.run(ranks, args) with a file size limit of `limit` bytes on every rank. Open MPI's
    shared-memory transport sizes its 4 MiB segment with ftruncate, which the limit refuses, so the
    ranks use another transport (ob1 over TCP). Returns (exit status or "hung", stdout, stderr)."""
    env = dict(R.env, OMPI_MCA_btl="^vader", OMPI_MCA_pml="ob1")
    p = subprocess.Popen([R.mpirun, "-np", str(ranks), sys.executable, "-c", FSIZE_WRAPPER, str(limit),
                          R.bin] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=seconds)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.terminate()  # mpirun takes its ranks down with it
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        rc = "hung"
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


def file_size_limit(R, train, w):
    """A checkpoint over the file size limit: the earlier checkpoints (step 2, written without the
    limit) are kept, the run resumes from step 2 under a limit below the real size of a checkpoint,
    and the step-4 checkpoint must be refused by the writer's reservation (io/checkpoint.c
    ol_ckpt_reserve) before any collective write, with one error line naming the file and the limit.
    No step-4 file, no temporary file, step 2 untouched; then --resume auto without the limit ends
    bit-identical to a run that never hit it."""
    ref, d = w("fsize-ref"), w("fsize")
    rc, _, err = R.run(2, train(6, ref, ["--ckpt-every", "2"], dp=2))
    if not check("bad.file_size_limit.reference", rc == 0, err[-300:]):
        return
    os.makedirs(d)
    shutil.copy(ckpt(ref, 2), d)
    with open(ckpt(d, 2), "rb") as f:
        before = f.read()
    limit = os.path.getsize(ckpt(ref, 4)) * 3 // 4  # the step-4 checkpoint really does not fit
    args = train(6, d, ["--ckpt-every", "2", "--resume", "auto"], dp=2)
    t0 = time.time()
    rc, out, err = run_limited(R, 2, args, limit)
    line = one_error_line(err)
    check("bad.file_size_limit", rc not in (0, 75, "hung") and line is not None and ckpt(d, 4) in line
          and "file size limit" in line and "at step 2 " in out,
          "limit %d bytes: exit %s in %.1f s: %s" % (limit, rc, time.time() - t0, line or (out + err)[-600:]))
    check("bad.file_size_limit.refused_before_writing", "File too large" not in err,
          "no write failed with EFBIG (that would happen inside HDF5's collective calls)")
    with open(ckpt(d, 2), "rb") as f:
        after = f.read()
    tmps = [n for n in os.listdir(d) if n.endswith(".tmp")]
    check("bad.file_size_limit.no_damage", complete_steps(d) == [2] and not tmps and after == before
          and identical(ckpt(ref, 2), ckpt(d, 2)),
          "complete checkpoints %s, temporary files %s, step 2 %s and verifies" % (
              complete_steps(d), tmps, "unchanged" if after == before else "CHANGED"))
    rc, out, err = R.run(2, args)
    lr, ld = logged(ref + ".jsonl")[2:], logged(d + ".jsonl")[-4:]
    check("bad.file_size_limit.resumed", rc == 0 and "at step 2 " in out and complete_steps(d) == [2, 4, 6]
          and identical(ckpt(ref, 6), ckpt(d, 6)) and lr == ld,
          "without the limit: exit %d, checkpoints %s, step 6 bit-identical to the uninterrupted run, "
          "losses %s vs %s %s" % (rc, complete_steps(d), ld, lr, err[-300:] if rc else ""))


def full_disk_tmpfs(R, train, w):
    """A real full disk (ENOSPC): a 1600 KiB tmpfs holds a few checkpoints, then the writer's
    reservation of the next fails. Returns the exit status: 77 (skipped) where no tmpfs can be
    mounted, which needs CAP_SYS_ADMIN."""
    mnt = w("small-disk")
    os.makedirs(mnt)
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", mnt],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if m.returncode != 0:
        print("SKIP mpi.resume.full_disk: cannot mount a tmpfs (%s); that needs CAP_SYS_ADMIN, which "
              "this environment lacks. mpi.resume's bad.file_size_limit tests the same refusal "
              "without privileges." % " ".join(m.stdout.decode(errors="replace").split()))
        return 77
    try:
        ref, d, steps = w("disk-ref"), os.path.join(mnt, "ckpt"), 12
        args = train(steps, d, ["--ckpt-every", "1"], dp=2)
        rc, _, err = R.run(2, train(steps, ref, ["--ckpt-every", "1"], dp=2))
        check("bad.full_disk.reference", rc == 0, err[-300:])
        rc, out, err = R.run(2, args)
        line = one_error_line(err)
        done = complete_steps(d)
        n = len(done)
        readable = all(identical(ckpt(ref, s), ckpt(d, s)) for s in done)
        leftovers = [x for x in os.listdir(d) if x.endswith(".tmp")]
        check("bad.full_disk", rc not in (0, 75) and line is not None and "disk space" in line
              and ckpt(d, n + 1) in line and 0 < n < steps and done == list(range(1, n + 1)) and readable
              and not leftovers,
              "exit %d: %s; complete checkpoints %s, all verify and equal the reference's; temporary "
              "files left: %s" % (rc, line or err[-300:], done, leftovers))
        # room again: --resume auto continues from the newest and ends as the uninterrupted run
        subprocess.run(["mount", "-o", "remount,size=16m", mnt], check=True)
        rc, out, err = R.run(2, train(steps, d, ["--ckpt-every", "1", "--resume", "auto"], dp=2))
        check("bad.full_disk.resumed", rc == 0 and ("at step %d " % n) in out
              and identical(ckpt(ref, steps), ckpt(d, steps)),
              "exit %d; step %d bit-identical to the uninterrupted run %s" % (rc, steps, (out + err)[-300:] if rc else ""))
    finally:
        subprocess.run(["umount", mnt])
    print("%d failed" % failures)
    return 1 if failures else 0


def in_write(R, train, w):
    """SIGKILL inside a checkpoint write: the writers pause in the middle of step 10's file (the
    test hook), rank 1 is killed there; only a .tmp is left, and --resume auto from step 5 ends as
    the uninterrupted run. A binary without the hook never pauses: crash.in_write.killed fails."""
    ref = w("ref40")
    rc, _, err = R.run(2, train(LONG_STEPS, ref, ["--ckpt-every", "5"], **SLOW))
    if check("crash.in_write.reference", rc == 0, err[-300:]):
        d = w("killed-in-write")
        env = dict(R.env, ONELORA_TEST_CKPT_PAUSE="10")
        p = R.start(2, train(LONG_STEPS, d, ["--ckpt-every", "5"], **SLOW), env)
        paused, rc = signal_when(p, 1, signal.SIGKILL, lambda: "pausing inside the write of checkpoint "
                                 "step 10" in open(p.err.name).read())
        ok = check("crash.in_write.killed", paused and rc not in (0, "hung"),
                   "mpirun exit %s" % rc)
        check("crash.in_write.atomic", complete_steps(d) == [5] and os.path.exists(ckpt(d, 10) + ".tmp"),
              "complete %s; the half-written step 10 is only a .tmp" % complete_steps(d))
        if ok:
            resume_and_compare(R, train, "crash.in_write", ref, d, 5)
            check("crash.in_write.tmp_removed", not os.path.exists(ckpt(d, 10) + ".tmp"),
                  "the dead write's temporary file is cleaned up once newer checkpoints exist")
    print("%d failed" % failures)
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--full-disk-only", action="store_true",
                    help="only the tmpfs full-disk test (exits 77 where no tmpfs can be mounted)")
    ap.add_argument("--in-write-only", action="store_true",
                    help="only the kill inside a checkpoint write (exits 77 without --test-hooks 1)")
    ap.add_argument("--test-hooks", type=int, choices=(0, 1), default=0,
                    help="1: onelora was built with -DONELORA_TEST_HOOKS=ON (CMake passes it)")
    a = ap.parse_args()
    if a.in_write_only and not a.test_hooks:
        print("SKIP mpi.resume.in_write: onelora was built without -DONELORA_TEST_HOOKS=ON, so it has "
              "no ONELORA_TEST_CKPT_PAUSE to hold a checkpoint write (tests/run.sh builds with it)")
        return 77
    if a.full_disk_only:  # a tmpfs left mounted by a killed run would block the clean-up below
        subprocess.run(["umount", os.path.join(a.workdir, "small-disk")], stderr=subprocess.DEVNULL)
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

    if a.full_disk_only:
        return full_disk_tmpfs(R, train, w)
    if a.in_write_only:
        return in_write(R, train, w)

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
    # Compared by well-conditioned quantities (tests/mpi/equivalence.py): the writer layout
    # resumes the one-rank run's step-3 checkpoint for one step and writes step 4 from its
    # shards; that step's gradient (from adam_m) and loss must match the one-rank run's step 4
    # from the same checkpoint. Then the reader layout resumes the writer's step 4 for one step,
    # against the one-rank run from that same file. Each within the bound of its layout.
    ref = w("ref6-1rank")
    cfg = eq.model_config(ckpt(ref, 3))
    tokens = 4 * 16  # the global batch: 4 sequences of 16

    def one_step(ranks, start, ckdir, layout, dp):
        """One step resumed from checkpoint `start`; its (gradient, loss) or an error string."""
        rc, _, err = R.run(ranks, train(int(os.path.basename(start)[5:13]) + 1, ckdir,
                                        layout + ["--resume", start], dp=dp))
        if rc != 0:
            return None, err.strip()[-300:]
        step = int(os.path.basename(start)[5:13]) + 1
        return (eq.gradient(ckpt(ckdir, step), start), logged(ckdir + ".jsonl")[-1]), ""

    def same_step(name, got, want, tp):
        eps = eq.layout_eps(cfg, tp, tokens)
        d, worst, _ = eq.compare_gradients(want[0], got[0], eps)
        dl = eq.compare_losses([want[1]], [got[1]], eq.layout_eps(cfg, tp, tokens, True))
        check(name, d <= 1 and dl <= 1, "gradient %.3f of its bound (%s), loss %.3f of its bound"
              % (d, worst, dl))

    for name, (wr, wl, wdp, rr, rl, rdp) in {
            "tp2_to_dp2": (2, ["--tp", "2"], 1, 2, [], 2),
            "pp2_to_tp2dp2": (2, ["--pp", "2"], 1, 4, ["--tp", "2"], 2)}.items():
        written, err = one_step(wr, ckpt(ref, 3), w("el-write-" + name), wl, wdp)
        want, err1 = one_step(1, ckpt(ref, 3), w("el-write-ref-" + name), [], 1)
        if not check("elastic.%s.write" % name, written is not None and want is not None, err + err1):
            continue
        with h5py.File(ckpt(w("el-write-" + name), 4), "r") as f:
            layout = (int(f.attrs["tp"]), int(f.attrs["pp"]), int(f.attrs["dp"]))
        same_step("elastic.%s.written_step" % name, written, want, int(wl[1]) if wl[0] == "--tp" else 1)
        start = ckpt(w("el-write-" + name), 4)
        got, err = one_step(rr, start, w("el-read-" + name), rl, rdp)
        want, err1 = one_step(1, start, w("el-read-ref-" + name), [], 1)
        if not check("elastic.%s.read" % name, got is not None and want is not None,
                     "written by tp/pp/dp %s %s" % (layout, err + err1)):
            continue
        same_step("elastic.%s.read_step" % name, got, want, int(rl[1]) if rl else 1)

    # ---- crash safety and signals (inside a checkpoint write: --in-write-only) --------------
    ref40 = w("ref40")
    rc, _, err = R.run(2, train(LONG_STEPS, ref40, ["--ckpt-every", "5"], **SLOW))
    check("crash.reference", rc == 0, err[-300:])

    # SIGKILL one rank mid-training
    d = w("killed")
    p = R.start(2, train(LONG_STEPS, d, ["--ckpt-every", "5"], **SLOW))
    reached, rc = signal_when(p, 1, signal.SIGKILL, lambda: len(logged(d + ".jsonl")) >= 12)
    done = len(logged(d + ".jsonl"))
    if check("crash.sigkill.killed", reached and rc not in (0, "hung") and done < LONG_STEPS,
             "rank 1 killed after %d logged steps; mpirun exit %s" % (done, rc)):
        last = complete_steps(d)[-1]
        resume_and_compare(R, train, "crash.sigkill", ref40, d, last)

    # SIGUSR1 to rank 1 / SIGTERM to rank 0: every rank stops after the step, checkpoints, exits 75
    for sig, rank in ((signal.SIGUSR1, 1), (signal.SIGTERM, 0)):
        name = "signal.%s" % sig.name
        d = w("stopped-" + sig.name)
        p = R.start(2, train(LONG_STEPS, d, ["--ckpt-every", "100"], **SLOW))
        reached, rc = signal_when(p, rank, sig, lambda: len(logged(d + ".jsonl")) >= 5)
        done = len(logged(d + ".jsonl"))
        if check(name + ".stopped", reached and rc == 75 and complete_steps(d) == [done] and done < LONG_STEPS,
                 "exit %s; checkpoints %s after %d steps" % (rc, complete_steps(d), done)):
            resume_and_compare(R, train, name, ref40, d, done)

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

    # a checkpoint over the file size limit (a real full disk: mpi.resume.full_disk)
    file_size_limit(R, train, w)

    print("%d failed" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
