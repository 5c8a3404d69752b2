#!/usr/bin/python3
"""Oracle test: one onelora training step against a float64 PyTorch reference (tests/oracle/llama.py).

What it does
  1. `onelora init` makes a small random model (MHA or GQA shape, float32 weights); the test then
     rewrites its weights with h5py so that norms differ and attention is far from uniform.
  2. h5py writes a data file of random tokens (< vocab_size).
  3. `onelora train --steps 1 --no-shuffle --clip 0 ...` runs one optimizer step and writes
     DIR/step-00000001.h5 and a JSONL log.
  4. The reference rebuilds the same global batch from the --no-shuffle contract
     (sample j of step 0 reads tokens [p, p+T+1), p = (j*T) mod (n-T-1)) and computes the loss and
     the gradient of every trainable tensor with autograd.
  5. Compared:
       - the step-1 "loss" of the JSONL log with the reference loss;
       - every trainable gradient, recovered from the checkpoint as adam_m / (1 - beta1): after ONE
         AdamW step (PyTorch defaults, no clipping) m = (1 - beta1) * grad;
       - adam_v against (1 - beta2) * grad_ref^2;
       - the updated params against one AdamW step computed from the checkpoint's own m and v;
       - the set of checkpoint tensors (names and shapes): nothing missing, nothing extra.

Exit status 0 when every check passes, 1 on any failure, 2 when the environment cannot run the test
(no torch / h5py): that must be a failure, never a silent skip.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

try:
    import h5py
    import numpy as np
    import torch
except Exception as e:  # the environment is wrong; say so loudly and fail
    sys.stderr.write(
        "oracle: FAIL: cannot import torch/h5py/numpy with %s (%s: %s).\n"
        "oracle: the oracle tests need Debian's /usr/bin/python3 with python3-torch and python3-h5py;\n"
        "oracle: configure with -DONELORA_TEST_PYTHON=/path/to/python3 that has them.\n"
        % (sys.executable, type(e).__name__, e))
    sys.exit(2)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama  # noqa: E402

# ---- tolerances ----------------------------------------------------------------------------------
# onelora computes in float32 (BLAS sgemm, f32 softmax/norm/cross-entropy); the reference runs in float64
# on the very same float32 weights, so the reference's own error (~1e-16) is negligible and what we
# measure is onelora's f32 rounding. With unit roundoff u = 2^-24 ~ 6e-8, dot products of length
# <= 160, two layers and a 64-token batch, forward errors are a few hundred u at worst (~1e-5 is a
# generous bound for a relative *loss* error; we typically see ~1e-7). Gradients go through the
# backward of every op (softmax, RMSNorm rsqrt, SiLU, the cross-entropy), each contributing relative
# errors of O(sqrt(n) u); in the norm-relative sense ||g - g_ref|| / ||g_ref|| per tensor, 1e-4 leaves
# more than an order of magnitude of margin over the ~1e-6 typically observed, while any real bug
# (a wrong RoPE convention, GQA head mapping, a missing term of dx, an off-by-one in the batch) gives
# errors of O(1e-2 .. 1).
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4
# v = (1 - beta2) g^2: squaring doubles the relative error of g.
ADAM_V_RTOL = 2e-4
# The updated parameter is p - lr * (m / (1-b1)) / (sqrt(v / (1-b2)) + eps). Recomputed in float64 from
# the checkpoint's own float32 m and v, the only differences are the f32 rounding of the ratio
# (~1e-7 relative, times lr) and of the stored result (half an ulp of |p|).
ADAM_ATOL_LR = 1e-4          # times lr
ADAM_RTOL_P = 2.5e-7         # times |p|
# Below this the reference gradient is treated as zero and compared in absolute terms.
TINY = 1e-12

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # AdamW, PyTorch defaults (DESIGN.md section 8)

SHAPES = {
    # D=64, L=2, H=4, F=160, V=256; MHA has K=H, GQA has K=2 so that kv head j serves query heads 2j, 2j+1
    # (repeat_interleave, which differs from a plain repeat for this shape).
    "mha": dict(dim=64, layers=2, heads=4, kv_heads=4, ffn=160, vocab=256, max_seq_len=64),
    "gqa": dict(dim=64, layers=2, heads=4, kv_heads=2, ffn=160, vocab=256, max_seq_len=64),
}
SEQ_LEN = 16
MICRO_BATCH = 2
MICRO_BATCHES = 2
LR = 1e-3
N_TRAIN = 4096
N_VAL = 512

failures = []


def check(ok, what):
    print("  %s  %s" % ("PASS" if ok else "FAIL", what))
    if not ok:
        failures.append(what)
    return ok


def run(cmd, what):
    print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=300)
    except subprocess.TimeoutExpired:
        print("oracle: FAIL: %s timed out after 300 s" % what)
        sys.exit(1)
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    if r.returncode != 0:
        print("oracle: FAIL: %s exited with %d" % (what, r.returncode))
        print("--- stdout (tail) ---\n" + out[-3000:])
        print("--- stderr (tail) ---\n" + err[-3000:])
        sys.exit(1)
    return out, err


def rel_err(a, ref):
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    nref = np.linalg.norm(ref)
    nd = np.linalg.norm(a - ref)
    return (nd / nref if nref > TINY else nd), nref


def perturb_model(path, cfg, seed):
    """Rewrites the weights of a freshly initialised model in place (same names, shapes, dtype).

    `onelora init` draws matrices with std 0.02 and sets every RMSNorm weight to 1. With that, the
    attention is almost uniform (scores ~ 0.03) and all norm weights are interchangeable, so a test on
    such a model could not tell, e.g., input_layernorm from post_attention_layernorm, a RoPE or a GQA
    head-mapping error would barely move the loss, and q/k gradients would be tiny. So: norm weights
    become distinct, U(0.5, 1.5); q and k get std 0.1 (attention scores O(1), sharply position
    dependent through RoPE); every other matrix is scaled by its own factor in [2, 5)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "r+") as f:
        for name, shape in sorted(llama.weight_names(cfg).items()):
            d = f[name]
            w = d[()].astype(np.float64)
            if len(shape) == 1:
                w = rng.uniform(0.5, 1.5, size=shape)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                w = rng.standard_normal(shape) * 0.1
            else:
                w = w * rng.uniform(2.0, 5.0)
            d[...] = w.astype(d.dtype)


