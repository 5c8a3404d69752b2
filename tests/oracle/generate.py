#!/usr/bin/python3
"""Oracle test of `onelora generate`: its greedy tokens against greedy decoding by the float64
PyTorch reference (tests/oracle/llama.py) with the same checkpoint's adapters, for one method.

  1. `onelora init` makes the small MHA model of check_method.py (D 64, L 2, H 4, F 160, V 256,
     max_seq_len 64) and check_method.perturb_model rewrites its weights (distinct norms, sharp
     attention) so that logits are far from uniform and their top-2 gaps are large.
  2. `onelora train` runs STEPS steps of the method at a large learning rate on random tokens, so
     the adapters (or the trained norms / weights) are far from their init, and writes a checkpoint.
  3. `onelora generate --ckpt C --temperature 0 --print-ids` greedily continues a random prompt by
     N tokens, with the KV cache.
  4. The reference loads the model and the checkpoint (method, targets, rank, alpha from its root
     attributes; params and the frozen group, as check_method.py does) and decodes greedily, the
     whole sequence every step, in float64.

The ids must be equal. Greedy ids can legitimately differ only at a near-tie, so at every step
the reference's top-2 logit gap is recorded, and the test requires the smallest to exceed GAP_MIN,
far above onelora's f32 error in a logit: with unit roundoff u = 2^-24 ~ 6e-8, dot products of
length <= 160 and 2 layers, check_method.py bounds the relative forward error of a loss by 1e-5
(a few hundred u, ~1e-7 seen); a logit of magnitude |z| then carries at most ~1e-5 (1 + |z|), and
GAP_MIN = 2e-4 (1 + max |z|) is twenty times that (and some thousand times the error typically
seen). With this model and seed the smallest gap per method is 9e-4 .. 2e-2 (logits up to ~3). When the ids differ, the gap at the first
difference is reported. The comparison must fail for a deliberately wrong reference: the base
model without the checkpoint's trained values (for --method none, which trains nothing: the
final norm's weight replaced by ones).

Exit status 0 when every check passes, 1 on any failure, 2 without torch / h5py."""

import argparse
import os
import shutil
import subprocess
import sys

try:
    import h5py
    import numpy as np
    import torch
except Exception as e:  # the environment is wrong: fail loudly
    sys.stderr.write("oracle: FAIL: cannot import torch/h5py/numpy with %s (%s: %s)\n"
                     % (sys.executable, type(e).__name__, e))
    sys.exit(2)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_method as cm  # noqa: E402
import llama  # noqa: E402

N_NEW = 16          # tokens generated
N_PROMPT = 8        # random prompt ids
STEPS = 4           # training steps before generating
LR = 3e-2           # large, so that the trained values move the greedy tokens
GAP_REL = 2e-4      # GAP_MIN = GAP_REL * (1 + max |logit|), see the docstring


def run(cmd, what):
    print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=300)
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    if r.returncode != 0:
        print("oracle: FAIL: %s exited with %d\n%s\n%s" % (what, r.returncode, out[-2000:], err[-2000:]))
        sys.exit(1)
    return out


