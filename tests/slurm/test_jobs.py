#!/usr/bin/env python3
"""The Slurm job scripts (jobs/*.sbatch, jobs/analysis.sh) on a real single-node Slurm cluster that
this test starts itself (tests/slurm/cluster.py) and stops on exit, also on failure. Each job runs
with tiny settings on the shipped base model, submitted by `sbatch` from a scratch directory:

  train      train.sbatch: run directory (config, log, --keep'd checkpoints, results.csv, slurm.out)
  failure    a bad model path: nonzero exit, the cause named in the job's output, no requeue
  layout     more --tp than tasks: refused by the script before launching
  compare    compare-methods.sbatch: the nine methods as a job array, one results row each
  scaling    scaling.sbatch: strong and weak scaling over DP, TP, PP (sizes 2 and 4)
  preempt    SIGUSR1 to the batch shell mid-run: checkpoint, requeue, resume, finish; the final
             checkpoint equals, bit for bit, that of the same run never interrupted
  study      study.sbatch: a 2 methods x 2 rates x 1 seed grid as a job array on text it
             tokenizes once (4 tasks starting together), --list, refused options and indexes
  analysis   jobs/analysis.sh over all runs: report.md and valid PNG plots, the study's table,
             claims and plots (and its per-layer trajectories where jobs/trajectory.sh exists)

Usage: test_jobs.py --onelora BUILD/onelora --workdir DIR [--root REPO]
Exit status 0 when every check passed; a missing prerequisite (slurmd that cannot start, no
gnuplot, no h5py) is a failure with a message, never a skip.
"""
import argparse
import csv
import math
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, ClusterError  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cli"))
from clitest import png_size  # noqa: E402

COLUMNS = ("model,method,targets,rank,tp,pp,dp,ranks,steps,global_batch,seq_len,trainable,"
           "tokens_per_s,step_s,peak_rss_mib,bytes_dp,bytes_tp_fwd,bytes_tp_bwd,bytes_pp,"
           "train_loss,val_loss,wall_s,status").split(",")
METHODS = ["1lora", "lora", "vera", "dora", "mora", "bitfit", "norms", "1lora,norms", "full"]
TINY = ["--steps", "6", "--micro-batch", "2", "--seq-len", "32", "--lr", "3e-3", "--seed", "1",
        "--eval-every", "6", "--eval-batches", "1"]
PREEMPT_STEPS = 150
# the study's tiny grid: index = (configuration x 2 + lr) x 1 + seed
STUDY_ENV = {"STUDY_METHODS": "1lora lora", "STUDY_ATTN_METHODS": "", "STUDY_LRS": "3e-3 3e-2", "STUDY_SEEDS": "1"}
STUDY_GRID = [("1lora", "all", "3e-3", "1"), ("1lora", "all", "3e-2", "1"), ("lora", "all", "3e-3", "1"),
              ("lora", "all", "3e-2", "1")]
STUDY_STEPS = 4
failures = []


def check(cond, what):
    print(f"  {'ok  ' if cond else 'FAIL'} {what}", flush=True)
    if not cond:
        failures.append(what)
    return cond


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


class Jobs:
    """Submits job scripts to the cluster from the scratch directory and waits for them."""

    def __init__(self, cluster, root, onelora, scratch):
        self.c, self.root, self.scratch = cluster, root, scratch
        # Open MPI busy-polls while it waits; on this test's oversubscribed node (more ranks than
        # cores) ranks must yield instead, or a TP=4 step takes seconds
        self.env = dict(cluster.env, ONELORA_BIN=onelora, OMPI_MCA_mpi_yield_when_idle="1")
        self.env.pop("ONELORA_ROOT", None)  # the scripts find the repository themselves
        self.env.pop("ONELORA_RUNS", None)

    def submit(self, script, sbatch_args, args, wait, env=None):
        cmd = ["sbatch", "--parsable"] + (["--wait"] if wait else []) + sbatch_args + \
              [os.path.join(self.root, "jobs", script)] + args
        p = subprocess.Popen(cmd, cwd=self.scratch, env=dict(self.env, **(env or {})),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if wait:
            return p
        out, err = p.communicate(timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed: {err.strip()}")
        return out.strip().split(";")[0]

    @staticmethod
    def finish(p, timeout):
        """(job id, exit status) of an `sbatch --parsable --wait` started by submit()."""
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise RuntimeError(f"job did not finish within {timeout} s: {out.strip()} {err.strip()}")
        return out.strip().split(";")[0].split("\n")[0], p.returncode

    def job(self, jobid):
        """scontrol's fields of a job (an array task id like 12_3 works too)."""
        r = subprocess.run(["scontrol", "show", "job", "-o", str(jobid)], env=self.env,
                           capture_output=True, text=True, timeout=20)
        line = r.stdout.strip().split("\n")[0]
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))

    def wait_state(self, jobid, timeout):
        deadline = time.time() + timeout
        state = None
        while time.time() < deadline:
            state = self.job(jobid).get("JobState")
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                return state
            time.sleep(0.5)
        raise RuntimeError(f"job {jobid} still {state} after {timeout} s")


