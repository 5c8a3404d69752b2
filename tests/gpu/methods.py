#!/usr/bin/python3
"""--device cuda against --device cpu for every method, by well-conditioned quantities (the
gradient of a step taken from a state both runs share, and the loss), on a tiny model:

- f32 weights: the GPU computes the same mathematics with every sum in another order (cuBLAS's
  GEMM kernels, the flash-style attention's online softmax, the kernels' fixed-order
  reductions; f32 throughout, no TF32). That is the reordering a TP layout makes, so the bound
  is tests/mpi/equivalence.py's TP model: eps = lambda sqrt(c n) u, u = 2^-24, n the longest
  sum, c = 2 (9 L + 2) reductions on a gradient's path (the loss: forward only). Compared: the
  gradient of step 1 (from the init) and of step 2 taken by both devices from the cpu's step-1
  checkpoint (so the GPU's checkpoint load is on the path), each recovered from adam_m, and the
  two losses.
- bf16 weights (every method but DoRA, which reads W's rows): the GPU rounds each GEMM's f32
  input (the activations forward, the output gradient backward) to bf16 where the CPU widens W
  instead; a per-term relative perturbation |delta| <= 2^-8 in the c_w = 2 (7 L + 2) GEMMs with
  2-byte weights, added in quadrature: tests/cli/weights_dtype.py's eps_w = lambda sqrt(c_w) u_w,
  plus the f32 reordering above.
- TP = 2 over two ranks on the one GPU against TP = 1 on it, for every communication path the
  build and the MPI library offer (ONELORA_COMM=staged, nccl, cuda-aware): the TP model again.

Self-tests: the f32 comparison must fail for a gradient perturbed by 1e-3 in any tensor
(equivalence.self_test) and for the run of another data order (--seed).

Exits 77 when no GPU is usable (a build without CUDA, or no device). Prints PASS/FAIL per case
and a one-line summary."""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
sys.path.insert(0, os.path.join(HERE, "..", "mpi"))
import clitest as ct  # noqa: E402
import equivalence as eq  # noqa: E402
from weights_dtype import U_W, rounding_eps  # noqa: E402

METHODS = ["none", "full", "norms", "1lora", "1lora,norms", "1lora-random", "lora", "dora", "vera",
           "mora", "mora6", "bitfit"]
B_SEQ, T = 4, 32
WORKERS = int(os.environ.get("ONELORA_GPU_TEST_WORKERS", "4"))


