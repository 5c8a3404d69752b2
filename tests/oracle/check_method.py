#!/usr/bin/python3
"""Oracle test: two onelora training steps of one method against a float64 PyTorch reference
(tests/oracle/llama.py, which implements every method of DESIGN.md section 7).

What it does
  1. `onelora init` makes a small random model (MHA or GQA shape, float32 weights); the test then
     rewrites its weights with h5py so that norms differ and attention is far from uniform.
  2. h5py writes a data file of random tokens (< vocab_size).
  3. `onelora train --steps 2 --ckpt-every 1 --no-shuffle --clip 0 --rank 2 --alpha 4 ...` runs two
     optimizer steps and writes DIR/step-00000001.h5, DIR/step-00000002.h5 and a JSONL log.
  4. The reference rebuilds each step's global batch from the --no-shuffle contract (sample j of step
     s reads tokens [p, p+T+1), p = ((s*G + j)*T) mod (n-T-1)) and computes loss and gradients with
     autograd:
       step 1 at the initial params: the deterministic init (zeros, 0.1, m = ||W||_row, the model's
              own weights), or for a random init (LoRA's A) the value recovered from checkpoint 1;
       step 2 at the params of checkpoint 1, on the step-2 batch.
     Step 2 matters: most adapters start with one factor at zero (B, lambda_b, M, beta, b), so at
     step 1 the gradient of the other factor is exactly zero and only step 2 tests it.
     Frozen tensors a method generates (VeRA's vera_A/vera_B, 1lora-random's onelora_v) are read
     from the checkpoint's `frozen` group and used by the reference.
  5. Compared, per step:
       - the "loss" and "grad_norm" of the JSONL step record with the reference;
       - every trainable gradient, recovered from the Adam moments (PyTorch AdamW defaults, no
         clipping, weight decay 0): g1 = m1 / (1 - beta1), g2 = (m2 - beta1 m1) / (1 - beta1);
       - adam_v against (1-beta2) g1_ref^2, then beta2 v1 + (1-beta2) g2_ref^2;
       - params: checkpoint 1 = one AdamW step from the init, checkpoint 2 = one more from checkpoint 1,
         both computed from the checkpoint's own m and v;
       - the init where it is deterministic, and the bounds of the random ones (LoRA's A,
         U(+-1/sqrt(k)); VeRA's A, B, U(+-sqrt(6/fan_in)));
       - the set of checkpoint tensors (names and shapes) in params/adam_m/adam_v/frozen: nothing
         missing, nothing extra; and that no step-2 reference gradient is zero (a vacuous test).

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
# on the very same float32 weights (and, at step 2, the very same float32 params of checkpoint 1), so the
# reference's own error (~1e-16) is negligible and what we measure is onelora's f32 rounding. With unit
# roundoff u = 2^-24 ~ 6e-8, dot products of length <= 160, two layers and a 64-token batch, forward
# errors are a few hundred u at worst (~1e-5 is a generous bound for a relative *loss* error; we
# typically see ~1e-7). Gradients go through the backward of every op (softmax, RMSNorm rsqrt, SiLU, the
# cross-entropy, the adapters), each contributing relative errors of O(sqrt(n) u); in the norm-relative
# sense ||g - g_ref|| / ||g_ref|| per tensor, 1e-4 leaves more than an order of magnitude of margin over
# the ~1e-6 typically observed, while any real bug (a wrong RoPE convention, GQA head mapping, a missing
# term of dx, an off-by-one in the batch, a scaling s = 1 instead of alpha/r, an undetached DoRA norm,
# a wrong MoRA padding) gives errors of O(1e-2 .. 1).
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4
# Step 2's gradient is recovered as (m2 - beta1 m1) / (1 - beta1): m1 and m2 are stored rounded to f32
# (half an ulp each) and m2 = beta1 m1 + (1-beta1) g2 is itself rounded once or twice in f32, so the
# recovered g2 carries an absolute error up to ~RECOVERY_ULPS * u * (|m2| + beta1 |m1|) / (1 - beta1)
# elementwise: the subtraction amplifies rounding by 10, and by |g1| / |g2| more when the step-2
# gradient is smaller than the step-1 one. That term, in norm, is added to GRAD_RTOL * ||g2_ref||
# (not a flat looser bound, which would weaken the test of the well-conditioned tensors). The log's
# grad_norm at step 2 is an independent check free of this amplification.
RECOVERY_ULPS = 4.0
U32 = 2.0 ** -24
# v = (1 - beta2) g^2: squaring doubles the relative error of g. (1 - beta2) computed in float32 is
# 1.0000467e-3, 4.7e-5 relative off 1e-3: inside the bound. The step-2 check beta2 v1 + (1-beta2) g2_ref^2
# adds two positive terms, so nothing is amplified there.
ADAM_V_RTOL = 2e-4
# An updated parameter is p - lr * (m / bc1) / (sqrt(v / bc2) + eps). Recomputed in float64 from the
# checkpoint's own float32 m and v, the only differences are the f32 rounding of the ratio and of the
# bias corrections (bc2 = 1 - beta2^s in f32 is up to ~5e-5 relative off; |m_hat / sqrt(v_hat)| < 2 here)
# (~1e-4 relative, times lr) and of the stored result (half an ulp of |p|).
ADAM_ATOL_LR = 1e-4          # times lr
ADAM_RTOL_P = 2.5e-7         # times |p|
# DoRA's m = ||W||_row is a float32 sum of k <= 160 squares in onelora: relative error <= k u / 2 ~ 5e-6.
DORA_M_RTOL = 1e-5
# A gradient that is exactly zero in the reference flows through a product with an exactly zero factor
# (B = 0, lambda_b = 0): onelora's f32 kernels then give exact zeros too. Real gradients here are
# ~1e-4 .. 1, so a norm below TINY is zero, and a zero reference gradient is compared absolutely.
TINY = 1e-12

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # AdamW, PyTorch defaults (DESIGN.md section 8)

SHAPES = {
    # D=64, L=2, H=4, F=160, V=256; MHA has K=H, GQA has K=2 so that kv head j serves query heads 2j, 2j+1
    # (repeat_interleave, which differs from a plain repeat for this shape). With rank 2, MoRA's rhat is
    # 16 (q, o; k, v in MHA), 14 (k, v in GQA: k = 64 is not a multiple) and 21 (gate, up, down: neither
    # 64 nor 160 is a multiple), so the cyclic padding, the tiling (d = 160 > rhat) and the truncation
    # are all exercised; mora6's even rhat 20 pads gate/up's k = 64 to 80 < d = 160 (tile) and leaves
    # down's 160 > d = 64 (truncate).
    "mha": dict(dim=64, layers=2, heads=4, kv_heads=4, ffn=160, vocab=256, max_seq_len=64),
    "gqa": dict(dim=64, layers=2, heads=4, kv_heads=2, ffn=160, vocab=256, max_seq_len=64),
}
SEQ_LEN = 16
MICRO_BATCH = 2
MICRO_BATCHES = 2
LR = 1e-3
STEPS = 2
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
    """The --no-shuffle contract: global sample j of step s (from 0) reads tokens [p, p+T+1),
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


