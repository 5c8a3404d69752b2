#!/usr/bin/python3
"""--recompute changes no bit of training (DESIGN §4): for every method, and for each layout
TPxPP given (1x1 on one process; under --mpirun e.g. 2x1, 1x2, 2x2), 2 steps of `onelora train`
with and without --recompute on the same model and data must give

- the same final checkpoint, byte for byte: every dataset (params, adam_m, adam_v, frozen, and
  whatever else the file holds) and every root attribute (the step's loss in full double
  precision among them);
- the same log: per step the loss, grad_norm, lr and the DP, PP and backward TP bytes, and the
  validation losses, exactly;
- the TP forward bytes of the extra all-reduces the recomputation repeats, exactly: each block
  of the stage but its last runs its forward again, with one all-reduce of (N, D) floats for o
  and one for down (and DoRA one of D floats per row-parallel layer for its row norms), per
  micro-batch; zero extra bytes without TP;
- fewer activation bytes kept (the "activations kept" of the start-up line).

Why exact equality is the right tolerance: the recomputed forward runs the same kernels on the
same shapes with the same inputs (the kept block input xs[l] and the same weights) in the same
order, and BLAS and the OpenMP loops partition work by shape and thread count, never by timing;
the MPI all-reduces see the same sizes on the same communicators. So every float is reproduced
exactly, and any difference, even one unit in the last place, means that backward read a stale or
wrong buffer (another layer's activations left in the shared slot, a half-refilled saved slot), a
bug that a tolerance could hide when its effect is small.

The comparison is not vacuous: the same comparison function must report as different a run with
another --seed (once, on the first layout) and, for each layout, a copy of the reference state
with one float of one Adam moment moved by one ulp, and one with a step's logged loss changed. Once per invocation (on one
process) `onelora bench --recompute` is compared with `bench` the same way, which also covers
bench's steps timed with the adapters detached.

Prints PASS/FAIL per case; exits nonzero on any failure."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np

METHODS = ["1lora", "lora", "dora", "vera", "mora", "mora6", "bitfit", "norms", "full", "1lora,norms"]
LAYERS, DIM, B, T, M, STEPS = 4, 64, 2, 32, 2, 2  # the tiny preset with 4 layers; N = B*T per micro-batch


def run(argv, env):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=300,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def outcome(ckdir, log):
    """Everything a run leaves that recompute must not change: name -> value. TP forward bytes
    are returned apart (recompute adds to them), per step."""
    state, tp_fwd = {}, {}
    with h5py.File(os.path.join(ckdir, "step-%08d.h5" % STEPS), "r") as f:
        def add(name, obj):
            if isinstance(obj, h5py.Dataset):
                state["/" + name] = (obj.dtype.str, obj.shape, obj[...].tobytes())
        f.visititems(add)
        for k, v in f.attrs.items():
            state["@" + k] = repr(v.tolist() if isinstance(v, np.ndarray) else v)
    with open(log) as fp:
        for rec in map(json.loads, fp):
            if rec["kind"] == "step":
                for k in ("loss", "grad_norm", "lr", "bytes_dp", "bytes_pp", "bytes_tp_bwd"):
                    state["log.step%d.%s" % (rec["step"], k)] = rec[k]
                tp_fwd[rec["step"]] = rec["bytes_tp_fwd"]
            elif rec["kind"] == "eval":
                state["log.eval%d.val_loss" % rec["step"]] = rec["val_loss"]
    return state, tp_fwd


def differences(a, b):
    """The names whose values differ (or exist in one only): the one comparison of this test."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def kept_mib(out):
    m = re.search(r"activations kept ([0-9.]+) MiB", out)
    return float(m.group(1)) if m else None