def results(run):
    """The rows of run/results.csv (checked against the contract's header)."""
    path = os.path.join(run, "results.csv")
    if not check(os.path.exists(path), f"{path} exists"):
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    check(rows and rows[0] == COLUMNS, f"{path}: header is the contract's {len(COLUMNS)} columns")
    out = []
    for row in rows[1:]:
        check(len(row) == len(COLUMNS), f"{path}: row has {len(COLUMNS)} fields")
        out.append(dict(zip(COLUMNS, row)))
    return out


# A finite loss far from garbage: the byte-level model's uniform guess costs ln 256 = 5.5 nats a
# token, and a model trained on other text (the shipped KJV base model, here evaluated on this
# repository's Markdown, whose tail changes with the docs) may do worse than uniform but not by
# a factor of four; NaN, inf or an exploded run fail.
LOSS_BOUND = 4 * math.log(256)


def plausible(row, where, steps, evaluated=True):
    """Values a finished run of this test must have, whatever its method and layout."""
    f = {k: float(row[k]) for k in ("tokens_per_s", "step_s", "peak_rss_mib", "train_loss", "wall_s")}
    tp, pp, dp, ranks = (int(row[k]) for k in ("tp", "pp", "dp", "ranks"))
    ok = (row["status"] == "done" and int(row["steps"]) == steps and tp * pp * dp == ranks
          and int(row["trainable"]) > 0 and 0 < f["tokens_per_s"] < 1e8 and 0 < f["step_s"] < 60
          and 1 < f["peak_rss_mib"] < 4096 and 0 < f["train_loss"] < LOSS_BOUND and 0 < f["wall_s"] < 300
          and (int(row["bytes_dp"]) > 0) == (dp > 1) and (int(row["bytes_pp"]) > 0) == (pp > 1)
          and (int(row["bytes_tp_fwd"]) > 0) == (tp > 1) and (int(row["bytes_tp_bwd"]) > 0) == (tp > 1))
    if evaluated:
        ok = ok and row["val_loss"] != "" and 0 < float(row["val_loss"]) < LOSS_BOUND
    return check(ok, f"{where}: plausible row ({row['method']}, tp {tp} pp {pp} dp {dp}, "
                     f"{row['tokens_per_s']} tok/s, {row['peak_rss_mib']} MiB, loss {row['train_loss']}, "
                     f"val {row['val_loss']}, {row['status']})")