def make_data(path, vocab, seed):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=rng.integers(0, vocab, size=N_TRAIN, dtype=np.uint16))
        f.create_dataset("val", data=rng.integers(0, vocab, size=N_VAL, dtype=np.uint16))
        f.attrs["vocab_size"] = np.int64(vocab)


def global_batch(data_path, step, G, T):
    """The --no-shuffle contract: global sample j of step s reads tokens [p, p+T+1),
    p = ((s*G + j)*T) mod (n - T - 1); input = first T tokens, targets = last T."""
    with h5py.File(data_path, "r") as f:
        train = f["train"][()].astype(np.int64)
    n = len(train)
    x, y = [], []
    for j in range(G):
        p = ((step * G + j) * T) % (n - T - 1)
        seg = train[p:p + T + 1]
        x.append(seg[:-1])
        y.append(seg[1:])
    return torch.tensor(np.stack(x)), torch.tensor(np.stack(y))


def read_log(path):
    steps, others = [], []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                check(False, "log %s line %d is not JSON (%s): %r" % (path, ln, e, line[:200]))
                continue
            (steps if rec.get("kind") == "step" else others).append(rec)
    return steps, others


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onelora", required=True, help="path to the onelora binary")
    ap.add_argument("--workdir", required=True, help="scratch directory (its test files are replaced)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="mha")
    ap.add_argument("--method", choices=("1lora", "full"), default="1lora")
    ap.add_argument("--targets", default="all", help="all | attn | q,k,v,... (1lora only)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    torch.set_num_threads(2)
    shp = SHAPES[args.shape]
    targets = llama.parse_targets(args.targets)
    tag = "%s %s targets=%s" % (args.method, args.shape, args.targets)
    print("oracle: %s (torch %s, python %s)" % (tag, torch.__version__, sys.executable))

    os.makedirs(args.workdir, exist_ok=True)
    model = os.path.join(args.workdir, "model.h5")
    data = os.path.join(args.workdir, "data.h5")
    ckpt_dir = os.path.join(args.workdir, "ckpt")
    log = os.path.join(args.workdir, "train.jsonl")
    for p in (model, data, log):
        if os.path.exists(p):
            os.remove(p)
    shutil.rmtree(ckpt_dir, ignore_errors=True)

    # 1. model
    run([args.onelora, "init", "--preset", "tiny", "--out", model, "--seed", str(args.seed),
         "--dim", str(shp["dim"]), "--layers", str(shp["layers"]), "--heads", str(shp["heads"]),
         "--kv-heads", str(shp["kv_heads"]), "--ffn", str(shp["ffn"]), "--vocab", str(shp["vocab"]),
         "--max-seq-len", str(shp["max_seq_len"]), "--dtype", "f32"], "onelora init")
    cfg, _ = llama.load_model(model)
    perturb_model(model, cfg, args.seed + 2)
    cfg, weights = llama.load_model(model)
    print("model: %r (weights perturbed, see perturb_model)" % cfg)
    want = dict(dim=shp["dim"], n_layers=shp["layers"], n_heads=shp["heads"], n_kv_heads=shp["kv_heads"],
                ffn_dim=shp["ffn"], vocab_size=shp["vocab"], max_seq_len=shp["max_seq_len"])
    got = {k: getattr(cfg, k) for k in want}
    if not check(got == want, "init honours the explicit shape flags: %s" % got):
        return
    with h5py.File(model, "r") as f:
        dtypes = sorted({str(f[n].dtype) for n in llama.weight_names(cfg)})
    check(dtypes == ["float32"], "model weights are float32 (--dtype f32): %s" % dtypes)

    # 2. data
    make_data(data, cfg.vocab_size, args.seed + 1)

    # 3. one training step
    G = MICRO_BATCH * MICRO_BATCHES
    cmd = [args.onelora, "train", "--model", model, "--data", data, "--method", args.method]
    if args.method == "1lora":
        cmd += ["--targets", args.targets]
    cmd += ["--steps", "1", "--micro-batch", str(MICRO_BATCH), "--micro-batches", str(MICRO_BATCHES),
            "--seq-len", str(SEQ_LEN), "--lr", repr(LR), "--warmup", "0", "--schedule", "constant",
            "--clip", "0", "--seed", str(args.seed), "--no-shuffle", "--ckpt-dir", ckpt_dir, "--log", log]
    run(cmd, "onelora train")

    # 4. reference
    x, y = global_batch(data, 0, G, SEQ_LEN)
    ref = llama.Llama(cfg, weights, method=args.method, targets=targets)
    loss_ref = ref.loss(x, y)
    loss_ref.backward()
    grads_ref = {name: p.grad.detach().numpy() for name, p in ref.trainable.items()}
    print("reference: loss %.10f over %d target tokens, %d trainable tensors"
          % (loss_ref.item(), y.numel(), len(grads_ref)))

    # 5a. the log
    print("log %s:" % log)
    if not os.path.exists(log):
        check(False, "the --log file exists")
    else:
        steps, _ = read_log(log)
        check(len(steps) == 1 and steps[0].get("step") == 1,
              "exactly one step record, with step=1: %s" % [s.get("step") for s in steps])
        if steps:
            s = steps[0]
            loss_c = s.get("loss")
            if check(isinstance(loss_c, (int, float)), "step record has a numeric loss: %r" % (loss_c,)):
                e = abs(loss_c - loss_ref.item()) / abs(loss_ref.item())
                check(e < LOSS_RTOL, "step-1 loss %.10f vs reference %.10f: rel err %.2e (< %.0e)"
                      % (loss_c, loss_ref.item(), e, LOSS_RTOL))
            lr = s.get("lr")
            check(isinstance(lr, (int, float)) and abs(lr - LR) <= 1e-6 * LR,
                  "step-1 lr is %g (constant schedule, no warmup): %r" % (LR, lr))

    # 5b. the checkpoint
    ck = os.path.join(ckpt_dir, "step-%08d.h5" % 1)
    print("checkpoint %s:" % ck)
    if not check(os.path.exists(ck), "checkpoint file step-00000001.h5 exists (dir holds %s)"
                 % (sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else "nothing")):
        return
    with h5py.File(ck, "r") as f:
        a = f.attrs
        check(llama.attr_str(a.get("format", "")) == "onelora-checkpoint",
              "attr format = 'onelora-checkpoint': %r" % (a.get("format"),))
        step_attr = a.get("step")
        check(step_attr is not None and int(np.asarray(step_attr).reshape(-1)[0]) == 1,
              "attr step = 1: %r" % (step_attr,))
        check(args.method in llama.attr_str(a.get("method", "")),
              "attr method names %s: %r" % (args.method, a.get("method")))
        check("targets" in a, "attr targets present: %r" % (a.get("targets"),))
        if "loss" in a:
            print("  info  attr loss = %r" % (a["loss"],))
        else:
            check(False, "attr loss present")

        groups = {}
        for g in ("params", "adam_m", "adam_v"):
            if not check(g in f and isinstance(f[g], h5py.Group), "group %s exists" % g):
                return
            groups[g] = {}
            f[g].visititems(lambda name, obj, g=g: groups[g].__setitem__(name, obj[()])
                            if isinstance(obj, h5py.Dataset) else None)

    want_names = set(grads_ref)
    for g, d in groups.items():
        got_names = set(d)
        missing, extra = sorted(want_names - got_names), sorted(got_names - want_names)
        check(not missing and not extra, "group %s holds exactly the %d expected tensors%s%s"
              % (g, len(want_names), "; missing %s" % missing if missing else "",
                 "; extra %s" % extra if extra else ""))
        for name in sorted(want_names & got_names):
            arr = d[name]
            exp = tuple(grads_ref[name].shape)
            if tuple(arr.shape) != exp or arr.dtype != np.float32:
                check(False, "%s/%s is float32 %s: got %s %s" % (g, name, exp, arr.dtype, arr.shape))

    # 5c. gradients, Adam moments and the update, tensor by tensor
    print("gradients (grad = adam_m / %.1f), tolerance ||g - g_ref|| / ||g_ref|| < %.0e:" % (1 - BETA1, GRAD_RTOL))
    worst = 0.0
    n_v_bad = n_upd_bad = n_cmp = 0
    for name in sorted(want_names):
        if not all(name in groups[g] for g in groups):
            continue
        m = groups["adam_m"][name].astype(np.float64)
        v = groups["adam_v"][name].astype(np.float64)
        p = groups["params"][name].astype(np.float64)
        if m.shape != grads_ref[name].shape:
            continue
        g_ref = grads_ref[name].astype(np.float64)
        g = m / (1 - BETA1)
        n_cmp += 1
        e, nref = rel_err(g, g_ref)
        worst = max(worst, e)
        ok = e < GRAD_RTOL
        print("  %s  %-52s %-12s |g_ref| %.3e  rel err %.2e" % ("PASS" if ok else "FAIL", name, str(list(g.shape)),
                                                                  nref, e))
        if not ok:
            failures.append("gradient of %s: rel err %.2e" % (name, e))
        if nref <= TINY and args.method == "1lora":
            check(False, "%s: reference gradient is zero, the test would be vacuous" % name)

        ev, _ = rel_err(v, (1 - BETA2) * g_ref ** 2)
        if ev >= ADAM_V_RTOL:
            n_v_bad += 1
            check(False, "%s: adam_v vs (1-beta2) g_ref^2: rel err %.2e (>= %.0e)" % (name, ev, ADAM_V_RTOL))

        p0 = weights[name] if args.method == "full" else np.zeros_like(p)  # 1LoRA b starts at 0
        upd = (m / (1 - BETA1)) / (np.sqrt(v / (1 - BETA2)) + EPS)
        p_exp = p0 - LR * upd
        tol = ADAM_ATOL_LR * LR + ADAM_RTOL_P * np.abs(p0)
        bad = np.abs(p - p_exp) > tol
        if bad.any():
            n_upd_bad += 1
            i = np.unravel_index(np.argmax(np.abs(p - p_exp) - tol), p.shape)
            check(False, "%s: params after one AdamW step: %d/%d elements off, worst at %s: got %.9g, "
                  "expected %.9g (p0 %.9g, m %.3g, v %.3g)" % (name, bad.sum(), bad.size, list(i), p[i], p_exp[i],
                                                               p0[i], m[i], v[i]))
    print("worst gradient rel err: %.2e" % worst)
    print("  %s  adam_v = (1-beta2) g_ref^2 (rel err < %.0e) for %d/%d tensors"
          % ("PASS" if not n_v_bad else "FAIL", ADAM_V_RTOL, n_cmp - n_v_bad, n_cmp))
    print("  %s  params = one AdamW step from the stored m, v (lr %g, wd 0) for %d/%d tensors"
          % ("PASS" if not n_upd_bad else "FAIL", LR, n_cmp - n_upd_bad, n_cmp))
    if args.method == "1lora":
        check(all(n.endswith(".onelora_b") for n in want_names), "only .onelora_b tensors are trainable")
        adapted = sorted({n.split(".")[-2].replace("_proj", "") for n in want_names})
        print("  info  adapted modules: %s" % adapted)


if __name__ == "__main__":
    main()
    if failures:
        print("\noracle: FAIL: %d check(s) failed:" % len(failures))
        for f_ in failures:
            print("  - " + f_)
        sys.exit(1)
    print("\noracle: PASS")