def greedy(model, prompt, n):
    """-> (ids, gaps, max |logit|): greedy continuation by n tokens, recomputing the whole sequence
    each step; gaps[i] = top-1 minus top-2 logit at step i."""
    ids = list(prompt)
    gaps, zmax = [], 0.0
    with torch.no_grad():
        for _ in range(n):
            z = model.forward(torch.tensor([ids], dtype=torch.int64))[0, -1].numpy()
            top = np.argsort(-z, kind="stable")[:2]
            gaps.append(float(z[top[0]] - z[top[1]]))
            zmax = max(zmax, float(np.max(np.abs(z))))
            ids.append(int(np.argmax(z)))  # the lowest id on a tie, as onelora's sampler
    return ids, gaps, zmax


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--method", default="1lora")
    ap.add_argument("--targets", default="all")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    torch.set_num_threads(2)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    w = lambda n: os.path.join(args.workdir, n)
    shp = cm.SHAPES["mha"]
    print("oracle generate: method %s targets %s (torch %s)" % (args.method, args.targets, torch.__version__))

    run([args.onelora, "init", "--preset", "tiny", "--out", w("m.h5"), "--seed", str(args.seed),
         "--dim", str(shp["dim"]), "--layers", str(shp["layers"]), "--heads", str(shp["heads"]),
         "--kv-heads", str(shp["kv_heads"]), "--ffn", str(shp["ffn"]), "--vocab", str(shp["vocab"]),
         "--max-seq-len", str(shp["max_seq_len"]), "--dtype", "f32"], "onelora init")
    cfg, _ = llama.load_model(w("m.h5"))
    cm.perturb_model(w("m.h5"), cfg, args.seed + 2)
    cfg, weights = llama.load_model(w("m.h5"))
    cm.make_data(w("d.h5"), cfg.vocab_size, args.seed + 1)
    run([args.onelora, "train", "--model", w("m.h5"), "--data", w("d.h5"), "--method", args.method,
         "--targets", args.targets, "--rank", "2", "--alpha", "4", "--steps", str(STEPS),
         "--micro-batch", "2", "--seq-len", "16", "--lr", repr(LR), "--schedule", "constant",
         "--clip", "0", "--seed", str(args.seed), "--no-shuffle", "--ckpt-dir", w("ckpt")], "onelora train")
    ckpt = w("ckpt/step-%08d.h5" % STEPS)

    prompt = [int(x) for x in np.random.default_rng(args.seed + 5).integers(0, cfg.vocab_size, N_PROMPT)]
    out = run([args.onelora, "generate", "--model", w("m.h5"), "--ckpt", ckpt, "--prompt-ids",
               ",".join(map(str, prompt)), "--tokens", str(N_NEW), "--temperature", "0", "--print-ids"],
              "onelora generate")
    got = [int(x) for x in out.strip().split(",")]

    # the reference with the checkpoint, as check_method.py loads one
    with h5py.File(ckpt, "r") as f:
        a = f.attrs
        method, targets = llama.attr_str(a["method"]), llama.attr_str(a["targets"])
        rank = int(np.asarray(a["rank"]).reshape(-1)[0])
        alpha = float(np.asarray(a["alpha_x1000"]).reshape(-1)[0]) / 1000.0 if "alpha_x1000" in a else 4.0
        groups = {}
        for g in ("params", "frozen"):
            groups[g] = {}
            if g in f:
                f[g].visititems(lambda n, o, g=g: groups[g].__setitem__(n, o[()].astype(np.float64))
                                if isinstance(o, h5py.Dataset) else None)
    cm.check(method == args.method, "checkpoint method attribute %r" % method)
    ref = llama.Llama(cfg, weights, method=method, targets=llama.parse_targets(targets), rank=rank,
                      alpha=alpha, frozen=groups["frozen"])
    ref.set_params(groups["params"])
    want, gaps, zmax = greedy(ref, prompt, N_NEW)
    gap_min = GAP_REL * (1.0 + zmax)
    print("  info  reference top-2 gaps: min %.3e (GAP_MIN %.3e, max |logit| %.3f)" % (min(gaps), gap_min, zmax))
    cm.check(min(gaps) > gap_min, "every step's top-2 gap %.3e exceeds GAP_MIN %.3e: no near-tie"
             % (min(gaps), gap_min))
    d = first_difference(got, want)
    cm.check(d is None, "greedy ids equal the reference's%s\n     onelora   %s\n     reference %s" % (
        "" if d is None else " (first difference at position %d, the reference's top-2 gap there %.3e)"
        % (d, gaps[d - N_PROMPT] if N_PROMPT <= d < N_PROMPT + N_NEW else float("nan")), got, want))

    # a deliberately wrong reference must be told apart
    if method == "none":
        wrong_w = dict(weights)
        wrong_w["model.norm.weight"] = np.ones_like(weights["model.norm.weight"])
        wrong = llama.Llama(cfg, wrong_w, method="none")
        what = "the final norm's weight replaced by ones"
    else:
        wrong = llama.Llama(cfg, weights, method="none")
        what = "the base model without the checkpoint's trained values"
    bad, _, _ = greedy(wrong, prompt, N_NEW)
    cm.check(first_difference(got, bad) is not None, "not vacuous: a wrong reference (%s) gives other ids %s"
             % (what, bad))


if __name__ == "__main__":
    main()
    if cm.failures:
        print("\noracle: FAIL: %d check(s) failed" % len(cm.failures))
        sys.exit(1)
    print("\noracle: PASS")