def one_ulp_off(state):
    """A copy of state with the first float of the first Adam v dataset one ulp larger."""
    name = next(k for k in sorted(state) if k.startswith("/adam_v/"))
    dtype, shape, raw = state[name]
    x = np.frombuffer(raw, dtype=dtype).copy()
    x[0] = np.nextafter(x[0], x.dtype.type(np.inf))  # in the dataset's own precision
    return dict(state, **{name: (dtype, shape, x.tobytes())}), name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mpirun", help="run the layouts under this mpirun")
    ap.add_argument("--layouts", default="1x1", help="comma list of TPxPP")
    ap.add_argument("--methods", default=";".join(METHODS), help="semicolon list")
    ap.add_argument("--bench", action="store_true", help="also compare bench --recompute with bench")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = lambda n: os.path.join(a.workdir, n)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_mpi_yield_when_idle="1")
    if a.mpirun:
        env["OMP_NUM_THREADS"] = "1"  # several ranks share the cores

    with open(w("text.txt"), "wb") as f:
        f.write(bytes(np.random.default_rng(7).integers(0, 256, 16000, dtype=np.uint8)))
    for argv in (["tokenize", "--in", w("text.txt"), "--out", w("d.h5"), "--val-fraction", "0.2"],
                 ["init", "--preset", "tiny", "--layers", str(LAYERS), "--seed", "3", "--out", w("m.h5")]):
        rc, out = run([a.onelora] + argv, env)
        if rc != 0:
            print("FAIL setup: onelora %s: %s" % (argv[0], out.strip()[-500:]))
            return 1
    with h5py.File(w("m.h5"), "r") as f:
        assert int(f.attrs["dim"]) == DIM and int(f.attrs["n_layers"]) == LAYERS

    failures = count = 0

    def report(ok, name, detail):
        nonlocal failures, count
        count += 1
        failures += 0 if ok else 1
        print("%s %s: %s" % ("PASS" if ok else "FAIL", name, detail), flush=True)

    def train(cmd, method, tp, pp, tag, extra=()):
        """Runs `onelora cmd` for 2 steps; returns (output, state, tp_fwd) or None on failure."""
        ckdir = w("ck-" + tag)
        files = ["--model", w("m.h5"), "--data", w("d.h5")] if cmd == "train" else ["--layers", str(LAYERS)]
        argv = [a.onelora, cmd] + files + [
            "--method", method, "--targets", "all", "--rank", "2", "--steps", str(STEPS),
            "--seq-len", str(T), "--micro-batch", str(B), "--micro-batches", str(M), "--lr", "0.01",
            "--seed", "5", "--eval-every", str(STEPS), "--eval-batches", "1", "--tp", str(tp),
            "--pp", str(pp), "--ckpt-dir", ckdir, "--log", ckdir + ".jsonl"] + list(extra)
        if a.mpirun:
            argv = [a.mpirun, "-np", str(tp * pp)] + argv
        rc, out = run(argv, env)
        if rc != 0:
            report(False, tag, "the run failed: " + out.strip()[-500:])
            return None
        return (out,) + outcome(ckdir, ckdir + ".jsonl")

    def compare(name, method, plain, recomputed, tp, pp):
        (out0, s0, f0), (out1, s1, f1) = plain, recomputed
        diff = differences(s0, s1)
        # the repeated forward all-reduces of rank 0's stage (pipeline stage 0)
        stage_layers = LAYERS // pp + (1 if LAYERS % pp else 0)
        per_block = 2 * B * T * DIM + (2 * DIM if "dora" in method.split(",") else 0)
        want = {s: f0[s] + (stage_layers - 1) * M * per_block * 4 * (tp > 1) for s in f0}
        k0, k1 = kept_mib(out0), kept_mib(out1)
        ok = not diff and f1 == want and k0 is not None and k1 is not None and k1 < k0
        report(ok, name, "%d values compared, %d differ%s; TP forward bytes/step %s (want %s); "
               "activations kept %s -> %s MiB" % (len(s0), len(diff), (" (" + ", ".join(diff[:5]) + ")")
                                                  if diff else "", f1.get(1), want.get(1), k0, k1))

    seed_done = False
    for layout in a.layouts.split(","):
        tp, pp = (int(v) for v in layout.split("x"))
        reference = None
        for method in a.methods.split(";"):
            tag = "%s.%s" % (method.replace(",", "+"), layout)
            plain = train("train", method, tp, pp, tag)
            recomputed = train("train", method, tp, pp, tag + ".recompute", ["--recompute"])
            if plain and recomputed:
                compare(tag, method, plain, recomputed, tp, pp)
                reference = reference or (method, plain)
        if reference is None:
            continue
        # the same comparison must see a different seed (a real run, on the first layout), one
        # ulp, and one logged loss
        method, (_, state, _) = reference
        other = None if seed_done else train("train", method, tp, pp, "%s.%s.seed" % (
            method.replace(",", "+"), layout), ["--seed", "6"])
        seed_done = True
        if other:
            diff = differences(state, other[1])
            report(bool(diff) and any(k.startswith("/params/") for k in diff), "self-test.seed." + layout,
                   "--seed 6 against --seed 5 (%s): %d values differ" % (method, len(diff)))
        nudged, name = one_ulp_off(state)
        report(differences(state, nudged) == [name], "self-test.ulp." + layout,
               "one ulp in %s reported as %s" % (name, differences(state, nudged)))
        key = "log.step%d.loss" % STEPS
        changed = dict(state, **{key: state[key] + 1e-8})
        report(differences(state, changed) == [key], "self-test.loss." + layout,
               "the logged loss + 1e-8 reported as %s" % differences(state, changed))

    if a.bench:  # bench's own loop, its frozen-twin steps (adapters detached) included
        plain = train("bench", "lora", 1, 1, "bench.lora")
        recomputed = train("bench", "lora", 1, 1, "bench.lora.recompute", ["--recompute"])
        if plain and recomputed:
            compare("bench.lora", "lora", plain, recomputed, 1, 1)
    print("%d passed, %d failed" % (count - failures, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