def plan(onelora, model, method, rank):
    r = subprocess.run([onelora, "plan", "--model", model, "--method", method, "--rank", str(rank),
                        "--csv"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"onelora plan failed: {r.stderr.strip()}")
    return next(csv.DictReader(r.stdout.splitlines()))


def test_train(J, p, model):
    jobid, rc = J.finish(p, 120)
    check(rc == 0, f"train.sbatch exits 0 (got {rc})")
    run = os.path.join(J.scratch, "runs", f"train-{jobid}")
    check(os.path.isdir(run), f"run directory runs/train-{jobid}")
    cfg = read(os.path.join(run, "config.txt")) if os.path.exists(os.path.join(run, "config.txt")) else ""
    check("layout: tp 1 pp 1 dp 2" in cfg, "config.txt: layout tp 1 pp 1 dp 2")
    check(re.search(r"^command: srun --mpi=pmix .*train --model .* --resume auto$", cfg, re.M) is not None,
          "config.txt: the full srun --mpi=pmix command line")
    check(re.search(r"^git: [0-9a-f]{40}", cfg, re.M) is not None, "config.txt: the git revision")
    check("OMP_NUM_THREADS=1" in cfg and "SLURM_JOB_ID=" in cfg, "config.txt: the environment")
    log = os.path.join(run, "train.jsonl")
    steps = [int(m) for m in re.findall(r'"kind": "step", "step": (\d+)', read(log))] if os.path.exists(log) else []
    check(steps == list(range(1, 7)), f"train.jsonl: steps 1..6 (got {steps})")
    ck = sorted(os.listdir(os.path.join(run, "ckpt")))
    check(ck == ["step-00000004.h5", "step-00000006.h5"], f"--ckpt-every 2 --keep 2 leaves the last two checkpoints (got {ck})")
    out = os.path.join(J.scratch, f"train-{jobid}.out")
    check(os.path.realpath(os.path.join(run, "slurm.out")) == os.path.realpath(out),
          "slurm.out links to the job's output file (default --output %x-%j.out)")
    rows = results(run)
    if check(len(rows) == 1, f"results.csv: one row (got {len(rows)})"):
        plausible(rows[0], "train", 6)
        want = plan(J.env["ONELORA_BIN"], model, "1lora", 1)
        check(rows[0]["trainable"] == want["trainable"] and rows[0]["bytes_dp"] == want["dp_bytes_per_step"],
              f"trainable and DP bytes match onelora plan ({want['trainable']}, {want['dp_bytes_per_step']})")
        check(rows[0]["global_batch"] == "4", "global_batch = 2 sequences x 1 micro-batch x DP 2")


def test_failure(J, p, bad_model):
    jobid, rc = J.finish(p, 120)
    check(rc != 0, f"a bad model path: sbatch --wait exits nonzero (got {rc})")
    out = read(os.path.join(J.scratch, f"fail-{jobid}.out"))
    cause = [l for l in out.splitlines() if l.startswith("onelora: error:") and bad_model in l]
    check(len(cause) >= 1, f"the job output names the cause in one line 'onelora: error: ... {bad_model} ...'")
    check("train.sbatch: error: onelora train failed with status" in out, "train.sbatch says the run failed")
    info = J.job(jobid)
    check(info.get("JobState") == "FAILED" and info.get("Restarts") == "0",
          f"job FAILED and not requeued (state {info.get('JobState')}, restarts {info.get('Restarts')})")


def test_layout(J, p):
    jobid, rc = J.finish(p, 120)
    out = read(os.path.join(J.scratch, f"layout-{jobid}.out"))
    check(rc != 0 and "train.sbatch: error: 2 tasks are not a multiple of --tp 3 x --pp 1" in out,
          f"--tp 3 on 2 tasks is refused before launching (exit {rc})")


def test_compare(J, p, model):
    jobid, rc = J.finish(p, 240)
    check(rc == 0, f"compare-methods.sbatch: every array task exits 0 (got {rc})")
    for i, m in enumerate(METHODS):
        run = os.path.join(J.scratch, "runs", f"compare-{jobid}_{i}-{m.replace(',', '+')}")
        if not check(os.path.isdir(run), f"array task {i}: run directory {os.path.basename(run)}"):
            continue
        rows = results(run)
        if check(len(rows) == 1 and rows[0]["method"] == m, f"{m}: one results row for method {m}"):
            plausible(rows[0], f"compare {m}", 6)
            want = plan(J.env["ONELORA_BIN"], model, m, 2)["trainable"]
            check(rows[0]["trainable"] == want, f"{m}: trainable {rows[0]['trainable']} = onelora plan's {want}")
        check(read(os.path.join(run, "experiment")).strip() == "compare", f"{m}: experiment label")


def test_scaling(J, p, table):
    jobid, rc = J.finish(p, 300)
    check(rc == 0, f"scaling.sbatch: every array task exits 0 (got {rc})")
    for i, (mode, axis, n) in enumerate(table):
        run = os.path.join(J.scratch, "runs", f"scaling-{jobid}_{i}-{mode}-{axis}{n}")
        if not check(os.path.isdir(run), f"array task {i}: run directory {os.path.basename(run)}"):
            continue
        rows = results(run)
        if not check(len(rows) == 1, f"{mode} {axis}{n}: one results row"):
            continue
        r = rows[0]
        layout = (int(r["tp"]), int(r["pp"]), int(r["dp"]))
        want = {"base": (1, 1, 1), "dp": (1, 1, n), "tp": (n, 1, 1), "pp": (1, n, 1)}[axis]
        # the single-rank problem: 2 sequences x 4 micro-batches
        batch = 8 if mode == "strong" else 8 * n
        check(layout == want and int(r["ranks"]) == n and int(r["global_batch"]) == batch,
              f"{mode} {axis}{n}: layout {layout} (want {want}), global batch {r['global_batch']} (want {batch})")
        plausible(r, f"scaling {mode} {axis}{n}", 6)


def test_preempt(J, pre, ref):
    log = os.path.join(J.scratch, "runs", f"preempt-{pre}", "train.jsonl")
    deadline, done = time.time() + 90, 0
    while time.time() < deadline and done < 5 and J.job(pre).get("JobState") in ("PENDING", "RUNNING"):
        done = len(re.findall(r'"kind": "step"', read(log))) if os.path.exists(log) else 0
        time.sleep(0.1)
    if not check(done >= 5, f"the job to preempt ran 5 steps within 90 s (ran {done}, job "
                            f"{J.job(pre).get('JobState')})"):
        return
    r = subprocess.run(["scancel", "--signal=USR1", "--batch", pre], env=J.env, capture_output=True,
                       text=True, timeout=20)
    check(r.returncode == 0, f"scancel --signal=USR1 --batch {pre} ({r.stderr.strip()})")
    t0 = time.time()
    states = (J.wait_state(pre, 180), J.wait_state(ref, 180))
    print(f"  (signal to end of the requeued job: {time.time() - t0:.1f} s)")
    check(states == ("COMPLETED", "COMPLETED"), f"both jobs COMPLETED (got {states})")
    info = J.job(pre)
    check(info.get("Restarts") == "1" and info.get("ExitCode") == "0:0",
          f"the preempted job was requeued once and exited 0 (restarts {info.get('Restarts')}, exit {info.get('ExitCode')})")
    run = os.path.join(J.scratch, "runs", f"preempt-{pre}")
    out = read(os.path.join(J.scratch, f"preempt-{pre}.out"))
    m = re.search(r"stopped by a signal after step (\d+)", out)
    if not check(m is not None and "got SIGUSR1" in out, "the batch shell forwarded SIGUSR1 and onelora stopped"):
        print(out[-3000:])
        return
    k = int(m.group(1))
    check(5 <= k < PREEMPT_STEPS, f"stopped mid-run, after step {k}")
    ck = f"step-{k:08d}.h5"
    check(re.search(rf"checkpoint \S*/{ck} ", out) is not None and os.path.exists(os.path.join(run, "ckpt", ck)),
          f"a checkpoint {ck} was written at the stop")
    check(f"requeueing job {pre}" in out, "the job script requeued the job")
    check(re.search(rf"resumed from \S*/{ck} at step {k} ", out) is not None, f"the requeued job resumed from {ck}")
    cfg = read(os.path.join(run, "config.txt"))
    check("# start 2 of run" in cfg and "restart_count 1" in cfg, "config.txt records the second start (same run directory)")
    steps = [int(s) for s in re.findall(r'"kind": "step", "step": (\d+)', read(log))]
    check(steps == list(range(1, PREEMPT_STEPS + 1)) and '"kind": "resume", "step": %d,' % k in read(log),
          f"train.jsonl: every step 1..{PREEMPT_STEPS} once, the resume at {k} recorded between "
          f"(log holds {steps[:1]}..{steps[-1:]}, {len(steps)} steps)")
    rows = results(run)
    check([r["status"] for r in rows] == ["stopped", "done"], f"results.csv: a stopped row, then a done row")
    if rows:
        plausible(rows[-1], "preempt", PREEMPT_STEPS)
    # the final adapter of the interrupted run against the uninterrupted one: same layout, and the
    # checkpoint carries the optimizer, RNG and data-loader state, so equality must be exact
    try:
        import h5py
        import numpy as np
    except ImportError as e:
        check(False, f"h5py and numpy for the checkpoint comparison ({e}; Debian: python3-h5py)")
        return
    final = f"ckpt/step-{PREEMPT_STEPS:08d}.h5"
    paths = [os.path.join(J.scratch, "runs", f"{name}-{j}", final) for name, j in (("preempt", pre), ("reference", ref))]
    if not check(all(os.path.exists(x) for x in paths), f"both runs wrote {final}"):
        return
    with h5py.File(paths[0], "r") as a, h5py.File(paths[1], "r") as b:
        for group in ("params", "adam_m", "adam_v"):
            names = sorted(a[group])
            same = names == sorted(b[group])
            diff = max((float(np.max(np.abs(a[group][n][()].astype(np.float64) - b[group][n][()])))
                        for n in names if n in b[group]), default=math.inf)
            check(same and names and all(np.array_equal(a[group][n][()], b[group][n][()]) for n in names),
                  f"{group}: {len(names)} tensors of the requeued run equal the uninterrupted run's bit for bit "
                  f"(max |diff| {diff:.3g})")


def test_study_local(root):
    """What study.sbatch decides before it needs Slurm: the grid, the range, refused options."""
    script = os.path.join(root, "jobs", "study.sbatch")
    env = dict(os.environ, **STUDY_ENV)
    r = subprocess.run([script, "--list"], env=env, capture_output=True, text=True, timeout=20)
    rows = [tuple(l.split()[1:]) for l in r.stdout.splitlines() if not l.startswith("#")]
    check(r.returncode == 0 and rows == STUDY_GRID and "--array=0-3 " in r.stdout.splitlines()[0],
          f"study.sbatch --list: the 4 runs in the documented order and --array=0-3 ({r.stdout.strip()[:300]})")
    r = subprocess.run([script, "--list"], capture_output=True, text=True, timeout=20,
                       env={k: v for k, v in os.environ.items() if not k.startswith("STUDY_")})
    n = len(r.stdout.splitlines()) - 1
    # 11 methods, 5 of them also with attn, 5 rates, 3 seeds
    check(r.returncode == 0 and n == 16 * 5 * 3 and f"--array=0-{n - 1} " in r.stdout,
          f"study.sbatch --list: the default grid of 16 x 5 x 3 = 240 runs (got {n})")
    r = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=20)
    check(r.returncode == 0 and "Usage:" in r.stdout and "STUDY_LRS" in r.stdout, "study.sbatch --help")
    for extra, want in ((dict(SLURM_ARRAY_TASK_ID="4"), "array task 4 is outside the grid of 4 runs; submit with --array=0-3"),
                        (dict(SLURM_ARRAY_TASK_ID="0", STUDY_LRS="1e-2 fast"), "STUDY_LRS: 'fast' is not a positive number"),
                        (dict(SLURM_ARRAY_TASK_ID="0"), "--lr is chosen by the array task")):
        r = subprocess.run([script, "--lr", "1"], env=dict(env, **extra), capture_output=True, text=True, timeout=20)
        check(r.returncode == 2 and f"study.sbatch: error: {want}" in r.stderr,
              f"study.sbatch refuses {extra}, --lr: '{want}' (exit {r.returncode}, {r.stderr.strip()})")


