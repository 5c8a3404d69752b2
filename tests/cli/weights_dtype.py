#!/usr/bin/python3
"""--weights-dtype f16|bf16: frozen matrices held at 2 bytes a value, widened to f32 tile by tile
for the GEMMs; adapters, gradients, the optimizer and accumulation stay f32.

Compared (tests/mpi/equivalence.py: the gradient of step 1 recovered from adam_m, and the loss):

1. Against the f32 run on the same (unrounded) weights. Rounding a weight to a format with p
   significant bits changes it by a relative delta with |delta| <= u_w = 2^-p: p = 8 for bf16
   (u_w = 2^-8), p = 11 for f16 (2^-11). Every product w x of a GEMM then carries a relative
   perturbation delta, so a GEMM's output differs by at most u_w sum|w x|: relative to the
   magnitude of its terms, as a rounding error (equivalence.py's model, with the sum length
   replaced by 1: the perturbation is per term, not accumulated along the sum). With the deltas
   modelled as independent and zero-mean (round to nearest of unrelated values), and the
   perturbation of each GEMM with a rounded matrix travelling through the rest of the step, the
   perturbations add in quadrature over the c_w GEMMs with rounded weights on a gradient's path:
   7 projections per layer and the LM head (the embedding is a lookup: one more perturbation),
   forward and backward: c_w = 2 (7 L + 2).

     eps_w = lambda sqrt(c_w) u_w,  lambda = 6 (as equivalence.py)

   held per tensor to eps_w times the tensor's magnitude scale, plus the f32 eps of a TP-like
   reordering (the tiles change GEMM shapes), plus the recovery error. The loss: the forward
   GEMMs only, c_w = 7 L + 2, relative to the loss.
2. Against the f32 run on the weights already rounded (a model file converted to bf16/f16): the
   same values, so only the GEMM shapes differ: the f32 model of TP (equivalence.layout_eps).

Self-tests: each comparison must fail for a gradient changed by twice its bound in one tensor,
and for the run of another data order (--seed). DoRA, which reads W's rows for its norms, is
refused with one error line."""

import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mpi"))
import equivalence as eq  # noqa: E402
from clitest import ENV as env, check, finish, run, setup, write_tokens  # noqa: E402

U_W = {"bf16": 2.0 ** -8, "f16": 2.0 ** -11}


def rounding_eps(cfg, dtype, forward_only=False):
    c = 7 * cfg["n_layers"] + 2
    return eq.LAMBDA * math.sqrt(c if forward_only else 2 * c) * U_W[dtype]


def main():
    a, w = setup()
    B = a.onelora
    rc, _, err = run([B, "init", "--preset", "tiny", "--seed", "5", "--layers", "3", "--out", w("m.h5")], env)
    if rc != 0:
        print("FAIL init: " + err)
        return 1
    write_tokens(w("d.h5"), 256, 8000, 2000)
    for dt in U_W:
        run([B, "convert", w("m.h5"), "--out", w("m-%s.h5" % dt), "--dtype", dt], env)
    cfg = eq.model_config(w("m.h5"))
    B_SEQ, T = 4, 32
    tokens = B_SEQ * T

    def train(tag, model, dtype, method, tp=1, seed=1234):
        d = w("ck-" + tag)
        argv = [B, "train", "--model", model, "--data", w("d.h5"), "--method", method, "--steps", "1",
                "--micro-batch", str(B_SEQ), "--seq-len", str(T), "--ckpt-dir", d, "--log",
                w(tag + ".jsonl"), "--weights-dtype", dtype, "--tp", str(tp), "--seed", str(seed)]
        if tp > 1:
            argv = [a.mpirun, "-n", str(tp)] + argv
        rc, _, err = run(argv, env)
        if rc != 0:
            print("train %s failed: %s" % (tag, err.strip()[-300:]))
            return None
        with open(w(tag + ".jsonl")) as f:
            loss = [r["loss"] for r in map(json.loads, f) if r["kind"] == "step"]
        return eq.gradient(os.path.join(d, "step-00000001.h5")), loss

    def compare(name, ref, got, eps, eps_loss):
        if ref is None or got is None:
            check(name, False, "a run failed")
            return
        worst, tensor, _ = eq.compare_gradients(ref[0], got[0], eps)
        lw = eq.compare_losses(ref[1], got[1], eps_loss)
        check(name, worst <= 1 and lw <= 1,
              "gradient %.3g of its bound (%s), loss %.3g of its bound (eps %.2e)" % (worst, tensor, lw, eps))

    for method in ("1lora,norms", "lora"):
        for tp in (1, 2) if a.mpirun else (1,):
            if tp == 2 and method == "lora":
                continue
            tag = "%s-tp%d" % (method.replace(",", "+"), tp)
            f32 = train(tag + "-f32", w("m.h5"), "f32", method, tp)
            f32_eps = eq.layout_eps(cfg, 2, tokens)
            f32_eps_loss = eq.layout_eps(cfg, 2, tokens, forward_only=True)
            for dt in U_W:
                half = train(tag + "-" + dt, w("m.h5"), dt, method, tp)
                compare("%s.%s_vs_f32" % (tag, dt), f32, half, rounding_eps(cfg, dt) + f32_eps,
                        rounding_eps(cfg, dt, True) + f32_eps_loss)
                rounded = train(tag + "-%s-file" % dt, w("m-%s.h5" % dt), "f32", method, tp)
                compare("%s.%s_vs_f32_of_rounded" % (tag, dt), rounded, half, f32_eps, f32_eps_loss)
                if dt == "bf16" and f32 and half:
                    # self-tests: twice the bound in the largest tensor, and another data order
                    g, rec = f32[0]
                    k = max(g, key=lambda n: np.linalg.norm(g[n]))
                    wrong = dict(g)
                    scale = eq.scales(g)[k][0]
                    wrong[k] = g[k] + 2 * rounding_eps(cfg, dt) * scale * g[k] / np.linalg.norm(g[k])
                    worst = eq.compare_gradients(f32[0], (wrong, rec), rounding_eps(cfg, dt) + f32_eps)[0]
                    check("%s.selftest_twice_the_bound" % tag, worst > 1, "%.3g" % worst)
                    other = train(tag + "-other-data", w("m.h5"), dt, method, tp, seed=99)
                    worst = eq.compare_gradients(f32[0], other[0], rounding_eps(cfg, dt) + f32_eps)[0] \
                        if other else 0
                    check("%s.selftest_other_data" % tag, worst > 1, "%.3g" % worst)

    rc, _, err = run([B, "train", "--model", w("m.h5"), "--data", w("d.h5"), "--method", "dora",
                      "--steps", "1", "--seq-len", "16", "--weights-dtype", "bf16"], env)
    lines = [l for l in err.splitlines() if l.strip()]
    check("dora_refused", rc not in (0, -6, -11) and len(lines) == 1 and "dora" in lines[0], err.strip())
    rc, _, err = run([B, "train", "--model", w("m.h5"), "--data", w("d.h5"), "--weights-dtype", "f8",
                      "--steps", "1"], env)
    check("bad_dtype_refused", rc != 0 and "--weights-dtype" in err and "f8" in err, err.strip())
    return finish()


if __name__ == "__main__":
    sys.exit(main())
