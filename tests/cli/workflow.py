#!/usr/bin/python3
"""The tools around training, end to end: tokenize writes the bytes of its inputs, in order, split
into train and the last --val-fraction as val; init + train + merge give a model whose
validation loss equals the adapted model's; an f16 model file loads and trains.
Prints PASS/FAIL per check and exits nonzero on any failure."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clitest as ct  # noqa: E402

check = ct.check



def run(argv):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        print("command failed:", " ".join(argv), "\n", r.stderr.decode(errors="replace"))
        sys.exit(1)
    return r.stdout.decode()


def eval_losses(log):
    with open(log) as f:
        return [json.loads(l)["val_loss"] for l in f if '"eval"' in l]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = lambda n: os.path.join(a.workdir, n)
    B = a.onelora

    # tokenize: two files concatenated in order, bytes as tokens, 10% (rounded) to val
    rng = np.random.default_rng(3)
    parts = [bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), "héllo wörld\n".encode() * 100]
    for i, p in enumerate(parts):
        with open(w("in%d.txt" % i), "wb") as f:
            f.write(p)
    run([B, "tokenize", "--in", w("in0.txt"), w("in1.txt"), "--out", w("d.h5"), "--val-fraction", "0.1"])
    data = b"".join(parts)
    n_val = int(round(0.1 * len(data)))
    with h5py.File(w("d.h5"), "r") as f:
        train, val = f["train"][...], f["val"][...]
        check("tokenize.vocab", int(f.attrs["vocab_size"]) == 256)
        check("tokenize.dtype", train.dtype == np.uint16 and val.dtype == np.uint16, str(train.dtype))
    expect = np.frombuffer(data, dtype=np.uint8)
    check("tokenize.split", len(val) == n_val and len(train) == len(data) - n_val,
          "train %d val %d" % (len(train), len(val)))
    check("tokenize.bytes", np.array_equal(np.concatenate([train, val]), expect))

    # init (f16) -> train 1lora -> merge -> the merged model's val loss equals the adapted one's
    run([B, "init", "--preset", "tiny", "--seed", "5", "--dtype", "f16", "--out", w("m.h5")])
    with h5py.File(w("m.h5"), "r") as f:
        check("init.f16", f["model.layers.0.mlp.up_proj.weight"].dtype == np.float16)
    common = ["--data", w("d.h5"), "--micro-batch", "2", "--seq-len", "32", "--eval-every", "6",
              "--eval-batches", "2", "--seed", "1"]
    run([B, "train", "--model", w("m.h5"), "--method", "1lora", "--steps", "6", "--lr", "0.05",
         "--ckpt-dir", w("ck"), "--log", w("train.jsonl")] + common)
    adapted = eval_losses(w("train.jsonl"))
    check("train.improves", adapted[-1] < adapted[0], "%.4f -> %.4f" % (adapted[0], adapted[-1]))
    run([B, "merge", "--model", w("m.h5"), "--ckpt", w("ck/step-00000006.h5"), "--out", w("merged.h5")])
    run([B, "train", "--model", w("merged.h5"), "--method", "none", "--steps", "1",
         "--log", w("merged.jsonl")] + common)
    merged = eval_losses(w("merged.jsonl"))[0]
    # f32 merge of W + b 1^T reorders the sums: agreement to f32 rounding of a loss ~5
    check("merge.equivalent", abs(merged - adapted[-1]) < 1e-5 * abs(adapted[-1]),
          "adapted %.7f merged %.7f" % (adapted[-1], merged))
    return ct.finish()


if __name__ == "__main__":
    sys.exit(main())