def test_study(J, p):
    jobid, rc = J.finish(p, 240)
    check(rc == 0, f"study.sbatch: every array task exits 0 (got {rc})")
    data, prepared, shape = set(), 0, set()
    for i, (m, t, lr, seed) in enumerate(STUDY_GRID):
        run = os.path.join(J.scratch, "runs", f"study-{jobid}_{i}-{m}-{t}-lr{lr}-s{seed}")
        if not check(os.path.isdir(run), f"array task {i}: run directory {os.path.basename(run)}"):
            continue
        want = f"index={i}\nmethod={m}\ntargets={t}\nlr={lr}\nseed={seed}\n"
        check(read(os.path.join(run, "study")) == want and read(os.path.join(run, "experiment")).strip() == "study",
              f"task {i}: RUN/study records the grid point, experiment label study")
        rows = results(run)
        if check(len(rows) == 1 and (rows[0]["method"], rows[0]["targets"]) == (m, t), f"task {i}: one row for {m} {t}"):
            plausible(rows[0], f"study {i}", STUDY_STEPS)
            shape.add((rows[0]["steps"], rows[0]["global_batch"], rows[0]["seq_len"]))
        cfg = read(os.path.join(run, "config.txt"))
        args = re.search(r"^command: .*$", cfg, re.M)
        args = args.group(0).split() if args else []
        opt = lambda name: args[args.index(name) + 1] if name in args else None
        check(opt("--lr") == lr and opt("--seed") == seed and opt("--eval-every") == str(STUDY_STEPS)
              and opt("--ckpt-every") == "1", f"task {i}: --lr {lr} --seed {seed}, --eval-every and --ckpt-every "
                                               f"follow --steps {STUDY_STEPS}")
        data.add(opt("--data"))
        ck = sorted(os.listdir(os.path.join(run, "ckpt")))
        check(ck == [f"step-{k:08d}.h5" for k in range(1, STUDY_STEPS + 1)], f"task {i}: a checkpoint per step (got {ck})")
        prepared += read(os.path.join(J.scratch, f"study-{jobid}_{i}.out")).count("study.sbatch: tokenizing")
    check(len(shape) == 1, f"every run has the same steps x global batch x seq len (got {shape})")
    d = os.path.join(J.scratch, "runs", "study-data")
    files = sorted(f for f in os.listdir(d) if f != "lock") if os.path.isdir(d) else []
    check(prepared == 1 and len(files) == 1 and data == {os.path.join(d, files[0])},
          f"the text was tokenized once, by one of 4 tasks that started together, and every run read it "
          f"(tokenized {prepared} times; study-data holds {files}; runs read {data})")