def main():
    a, w = ct.setup(mpirun_required=True)
    B = a.onelora
    dev = os.environ.get("ONELORA_GPU_TEST_DEVICE", "cuda")  # cpu-staged: a dry run of this script
    rc, _, err = ct.run([B, "bench", "--preset", "tiny", "--seq-len", "16", "--steps", "1",
                         "--device", dev], ct.ENV)
    if rc != 0:
        print("SKIP: no usable GPU: " + err.strip()[-300:])
        return 77
    rc, _, err = ct.run([B, "init", "--preset", "tiny", "--seed", "5", "--out", w("m.h5")], ct.ENV)
    if rc != 0:
        print("FAIL init: " + err)
        return 1
    ct.write_tokens(w("d.h5"), 256, 20000, 2000)
    cfg = eq.model_config(w("m.h5"))
    tokens = B_SEQ * T
    eps, eps_loss = eq.layout_eps(cfg, 2, tokens), eq.layout_eps(cfg, 2, tokens, forward_only=True)

    def train(tag, method, device, dtype="f32", tp=1, seed=1234, resume=None, comm=None):
        """(step-1 gradient or None when resumed, step-2 gradient from `resume` or from its own
        step 1, its losses, its output) or None when it failed."""
        d = w("ck-" + tag)
        shutil.rmtree(d, ignore_errors=True)
        argv = [B, "train", "--model", w("m.h5"), "--data", w("d.h5"), "--method", method,
                "--rank", "2", "--steps", "2", "--micro-batch", str(B_SEQ), "--seq-len", str(T),
                "--lr", "1e-2", "--schedule", "constant", "--clip", "0", "--ckpt-dir", d,
                "--ckpt-every", "1", "--log", w(tag + ".jsonl"), "--weights-dtype", dtype,
                "--tp", str(tp), "--seed", str(seed), "--device", device]
        if resume:
            os.makedirs(d)
            argv += ["--resume", resume]
        if tp > 1:
            argv = [a.mpirun, "-n", str(tp)] + argv
        env = dict(ct.ENV)
        if comm:
            env["ONELORA_COMM"] = comm
        rc, out, err = ct.run(argv, env)
        if rc != 0:
            print("  (train %s failed: %s)" % (tag, err.strip()[-400:]))
            return None
        with open(w(tag + ".jsonl")) as f:
            loss = [r["loss"] for r in map(json.loads, f) if r["kind"] == "step"]
        ck1, ck2 = os.path.join(d, "step-00000001.h5"), os.path.join(d, "step-00000002.h5")
        g2 = eq.gradient(ck2, resume or ck1)
        return (None if resume else eq.gradient(ck1)), g2, loss, out + err

    def compare(name, ref, got, e, e_loss, steps=(0, 1)):
        """(name, ok, detail) of a comparison, for ct.check."""
        if ref is None or got is None:
            return name, False, "a run failed"
        worst, where = 0.0, ""
        for s in steps:
            if ref[s] is None or got[s] is None:
                continue
            d, tensor, _ = eq.compare_gradients(ref[s], got[s], e)
            if d > worst:
                worst, where = d, "step %d %s" % (s + 1, tensor)
        lw = eq.compare_losses(ref[2][-len(got[2]):], got[2], e_loss)
        return name, worst <= 1 and lw <= 1, "gradient %.3g of its bound (%s), loss %.3g of its " \
            "bound (eps %.2e)" % (worst, where, lw, e)

    def against(ref_tag, tag, method, device, **kw):
        """The run's own step 1, and its step 2 taken from ref_tag's step-1 checkpoint (a state
        both share: after an AdamW step the two states differ by more than rounding)."""
        own = train(tag, method, device, **kw)
        ck1 = os.path.join(w("ck-" + ref_tag), "step-00000001.h5")
        resumed = train(tag + "-resumed", method, device, resume=ck1, **kw) if own else None
        return (own[0], resumed[1], own[2][:1] + resumed[2][-1:], own[3]) if resumed else None

    def method_cases(method):
        """Every comparison of one method, as (name, ok, detail) rows."""
        tag, rows = method.replace(",", "+"), []
        cpu = train(tag + "-cpu", method, "cpu")
        got = against(tag + "-cpu", tag + "-cuda", method, dev) if cpu else None
        rows.append(compare("f32.%s" % tag, cpu, got, eps, eps_loss))
        if method == "1lora" and cpu:
            missed, tried = eq.self_test(cpu[0], eps)
            rows.append(("selftest.perturbed_gradient", tried > 0 and not missed,
                         "missed %s of %d" % (missed, tried)))
            other = train(tag + "-cuda-other-data", method, dev, seed=99)
            worst = eq.compare_gradients(cpu[0], other[0], eps)[0] if other else 0.0
            rows.append(("selftest.other_data", worst > 1, "%.3g of the bound" % worst))
        if method != "dora" and cpu:
            e_b = rounding_eps(cfg, "bf16") + eps
            e_bl = rounding_eps(cfg, "bf16", True) + eps_loss
            cpu_b = train(tag + "-cpu-bf16", method, "cpu", "bf16")
            gpu_b = against(tag + "-cpu-bf16", tag + "-cuda-bf16", method, dev, dtype="bf16") if cpu_b else None
            rows.append(compare("bf16.%s" % tag, cpu_b, gpu_b, e_b, e_bl))
        return rows

    # the methods four at a time (each run is small; the GPU and the host's cores have room)
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for rows in pool.map(method_cases, METHODS):
            for row in rows:
                ct.check(*row)

    # TP = 2 on the one GPU, every path there is
    paths = ["staged", "nccl", "cuda-aware"]
    for method in ("1lora", "lora", "dora"):
        ref = train(method + "-cuda-tp1", method, dev)
        for comm in paths:
            got = against(method + "-cuda-tp1", "%s-cuda-tp2-%s" % (method, comm), method, dev, tp=2,
                          comm=comm) if ref else None
            if got is None and comm != "staged":  # a path this build or MPI lacks says so
                probe = subprocess.run([a.mpirun, "-n", "2", B, "bench", "--preset", "tiny", "--seq-len",
                                        "16", "--steps", "1", "--tp", "2", "--device", dev],
                                       env=dict(ct.ENV, ONELORA_COMM=comm), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                # NCCL refuses two ranks of one communicator on one GPU ("Duplicate GPU detected")
                why = [ln for ln in probe.stderr.splitlines() if ln.startswith("onelora: error:")
                       and ("ONELORA_COMM=" in ln or "ncclCommInitRank" in ln)]
                if why:
                    print("SKIP tp2.%s.%s: %s" % (method, comm, why[0]))
                    continue
            ct.check(*compare("tp2.%s.%s" % (method, comm), ref, got, eps, eps_loss))
            logged = path_logged(got[3]) if got else ""
            ct.check("tp2.%s.%s took its path" % (method, comm), comm.split("-")[0] in logged, logged)
    return ct.finish()


def path_logged(text):
    """The communication path a run logged (src/cli/args.c ol_cli_use_device's line)."""
    for line in text.splitlines():
        if "| communication: " in line:
            return line.split("| communication: ", 1)[1]
    return ""


if __name__ == "__main__":
    sys.exit(main())