def read_checkpoint(path, step, method):
    """Checks the root attributes; returns {group: {name: float64 array}} for params, adam_m, adam_v
    and frozen (empty when the file has no such group), or None when the file is unusable."""
    if not check(os.path.exists(path), "checkpoint %s exists (dir holds %s)" % (
            os.path.basename(path), sorted(os.listdir(os.path.dirname(path)))
            if os.path.isdir(os.path.dirname(path)) else "nothing")):
        return None
    groups = {}
    with h5py.File(path, "r") as f:
        a = f.attrs
        check(llama.attr_str(a.get("format", "")) == "onelora-checkpoint",
              "attr format = 'onelora-checkpoint': %r" % (a.get("format"),))
        step_attr = a.get("step")
        check(step_attr is not None and int(np.asarray(step_attr).reshape(-1)[0]) == step,
              "attr step = %d: %r" % (step, step_attr))
        check(llama.attr_str(a.get("method", "")) == method, "attr method = %r: %r" % (method, a.get("method")))
        check("targets" in a, "attr targets present: %r" % (a.get("targets"),))
        check("loss" in a, "attr loss present: %r" % (a.get("loss"),))
        for g in ("params", "adam_m", "adam_v", "frozen"):
            groups[g] = {}
            if g not in f:
                if g != "frozen" and not check(False, "group %s exists" % g):
                    return None
                continue
            dtypes = set()

            def visit(name, obj, g=g, dtypes=dtypes):
                if isinstance(obj, h5py.Dataset):
                    groups[g][name] = obj[()].astype(np.float64)
                    dtypes.add(str(obj.dtype))
            f[g].visititems(visit)
            check(dtypes <= {"float32"}, "group %s is float32: %s" % (g, sorted(dtypes)))
    return groups