def test_analysis(J, runs, out):
    r = subprocess.run([os.path.join(J.root, "jobs", "analysis.sh"), runs, "--out", out],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, ONELORA_BIN=J.env["ONELORA_BIN"]))
    if not check(r.returncode == 0, f"analysis.sh exits 0 ({(r.stdout + r.stderr).strip()[-500:]})"):
        return
    for name in ("methods", "memory", "scaling-strong", "scaling-weak"):
        path = os.path.join(out, name + ".png")
        size = png_size(path) if os.path.exists(path) else None
        check(size == (1000, 650) and os.path.getsize(path) > 5000,
              f"{name}.png is a 1000x650 PNG with content (got {size})")
    report = read(os.path.join(out, "report.md"))
    for m in METHODS:
        check(f"| {m} |" in report, f"report.md has a row for {m}")
    check("## Strong scaling" in report and "## Weak scaling" in report, "report.md has both scaling tables")
    with open(os.path.join(out, "methods.dat")) as f:
        labels = [l for l in f if not l.startswith("#")]
    check(len(labels) == len(METHODS), f"the bubble plot shows the {len(METHODS)} compared methods (got {len(labels)})")
    # the study: its plots, a table row per configuration, the claims, the trajectories
    for name in ("study", "study-lr"):
        path = os.path.join(out, name + ".png")
        size = png_size(path) if os.path.exists(path) else None
        check(size == (1000, 650) and os.path.getsize(path) > 5000, f"{name}.png is a 1000x650 PNG with content (got {size})")
    section = report.split("## The study", 1)[-1].split("\n## ", 1)[0]
    check(re.search(r"^\| 1lora \| all \| 3e-[23] \*edge\* \| \d\.\d{4} \| 1 \| 2 \| 9600 \|", section, re.M) is not None
          and re.search(r"^\| lora \| all \| 3e-[23] \*edge\* \| \d\.\d{4} \| 1 \| 2 \| 18496 \|", section, re.M) is not None,
          "report.md: the study's table has a row per method (best lr at the edge of a 2-rate sweep, one seed, trainable)")
    claims = report.split("## The paper's claims, checked", 1)
    check(len(claims) == 2 and "1. 1LoRA within noise of LoRA r=1" in claims[1] and "3. `1lora,norms` better than 1lora: "
          "not checked" in claims[1], "report.md: the claims section, checked where the study has the methods")
    with open(os.path.join(out, "study-lr.dat")) as f:
        blocks = [b for b in f.read().split("\n\n\n") if b.strip()]
    check(len(blocks) == 2 and all(len([l for l in b.splitlines() if not l.startswith("#")]) == 2 for b in blocks),
          f"the learning-rate plot has 2 curves of 2 rates (got {len(blocks)} blocks)")
    if os.path.exists(os.path.join(J.root, "jobs", "trajectory.sh")):
        for name in ("1lora-all", "lora-all"):
            path = os.path.join(out, "trajectory", name, "trajectory.png")
            size = png_size(path) if os.path.exists(path) else None
            check(size is not None and os.path.getsize(path) > 5000 and f"(trajectory/{name}/trajectory.png)" in report,
                  f"trajectory/{name}/trajectory.png is a PNG with content, shown in report.md (got {size})")
    else:
        check("skipped: jobs/trajectory.sh is not in this checkout" in report,
              "report.md notes that the trajectories were skipped (no jobs/trajectory.sh)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    a = ap.parse_args()
    onelora, root, workdir = (os.path.abspath(x) for x in (a.onelora, a.root, a.workdir))
    model = os.path.join(root, "jobs", "data", "base-kjv.h5")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("slurm test: terminated"))
    t_start = time.time()
    cluster = Cluster(os.path.join(workdir, "cluster"))
    try:
        try:
            cluster.start()
        except ClusterError as e:
            sys.exit(f"slurm test: FAIL: the local Slurm cluster did not start: {e}")
        print(f"cluster up in {time.time() - t_start:.1f} s (SLURM_CONF={cluster.conf})", flush=True)
        scratch = os.path.join(workdir, "scratch")
        subprocess.run(["rm", "-rf", scratch], check=True)
        os.makedirs(scratch)
        data = os.path.join(scratch, "data.h5")
        text = [os.path.join(root, "README.md")] + [os.path.join(root, "docs", f) for f in sorted(os.listdir(os.path.join(root, "docs"))) if f.endswith(".md")]
        subprocess.run([onelora, "tokenize", "--in"] + text + ["--out", data, "--val-fraction", "0.1"],
                       check=True, timeout=60, stdout=subprocess.DEVNULL)
        J = Jobs(cluster, root, onelora, scratch)
        base = ["--model", model, "--data", data]

        # the preemption pair first, so that the scheduler starts them before the arrays
        pre_args = base + ["--method", "1lora,norms", "--steps", str(PREEMPT_STEPS), "--micro-batch", "2",
                           "--seq-len", "32", "--lr", "3e-3", "--seed", "3",
                           "--eval-every", str(PREEMPT_STEPS), "--eval-batches", "1"]
        pre = J.submit("train.sbatch", ["-J", "preempt"], pre_args, wait=False)
        ref = J.submit("train.sbatch", ["-J", "reference"], pre_args, wait=False)
        waits = {
            "train": J.submit("train.sbatch", ["-J", "train"], base + TINY + ["--ckpt-every", "2", "--keep", "2"], True),
            "failure": J.submit("train.sbatch", ["-J", "fail"], ["--model", "/nonexistent/model.h5", "--data", data], True),
            "layout": J.submit("train.sbatch", ["-J", "layout"], base + TINY + ["--tp", "3"], True),
            "compare": J.submit("compare-methods.sbatch", [], base + TINY + ["--rank", "2"], True),
            "study": J.submit("study.sbatch", ["--array=0-3"], base[:2] + ["--steps", str(STUDY_STEPS), "--micro-batch", "2",
                              "--seq-len", "32", "--eval-batches", "1"], True, env=dict(STUDY_ENV, STUDY_TEXT=" ".join(text))),
            "scaling": J.submit("scaling.sbatch", ["--array=0-13", "--ntasks=4"],
                                base + TINY + ["--micro-batches", "4"], True, env={"SCALING_SIZES": "2 4"}),
        }
        table = []
        for mode in ("strong", "weak"):
            table.append((mode, "base", 1))
            table += [(mode, axis, n) for axis in ("dp", "tp", "pp") for n in (2, 4)]
        tests = [("preempt", lambda: test_preempt(J, pre, ref)),
                 ("train", lambda: test_train(J, waits["train"], model)),
                 ("failure", lambda: test_failure(J, waits["failure"], "/nonexistent/model.h5")),
                 ("layout", lambda: test_layout(J, waits["layout"])),
                 ("compare", lambda: test_compare(J, waits["compare"], model)),
                 ("study", lambda: (test_study_local(root), test_study(J, waits["study"]))),
                 ("scaling", lambda: test_scaling(J, waits["scaling"], table)),
                 ("analysis", lambda: test_analysis(J, os.path.join(scratch, "runs"), os.path.join(scratch, "report")))]
        for name, fn in tests:
            t0 = time.time()
            print(f"[{name}]", flush=True)
            try:
                fn()
            except Exception as e:  # a test that cannot run is a failure, and the others still run
                check(False, f"{name}: {type(e).__name__}: {e}")
            print(f"  ({name}: {time.time() - t0:.1f} s)", flush=True)
    finally:
        cluster.stop()
    print(f"slurm test: {len(failures)} failed check(s) in {time.time() - t_start:.0f} s")
    for f in failures:
        print(f"  FAILED: {f}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
