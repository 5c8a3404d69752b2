#!/usr/bin/python3
"""`onelora plan` trainable counts: computed here from DESIGN §7's per-layer formulas and the shape
that plan itself reports, compared with plan's count, and for the paper's five settings also
with the paper's published figures; the LLaMA-2 presets' shapes against Meta's configs (70B
with GQA) and their weight counts against the same formulas. Prints PASS/FAIL per case; exits nonzero on any failure."""

import argparse
import csv
import io
import math
import subprocess
import sys

PAPER = [  # (preset, method, targets, rank, trainable parameters in the 1LoRA paper)
    ("llama2-7b", "1lora", "all", 1, 1359872),
    ("llama2-13b", "1lora", "all", 1, 2129920),
    ("llama2-7b", "lora", "all", 1, 2498560),
    ("llama2-7b", "lora", "q,k,v", 1, 786432),
    ("llama2-13b", "lora", "q,k,v", 1, 1228800),
]
LLAMA2 = {  # Meta's config.json: (dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab_size)
    "llama2-7b": (4096, 32, 32, 32, 11008, 32000),
    "llama2-13b": (5120, 40, 40, 40, 13824, 32000),
    "llama2-70b": (8192, 80, 64, 8, 28672, 32000),  # GQA: 8 kv heads
}
SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size")
PROJ = ["q", "k", "v", "o", "gate", "up", "down"]
GROUPS = {"all": PROJ, "attn": PROJ[:4], "mlp": PROJ[4:]}


def shapes(c):
    D, F = int(c["dim"]), int(c["ffn_dim"])
    kv = int(c["n_kv_heads"]) * D // int(c["n_heads"])
    return {"q": (D, D), "k": (kv, D), "v": (kv, D), "o": (D, D), "gate": (F, D), "up": (F, D),
            "down": (D, F)}  # (d = out, k = in)


def rhat(k, d, r, even=False):
    h = math.floor(math.sqrt((k + d) * r) + 0.5)
    return h - (h % 2) if even else h


def per_layer(method, d, k, r):
    return {"1lora": d, "1lora-random": d, "bitfit": d, "lora": r * (k + d),
            "dora": r * (k + d) + d, "vera": d + r, "mora": rhat(k, d, r) ** 2,
            "mora6": rhat(k, d, r, even=True) ** 2}[method]


def expected(c, methods, targets, r):
    L, D, V = int(c["n_layers"]), int(c["dim"]), int(c["vocab_size"])
    sh = shapes(c)
    names = [t for g in targets.split(",") for t in GROUPS.get(g, [g])]
    total = 0
    for m in methods.split(","):
        if m == "norms":
            total += D * (2 * L + 1)
        elif m == "full":
            total += 2 * V * D + D * (2 * L + 1) + L * sum(d * k for d, k in sh.values())
        else:
            total += L * sum(per_layer(m, *sh[t], r) for t in names)
    return total


def model_weights(c):
    """Every weight of the model file: embedding, LM head, norms and the seven projections."""
    L, D, V = int(c["n_layers"]), int(c["dim"]), int(c["vocab_size"])
    return 2 * V * D + D * (2 * L + 1) + L * sum(d * k for d, k in shapes(c).values())


def plan(onelora, preset, method, targets, rank):
    out = subprocess.run([onelora, "plan", "--preset", preset, "--method", method, "--targets",
                          targets, "--rank", str(rank), "--csv"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, check=True).stdout.decode()
    return next(csv.DictReader(io.StringIO(out)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    a = ap.parse_args()
    failures = 0

    def check(name, ok, detail):
        nonlocal failures
        print("%s %s %s" % ("PASS" if ok else "FAIL", name, detail))
        failures += 0 if ok else 1

    for preset, method, targets, rank, paper in PAPER:
        try:
            c = plan(a.onelora, preset, method, targets, rank)
        except subprocess.CalledProcessError as e:
            check("paper.%s.%s.%s" % (preset, method, targets), False,
                  "plan failed: %s" % e.stderr.decode().strip())
            continue
        want = expected(c, method, targets, rank)
        got = int(c["trainable"])
        check("paper.%s.%s.%s" % (preset, method, targets), got == want == paper,
              "plan %d formula %d paper %d" % (got, want, paper))
    for preset, want in LLAMA2.items():  # the presets' shapes, and their weight counts
        c = plan(a.onelora, preset, "1lora", "all", 1)
        got = tuple(int(c[k]) for k in SHAPE_FIELDS)
        check("shape.%s" % preset, got == want, "plan %s want %s" % (got, want))
        check("weights.%s" % preset, int(c["model_weights"]) == model_weights(c),
              "plan %s formula %d" % (c["model_weights"], model_weights(c)))
    cases = [(p, m, t, r) for p in ("tiny", "llama2-7b", "llama2-70b")
             for m in ("1lora", "1lora-random", "lora", "dora", "vera", "mora", "mora6", "bitfit",
                       "norms", "full", "1lora,norms", "1lora,bitfit", "lora,norms")
             for t, r in (("all", 1), ("attn", 2), ("q,v,down", 4))
             if not (m == "full" and t != "all")]
    for preset, method, targets, rank in cases:
        try:
            c = plan(a.onelora, preset, method, targets, rank)
        except subprocess.CalledProcessError as e:
            check("formula.%s.%s.%s.r%d" % (preset, method, targets, rank), False,
                  "plan failed: %s" % e.stderr.decode().strip())
            continue
        want, got = expected(c, method, targets, rank), int(c["trainable"])
        check("formula.%s.%s.%s.r%d" % (preset, method, targets, rank), got == want,
              "plan %d formula %d" % (got, want))
    total = len(PAPER) + 2 * len(LLAMA2) + len(cases)
    print("%d passed, %d failed" % (total - failures, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