def check_names(groups, want, step):
    """want: {name: shape}. Every state group holds exactly those tensors, at those shapes."""
    ok = True
    for g in ("params", "adam_m", "adam_v"):
        d = groups[g]
        missing, extra = sorted(set(want) - set(d)), sorted(set(d) - set(want))
        bad = sorted(n for n in set(want) & set(d) if tuple(d[n].shape) != tuple(want[n]))
        ok &= check(not missing and not extra and not bad,
                    "step %d: group %s holds exactly the %d expected tensors%s%s%s"
                    % (step, g, len(want), "; missing %s" % missing if missing else "",
                       "; extra %s" % extra if extra else "",
                       "; wrong shapes %s" % ["%s %s != %s" % (n, list(d[n].shape), list(want[n])) for n in bad]
                       if bad else ""))
    return ok


def adam_update(m, v, step):
    """The AdamW step direction (m_hat / (sqrt(v_hat) + eps)) at step `step` (from 1), weight decay 0."""
    return (m / (1 - BETA1 ** step)) / (np.sqrt(v / (1 - BETA2 ** step)) + EPS)


def reference(cfg, weights, args, targets, frozen, params, x, y):
    """-> (loss, {name: grad}, model), the reference at the given trainable values."""
    ref = llama.Llama(cfg, weights, method=args.method, targets=targets, rank=args.rank, alpha=args.alpha,
                      frozen=frozen)
    ref.set_params(params)
    loss = ref.loss(x, y)
    if loss.requires_grad:  # method none: nothing to differentiate
        loss.backward()
    grads = {n: (p.grad.detach().numpy().copy() if p.grad is not None else np.zeros(tuple(p.shape)))
             for n, p in ref.trainable.items()}
    return loss.item(), grads, ref


def check_log_step(rec, step, loss_ref, grads_ref):
    if rec is None:
        check(False, "the log has a step record with step=%d" % step)
        return
    loss_c = rec.get("loss")
    if check(isinstance(loss_c, (int, float)), "step-%d record has a numeric loss: %r" % (step, loss_c)):
        e = abs(loss_c - loss_ref) / abs(loss_ref)
        check(e < LOSS_RTOL, "step-%d loss %.10f vs reference %.10f: rel err %.2e (< %.0e)"
              % (step, loss_c, loss_ref, e, LOSS_RTOL))
    lr = rec.get("lr")
    check(isinstance(lr, (int, float)) and abs(lr - LR) <= 1e-6 * LR,
          "step-%d lr is %g (constant schedule, no warmup): %r" % (step, LR, lr))
    gn_ref = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads_ref.values())))
    gn = rec.get("grad_norm")
    if gn_ref <= TINY:
        check(isinstance(gn, (int, float)) and abs(gn) <= TINY, "step-%d grad_norm is 0: %r" % (step, gn))
    elif check(isinstance(gn, (int, float)), "step-%d record has a numeric grad_norm: %r" % (step, gn)):
        e = abs(gn - gn_ref) / gn_ref
        check(e < GRAD_RTOL, "step-%d grad_norm %.8g vs reference %.8g: rel err %.2e (< %.0e)"
              % (step, gn, gn_ref, e, GRAD_RTOL))


