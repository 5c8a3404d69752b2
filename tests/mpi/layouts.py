#!/usr/bin/python3
"""Every parallel layout against the single-rank result (DESIGN §5), by quantities that do not
depend on which BLAS kernels the CPU selects (tests/mpi/equivalence.py gives the error model).

For each method the one-rank reference runs 2 steps of a global batch of 4 sequences as 4
micro-batches, with a checkpoint after each. Then, for each layout TPxPPxDP under mpirun:

- step 1 from the init: its flat gradient (from adam_m) and its loss;
- step 2 resumed from the reference's own step-1 checkpoint (so both start from the same state,
  in which LoRA's B and the other zero-initialised factors are nonzero and every term of every
  gradient is exercised): its gradient and its loss;

each within the bound of equivalence.py for that layout, and

- the DP bytes per step of rank 0: 4 bytes per trainable value that world rank 0 (pipeline stage
  0, tensor shard 0) holds, computed here from the reference checkpoint's tensor list, the
  pipeline's layer split and docs/PARALLEL.md's placement of each tensor; 0 with one replica;
- TP bytes per step nonzero exactly when TP > 1.

Proof that the comparison can fail: for every case, each gradient tensor changed by 1e-3
relative and a sign flip of one shard of the largest tensor must fail it (equivalence.self_test);
and once per invocation a real run whose second replica reads its data slice one sequence late (a
data file whose samples 2 and 3 are the reference's samples 3 and 4) must fail it.

Layouts are given as TPxPPxDP[g] (g: the GPipe schedule instead of 1F1B). Prints PASS/FAIL per
case; exits nonzero on any failure."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import equivalence as eq  # noqa: E402

GLOBAL_BATCH = 4
SEQ_LEN = 16
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW_PARALLEL = ("o_proj", "down_proj")


def run(argv, env):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=300,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def steps(log):
    """The step records of a --log file, by step."""
    with open(log) as f:
        recs = [json.loads(l) for l in f]
    return {r["step"]: r for r in recs if r.get("kind") == "step"}


def stage0_layers(n_layers, pp):
    """The layers of pipeline stage 0: contiguous ranges, the first L mod pp stages one more."""
    return n_layers // pp + (1 if n_layers % pp else 0)


def rank0_values(name, shape, tp, pp, n_layers):
    """How many values of the trainable tensor `name` (full logical shape) world rank 0 holds:
    docs/PARALLEL.md's placements on tensor shard 0 of pipeline stage 0."""
    size = int(np.prod(shape))
    parts = name.split(".")
    if name.startswith("model.layers."):
        if int(parts[2]) >= stage0_layers(n_layers, pp):
            return 0
    elif name.startswith("model.embed_tokens."):
        return size // tp  # vocab-parallel rows
    elif name.startswith("lm_head."):
        return size // tp if pp == 1 else 0
    elif name == "model.norm.weight":
        return size if pp == 1 else 0
    else:
        raise ValueError("no placement known for " + name)
    if parts[-2].endswith("layernorm"):
        return size  # RMSNorm weights are replicated
    proj, param = parts[-2], parts[-1]
    column = proj in COLUMN_PARALLEL
    if not column and proj not in ROW_PARALLEL:
        raise ValueError("no placement known for " + name)
    rows_sharded = {"onelora_b", "bias", "dora_m", "vera_lambda_b"}  # [d]: sharded like W's rows
    if param in rows_sharded:
        return size // tp if column else size
    if param == "weight":  # full fine-tuning: W's own shard
        return size // tp
    if param == "lora_A":  # [r, k]: replicated on a column-parallel layer, columns sharded on a row one
        return size if column else size // tp
    if param == "lora_B":  # [d, r]: rows sharded on a column-parallel layer, replicated on a row one
        return size // tp if column else size
    if param in ("vera_lambda_d", "mora_M", "test_scalar_c"):
        return size  # replicated
    raise ValueError("no placement known for " + name)


def expected_dp_bytes(ckpt, tp, pp, dp):
    if dp == 1:
        return 0
    with h5py.File(ckpt, "r") as f:
        n_layers = int(f.attrs["n_layers"])
        return 4 * sum(rank0_values(k, f["params"][k].shape, tp, pp, n_layers) for k in f["params"])