def check_uniform(name, a, bound, what):
    """A tensor drawn from U(-bound, bound): inside the bounds, and spread like it (std bound/sqrt(3)
    within 30%: for >= 128 draws the sample std is within ~4% at one sigma)."""
    a = np.asarray(a, dtype=np.float64)
    if not check(np.all(np.isfinite(a)), "%s is finite" % name):
        return
    amax, std = float(np.max(np.abs(a))), float(np.std(a))
    std_want = bound / np.sqrt(3)
    check(amax <= bound * (1 + 1e-6) and 0.7 * std_want < std < 1.3 * std_want,
          "%s ~ %s: max |a| %.4g <= %.4g, std %.4g ~ %.4g" % (name, what, amax, bound, std, std_want))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onelora", required=True, help="path to the onelora binary")
    ap.add_argument("--workdir", required=True, help="scratch directory (its test files are replaced)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="mha")
    ap.add_argument("--method", default="1lora", help="a --method of onelora train, e.g. lora or 1lora,norms")
    ap.add_argument("--targets", default="all", help="all | attn | q,k,v,... (adapter methods)")
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=4.0, help="with rank 2, s = alpha/rank = 2 (not 1) is tested")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    torch.set_num_threads(2)
    shp = SHAPES[args.shape]
    targets = llama.parse_targets(args.targets)
    full, norms, adapters = llama.parse_method(args.method)
    tag = "%s %s targets=%s rank=%d alpha=%g" % (args.method, args.shape, args.targets, args.rank, args.alpha)
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

    # 3. two training steps, a checkpoint after each
    G = MICRO_BATCH * MICRO_BATCHES
    cmd = [args.onelora, "train", "--model", model, "--data", data, "--method", args.method,
           "--targets", args.targets, "--rank", str(args.rank), "--alpha", repr(args.alpha),
           "--steps", str(STEPS), "--ckpt-every", "1", "--micro-batch", str(MICRO_BATCH),
           "--micro-batches", str(MICRO_BATCHES), "--seq-len", str(SEQ_LEN), "--lr", repr(LR), "--warmup", "0",
           "--schedule", "constant", "--clip", "0", "--seed", str(args.seed), "--no-shuffle",
           "--ckpt-dir", ckpt_dir, "--log", log]
    run(cmd, "onelora train")

    # 4. the checkpoints and the log
    ck = {}
    for s in (1, 2):
        path = os.path.join(ckpt_dir, "step-%08d.h5" % s)
        print("checkpoint %s:" % path)
        ck[s] = read_checkpoint(path, s, args.method)
        if ck[s] is None:
            return
    recs = {}
    print("log %s:" % log)
    if check(os.path.exists(log), "the --log file exists"):
        steps, _ = read_log(log)
        check([r.get("step") for r in steps] == [1, 2], "two step records, steps 1 and 2: %s"
              % [r.get("step") for r in steps])
        recs = {r.get("step"): r for r in steps}

    # 5. the reference model's trainable set, built on checkpoint 1's frozen group
    print("frozen tensors generated by the method:")
    try:
        probe = llama.Llama(cfg, weights, method=args.method, targets=targets, rank=args.rank, alpha=args.alpha,
                            frozen=ck[1]["frozen"])
    except ValueError as e:
        check(False, "the reference can be built from checkpoint 1: %s" % e)
        return
    used = probe.ctx.used
    for s in (1, 2):
        got_f = ck[s]["frozen"]
        extra = sorted(set(got_f) - set(used))
        check(not extra, "step %d: group frozen holds only the %d tensors the method reads %s%s"
              % (s, len(used), sorted(used) if len(used) <= 4 else "", "; extra %s" % extra if extra else ""))
    for name in sorted(used):
        a1, a2 = ck[1]["frozen"][name], ck[2]["frozen"].get(name)
        check(a2 is not None and np.array_equal(a1, a2), "frozen %s %s is the same in both checkpoints"
              % (name, list(a1.shape)))
        check(np.all(np.isfinite(a1)) and np.std(a1) > 0, "frozen %s is finite and not constant" % name)
    if "vera" in adapters:  # A [r, k_max], B [d_max, r] ~ U(+-sqrt(6 / fan_in)), fan_in = k_max, r
        print("  info  vera k_max %d, d_max %d" % (probe.ctx.k_max, probe.ctx.d_max))
        check_uniform("frozen/vera_A", ck[1]["frozen"]["vera_A"], np.sqrt(6.0 / probe.ctx.k_max),
                      "U(+-sqrt(6/k_max))")
        check_uniform("frozen/vera_B", ck[1]["frozen"]["vera_B"], np.sqrt(6.0 / args.rank), "U(+-sqrt(6/r))")
    want_shapes = {n: tuple(p.shape) for n, p in probe.trainable.items()}
    print("  info  %d trainable tensors, %d values" % (len(want_shapes),
                                                        sum(int(np.prod(s)) for s in want_shapes.values())))
    names_ok = all([check_names(ck[s], want_shapes, s) for s in (1, 2)])
    if not names_ok:
        return
    P1, M1, V1 = ck[1]["params"], ck[1]["adam_m"], ck[1]["adam_v"]
    P2, M2, V2 = ck[2]["params"], ck[2]["adam_m"], ck[2]["adam_v"]

    # 6. the initial params: deterministic ones must equal their init; random ones are recovered from
    #    checkpoint 1 as p0 = p1 + lr * update(m1, v1) (exact when their gradient was 0: then m1 = v1 = 0)
    print("initialisation (p0 = params_1 + lr * AdamW update from m1, v1):")
    p0 = {}
    n_bad = 0
    for name in sorted(want_shapes):
        p0_rec = P1[name] + LR * adam_update(M1[name], V1[name], 1)
        init = probe.init[name]
        if init is None:
            p0[name] = p0_rec
            k = want_shapes[name][-1]
            check_uniform("init of " + name, p0_rec, 1.0 / np.sqrt(k), "U(+-1/sqrt(k))")
            continue
        p0[name] = init
        rtol = DORA_M_RTOL if name.endswith(".dora_m") else ADAM_RTOL_P
        tol = ADAM_ATOL_LR * LR + rtol * np.abs(init)
        bad = np.abs(p0_rec - init) > tol
        if bad.any():
            n_bad += 1
            i = np.unravel_index(np.argmax(np.abs(p0_rec - init) - tol), init.shape)
            check(False, "%s: params_1 is not one AdamW step from the init: %d/%d elements off, worst at %s: "
                  "got p0 %.9g, init %.9g (p1 %.9g, m1 %.3g, v1 %.3g)"
                  % (name, bad.sum(), bad.size, list(i), p0_rec[i], init[i], P1[name][i], M1[name][i], V1[name][i]))
    kinds = sorted({n.rsplit(".", 1)[-1] if not n.endswith(".weight") else "weight"
                    for n in want_shapes if probe.init[n] is not None})
    print("  %s  params_1 = init - lr * update(m1, v1) for %d/%d tensors with a deterministic init (%s)"
          % ("PASS" if not n_bad else "FAIL", sum(probe.init[n] is not None for n in want_shapes) - n_bad,
             sum(probe.init[n] is not None for n in want_shapes), ", ".join(kinds)))

    # 7. the two steps against the reference
    frozen = ck[1]["frozen"]
    x1, y1 = global_batch(data, 0, G, SEQ_LEN)
    x2, y2 = global_batch(data, 1, G, SEQ_LEN)
    loss1, g1_ref, _ = reference(cfg, weights, args, targets, frozen, p0, x1, y1)
    loss2, g2_ref, _ = reference(cfg, weights, args, targets, frozen, P1, x2, y2)
    print("reference: step-1 loss %.10f at the init, step-2 loss %.10f at params_1 (%d target tokens each)"
          % (loss1, loss2, y1.numel()))
    print("log:")
    check_log_step(recs.get(1), 1, loss1, g1_ref)
    check_log_step(recs.get(2), 2, loss2, g2_ref)

    for s in (1, 2):
        if s == 1:
            print("step-1 gradients, g1 = m1 / (1-beta1); tolerance ||g - g_ref|| < %.0e ||g_ref|| "
                  "(zero references: ||g|| < %.0e):" % (GRAD_RTOL, TINY))
        else:
            print("step-2 gradients at params_1, g2 = (m2 - beta1 m1) / (1-beta1); tolerance ||g - g_ref|| < "
                  "%.0e ||g_ref|| + %g u (||m2|| + beta1 ||m1||) / (1-beta1):" % (GRAD_RTOL, RECOVERY_ULPS))
        worst = 0.0
        n_v_bad = n_upd_bad = n_zero = 0
        for name in sorted(want_shapes):
            if s == 1:
                g = M1[name] / (1 - BETA1)
                g_ref = g1_ref[name]
                floor = 0.0
                v_exp = (1 - BETA2) * g_ref ** 2
                v_got = V1[name]
                p_prev, p_got, m, v = p0[name], P1[name], M1[name], V1[name]
            else:
                g = (M2[name] - BETA1 * M1[name]) / (1 - BETA1)
                g_ref = g2_ref[name]
                floor = RECOVERY_ULPS * U32 * (np.linalg.norm(M2[name]) + BETA1 * np.linalg.norm(M1[name])) \
                    / (1 - BETA1)
                v_exp = BETA2 * V1[name] + (1 - BETA2) * g_ref ** 2
                v_got = V2[name]
                p_prev, p_got, m, v = P1[name], P2[name], M2[name], V2[name]
            e, nref = rel_err(g, g_ref)
            if nref > TINY:
                tol = GRAD_RTOL + floor / nref
                ok = e < tol
                worst = max(worst, e)
                print("  %s  %-52s %-10s |g_ref| %.3e  rel err %.2e%s" % (
                    "PASS" if ok else "FAIL", name, str(list(g.shape)), nref, e,
                    "  (tol %.2e)" % tol if floor else ""))
                if not ok:
                    failures.append("step-%d gradient of %s: rel err %.2e (tol %.2e)" % (s, name, e, tol))
            else:
                n_zero += 1
                ok = e < TINY
                print("  %s  %-52s %-10s |g_ref| 0          |g| %.2e" % ("PASS" if ok else "FAIL", name,
                                                                        str(list(g.shape)), e))
                if not ok:
                    failures.append("step-%d gradient of %s: reference is 0, got norm %.2e" % (s, name, e))
                if s == 2 and args.method != "none":
                    check(False, "%s: step-2 reference gradient is zero, the test would be vacuous" % name)

            ev, _ = rel_err(v_got, v_exp)
            if ev >= ADAM_V_RTOL:
                n_v_bad += 1
                check(False, "step %d: %s: adam_v vs reference: rel err %.2e (>= %.0e)" % (s, name, ev, ADAM_V_RTOL))

            if s == 1:
                continue  # params_1 was checked against the init above
            p_exp = p_prev - LR * adam_update(m, v, s)
            tol = ADAM_ATOL_LR * LR + ADAM_RTOL_P * np.abs(p_prev)
            bad = np.abs(p_got - p_exp) > tol
            if bad.any():
                n_upd_bad += 1
                i = np.unravel_index(np.argmax(np.abs(p_got - p_exp) - tol), p_got.shape)
                check(False, "%s: params_2 is not one AdamW step from params_1: %d/%d elements off, worst at %s: "
                      "got %.9g, expected %.9g (p1 %.9g, m2 %.3g, v2 %.3g)"
                      % (name, bad.sum(), bad.size, list(i), p_got[i], p_exp[i], p_prev[i], m[i], v[i]))
        n = len(want_shapes)
        print("  info  worst step-%d gradient rel err %.2e; %d zero reference gradients" % (s, worst, n_zero))
        print("  %s  step %d: adam_v matches the reference for %d/%d tensors (rel err < %.0e)"
              % ("PASS" if not n_v_bad else "FAIL", s, n - n_v_bad, n, ADAM_V_RTOL))
        if s == 2:
            print("  %s  params_2 = one AdamW step from params_1 and m2, v2 (lr %g, wd 0) for %d/%d tensors"
                  % ("PASS" if not n_upd_bad else "FAIL", LR, n - n_upd_bad, n))

    if adapters:
        adapted = sorted({n.split(".")[-2].replace("_proj", "") for n in want_shapes if ".layers." in n
                          and ("_proj." in n)})
        print("  info  adapted modules: %s" % adapted)


if __name__ == "__main__":
    main()
    if failures:
        print("\noracle: FAIL: %d check(s) failed:" % len(failures))
        for f_ in failures:
            print("  - " + f_)
        sys.exit(1)
    print("\noracle: PASS")