def shifted_data(src, dst, T, G, dp):
    """A copy of data file src in which the second replica's slice of step 1 starts one sequence
    late: unshuffled sample j reads tokens [j T, j T + T + 1) (DESIGN §6), so samples
    G/dp .. G-1 become the original samples G/dp + 1 .. G."""
    with h5py.File(src, "r") as f:
        train, val, vocab = f["train"][...], f["val"][...], f.attrs["vocab_size"]
    first = G // dp
    train[first * T:G * T + 1] = train[(first + 1) * T:(G + 1) * T + 1].copy()
    with h5py.File(dst, "w") as f:
        f.create_dataset("train", data=train)
        f.create_dataset("val", data=val)
        f.attrs["vocab_size"] = vocab


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
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               OMPI_MCA_mpi_yield_when_idle="1")

    # the test model has H=4 query heads and Hkv=2 kv heads (GQA); a TP of 4 needs Hkv=4, so
    # layouts whose TP does not divide 2 run on an otherwise identical model with Hkv=4, against
    # that model's own one-rank reference
    def model_for(tp):
        kv = 2 if 2 % tp == 0 else 4
        path = w("m.h5" if kv == 2 else "m-kv%d.h5" % kv)
        if not os.path.exists(path):
            rc, _, err = run([a.onelora, "init", "--preset", "tiny", "--seed", "3", "--dim", "64",
                              "--heads", "4", "--kv-heads", str(kv), "--ffn", "96", "--layers",
                              "4", "--out", path], env)
            if rc != 0:
                raise RuntimeError("init: " + err.strip()[-300:])
        return path

    try:
        model_for(1)
    except RuntimeError as e:
        print("FAIL " + str(e))
        return 1
    rng = np.random.default_rng(0)
    with h5py.File(w("d.h5"), "w") as f:
        f.create_dataset("train", data=rng.integers(0, 256, 20000, dtype=np.uint16))
        f.create_dataset("val", data=rng.integers(0, 256, 4000, dtype=np.uint16))
        f.attrs["vocab_size"] = np.int64(256)

    failures = count = 0
    data_check_done = False
    for method in a.methods.split(";"):
        tag = method.replace(",", "+")
        refs = {}  # model -> its one-rank reference directory, or None when it failed

        def train(model, ckdir, n_steps, micro_batches, extra=(), data=None):
            return ["train", "--model", model, "--data", data or w("d.h5"), "--method", method,
                    "--targets", "all", "--steps", str(n_steps), "--seq-len", str(SEQ_LEN),
                    "--no-shuffle", "--clip", "0", "--lr", "0.01", "--rank", "2", "--seed", "5",
                    "--micro-batch", "1", "--micro-batches", str(micro_batches),
                    "--ckpt-dir", ckdir, "--ckpt-every", "1", "--log", ckdir + ".jsonl"] + list(extra)

        for layout in a.layouts.split(","):
            gpipe = layout.endswith("g")
            tp, pp, dp = (int(v) for v in layout.rstrip("g").split("x"))
            name, count = "%s.%s" % (tag, layout), count + 1
            try:
                model = model_for(tp)
            except RuntimeError as e:
                print("FAIL %s: %s" % (name, e))
                failures += 1
                continue
            if model not in refs:
                ref = w("ref-%s-%s" % (tag, os.path.basename(model)[:-3]))
                rc, _, err = run([a.onelora] + train(model, ref, 2, GLOBAL_BATCH), env)
                if rc != 0:
                    print("FAIL %s: the one-rank reference failed: %s" % (tag, err.strip()[-500:]))
                refs[model] = ref if rc == 0 else None
            ref = refs[model]
            if ref is None:
                failures += 1
                continue
            ck1, ck2 = os.path.join(ref, "step-00000001.h5"), os.path.join(ref, "step-00000002.h5")
            layout_args = ["--tp", str(tp), "--pp", str(pp)] + (["--pp-schedule", "gpipe"] if gpipe else [])
            mpi = [a.mpirun, "-np", str(tp * pp * dp), a.onelora]
            first, second = w("par1-" + name), w("par2-" + name)
            rc, _, err = run(mpi + train(model, first, 1, GLOBAL_BATCH // dp, layout_args), env)
            if rc == 0:
                rc, _, err = run(mpi + train(model, second, 2, GLOBAL_BATCH // dp,
                                             layout_args + ["--resume", ck1]), env)
            if rc != 0:
                print("FAIL %s: the parallel run failed: %s" % (name, err.strip()[-500:]))
                failures += 1
                continue

            cfg = eq.model_config(ck1)
            tokens = GLOBAL_BATCH * SEQ_LEN
            eps, eps_loss = eq.layout_eps(cfg, tp, tokens), eq.layout_eps(cfg, tp, tokens, True)
            g1_ref, g2_ref = eq.gradient(ck1), eq.gradient(ck2, ck1)
            d1, t1, _ = eq.compare_gradients(g1_ref, eq.gradient(os.path.join(first, "step-00000001.h5")), eps)
            d2, t2, _ = eq.compare_gradients(g2_ref, eq.gradient(os.path.join(second, "step-00000002.h5"), ck1),
                                             eps)
            lref, l1, l2 = steps(ref + ".jsonl"), steps(first + ".jsonl"), steps(second + ".jsonl")
            dl = eq.compare_losses([lref[1]["loss"], lref[2]["loss"]],
                                   [l1.get(1, {}).get("loss"), l2.get(2, {}).get("loss")], eps_loss)
            missed, tried = [], 0
            for g in (g1_ref, g2_ref):
                m, n = eq.self_test(g, eps, shard_rows=max(tp, 2))
                missed, tried = missed + m, tried + n

            # communication accounting (the log is rank 0's)
            want = expected_dp_bytes(ck1, tp, pp, dp)
            got = [l1[1]["bytes_dp"], l2[2]["bytes_dp"]]
            tpb = [l1[1]["bytes_tp_fwd"] + l1[1]["bytes_tp_bwd"], l2[2]["bytes_tp_fwd"] + l2[2]["bytes_tp_bwd"]]
            tp_ok = all(b > 0 for b in tpb) if tp > 1 else all(b == 0 for b in tpb)
            ok = d1 <= 1 and d2 <= 1 and dl <= 1 and not missed and got == [want] * 2 and tp_ok
            failures += 0 if ok else 1
            print("%s %s: gradient diff of its bound (eps %.1e) step 1 %.3f (%s), step 2 %.3f (%s); "
                  "loss %.3f of its bound; self-test caught %d/%d%s; DP bytes/step %s (want %d); "
                  "TP bytes/step %s" % ("PASS" if ok else "FAIL", name, eps, d1, t1, d2, t2, dl,
                                        tried - len(missed), tried,
                                        " MISSED " + "; ".join(missed) if missed else "", got[:1], want,
                                        tpb[:1]), flush=True)

            # once, with a method that trains something: the same comparison must fail when a
            # replica reads the wrong data slice
            if dp > 1 and not data_check_done and ok and g1_ref[0]:
                data_check_done = True
                count += 1
                wrong = w("d-shifted.h5")
                shifted_data(w("d.h5"), wrong, SEQ_LEN, GLOBAL_BATCH, dp)
                bad = w("par-shifted-" + name)
                rc, _, err = run(mpi + train(model, bad, 1, GLOBAL_BATCH // dp, layout_args, wrong), env)
                db = (eq.compare_gradients(g1_ref, eq.gradient(os.path.join(bad, "step-00000001.h5")), eps)[0]
                      if rc == 0 else 0.0)
                caught = rc == 0 and db > 1
                failures += 0 if caught else 1
                print("%s %s.data-off-by-one: replica %d reading its slice one sequence late gives a "
                      "gradient diff of %.3g of its bound (must exceed 1)%s"
                      % ("PASS" if caught else "FAIL", name, dp - 1, db,
                         "" if rc == 0 else ": the run failed: " + err.strip()[-300:]), flush=True)
    print("%d passed, %d failed" % (count - failures, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
