#!/usr/bin/python3
# (named inspect_ckpt.py, not inspect.py: that name would shadow the standard library module numpy imports)
"""onelora inspect, end to end, on checkpoints made by the real binary (1lora, 1lora,norms, lora,
vera; steps 2 and 4 of each run).

Every number inspect prints is checked against numpy on h5py reads of the same file: each
tensor's L2 / min / max / mean|x| (--csv, --csv --moments), the per-layer norms
(--csv --per-layer), ||a-b|| and ||a-b||/||b|| between steps 4 and 2 (--diff), including the
documented zero-reference cases, and the human output's summary lines. Error cases (a model file,
a text file, a truncated and a bit-flipped checkpoint, a missing file, --diff across methods and
shapes, a corrupt reference) must each exit nonzero with exactly one stderr line
"onelora: error: ..." naming the file (and the dataset for a checksum failure). Finally the h5py
example of docs/FORMATS.md ("Reading a checkpoint with h5py") is extracted, run on a checkpoint,
and its norms compared with inspect's.

Prints PASS/FAIL per check; exits 1 on any failure."""

import argparse
import csv
import io
import math
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clitest import flip_dataset_bytes  # noqa: E402

RTOL = 1e-6
failures = 0
GROUPS = ("params", "adam_m", "adam_v", "frozen")


def check(name, ok, detail=""):
    global failures
    print("%s %s %s" % ("PASS" if ok else "FAIL", name, detail), flush=True)
    failures += 0 if ok else 1


def run(argv, ok_rc=(0,)):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    if r.returncode not in ok_rc:
        print("command failed (exit %d): %s\n%s" % (r.returncode, " ".join(argv), err))
        sys.exit(1)
    return r.returncode, out, err


def close(a, b):
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-30) or (math.isinf(a) and a == b)


def read_groups(path):
    """{(group, name): float64 array} of every dataset of a checkpoint."""
    t = {}
    with h5py.File(path, "r") as f:
        for g in GROUPS:
            for name, ds in f[g].items():
                t[(g, name)] = ds[...].astype(np.float64)
    return t


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


# ---- per-tensor statistics ----------------------------------------------------------------------

def check_stats(B, ckpt, label):
    ref = read_groups(ckpt)
    for moments in (False, True):
        argv = [B, "inspect", ckpt, "--csv"] + (["--moments"] if moments else [])
        rows = csv_rows(run(argv)[1])
        want = {k for k in ref if moments or k[0] in ("params", "frozen")}
        got = {(r["group"], r["name"]) for r in rows}
        check("%s.csv%s.tensors" % (label, ".moments" if moments else ""), got == want,
              "missing %s extra %s" % (sorted(want - got)[:3], sorted(got - want)[:3]))
        bad = []
        for r in rows:
            x = ref.get((r["group"], r["name"]))
            if x is None:
                continue
            shape = "x".join(str(d) for d in x.shape)
            expect = {"l2": np.linalg.norm(x.ravel()), "min": x.min(), "max": x.max(),
                      "mean_abs": np.abs(x).mean()}
            if r["shape"] != shape or int(r["numel"]) != x.size:
                bad.append("%s shape %s numel %s, expected %s %d" % (r["name"], r["shape"], r["numel"], shape, x.size))
            for k, v in expect.items():
                if not close(float(r[k]), float(v)):
                    bad.append("%s/%s %s = %s, numpy %.17g" % (r["group"], r["name"], k, r[k], v))
        check("%s.csv%s.stats" % (label, ".moments" if moments else ""), not bad and len(rows) > 0,
              "%d rows; %s" % (len(rows), "; ".join(bad[:4])))
    return ref


# ---- per-layer summary ---------------------------------------------------------------------------

MODULES = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
           "self_attn.o_proj": "o", "mlp.gate_proj": "gate", "mlp.up_proj": "up",
           "mlp.down_proj": "down", "input_layernorm": "input_norm",
           "post_attention_layernorm": "post_norm"}
LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(%s)\." % "|".join(re.escape(m) for m in MODULES))


def expected_layers(ref):
    """{(layer, module): l2} as inspect --csv --per-layer documents it, from numpy."""
    cells, outside = {}, {}
    for (g, name), x in ref.items():
        if g != "params":
            continue
        m = LAYER_RE.match(name)
        sq = float(np.sum(x * x))
        if m:
            key = (m.group(1), MODULES[m.group(2)])
            cells[key] = cells.get(key, 0.0) + sq
        else:
            outside[("outside", name)] = math.sqrt(sq)
    want = {k: math.sqrt(v) for k, v in cells.items()}
    for layer in {l for l, _ in cells}:
        want[(layer, "total")] = math.sqrt(sum(v for (l, _), v in cells.items() if l == layer))
    for mod in {m for _, m in cells}:
        want[("all", mod)] = math.sqrt(sum(v for (_, m), v in cells.items() if m == mod))
    if cells:
        want[("all", "total")] = math.sqrt(sum(cells.values()))
    want.update(outside)
    return want


def check_layers(B, ckpt, ref, label):
    rows = csv_rows(run([B, "inspect", ckpt, "--csv", "--per-layer"])[1])
    got = {(r["layer"], r["module"]): float(r["l2"]) for r in rows}
    want = expected_layers(ref)
    bad = [("%s/%s = %.9g, numpy %.9g" % (k[0], k[1], got[k], v)) for k, v in want.items()
           if k in got and not close(got[k], v)]
    check("%s.per_layer" % label, set(got) == set(want) and not bad,
          "%d cells; missing %s extra %s %s" % (len(got), sorted(set(want) - set(got))[:3],
                                                sorted(set(got) - set(want))[:3], "; ".join(bad[:3])))


# ---- --diff ------------------------------------------------------------------------------------

def expected_diff(a, b, groups):
    want = {}
    for k in set(a) | set(b):
        if k[0] not in groups:
            continue
        if k in a and k in b:
            d = float(np.linalg.norm((a[k] - b[k]).ravel()))
            nb = float(np.linalg.norm(b[k].ravel()))
            rel = d / nb if nb > 0 else (math.inf if d > 0 else 0.0)
            want[k] = ("both", d, rel)
        else:
            want[k] = ("ckpt_only" if k in a else "other_only", None, None)
    return want


def check_diff(B, a_path, b_path, label, moments=False):
    a, b = read_groups(a_path), read_groups(b_path)
    groups = GROUPS if moments else ("params", "frozen")
    argv = [B, "inspect", a_path, "--diff", b_path, "--csv"] + (["--moments"] if moments else [])
    rows = csv_rows(run(argv)[1])
    want = expected_diff(a, b, groups)
    got = {(r["group"], r["name"]): r for r in rows}
    bad = []
    for k, (present, d, rel) in want.items():
        r = got.get(k)
        if r is None:
            bad.append("%s/%s missing" % k)
            continue
        if r["present"] != present:
            bad.append("%s/%s present %s, expected %s" % (k[0], k[1], r["present"], present))
        elif present == "both" and not (close(float(r["diff_abs"]), d) and close(float(r["diff_rel"]), rel)):
            bad.append("%s/%s diff %s %s, numpy %.9g %.9g" % (k[0], k[1], r["diff_abs"], r["diff_rel"], d, rel))
        elif present != "both" and (r["diff_abs"] or r["diff_rel"]):
            bad.append("%s/%s in one file only but has diff values" % k)
        elif present == "other_only" and r["l2"]:
            bad.append("%s/%s only in the reference but has statistics" % k)
    check("%s.diff" % label, not bad and set(got) == set(want),
          "%d rows; %s" % (len(rows), "; ".join(bad[:4])))
    return want


def check_diff_human(B, a_path, b_path, want, label):
    _, out, err = run([B, "inspect", a_path, "--diff", b_path])
    both = {k: v for k, v in want.items() if v[0] == "both"}
    worst = max(both, key=lambda k: both[k][2])
    m = re.search(r"^max change\s+(\S+) relative .* in (\S+)$", out, re.M)
    ok = (m is not None and m.group(2) == "%s/%s" % worst and
          math.isclose(float(m.group(1)), both[worst][2], rel_tol=1e-3) and err == "")
    check("%s.diff_human_summary" % label, ok, m.group(0) if m else "no 'max change' line in\n" + out[-800:])
    n_line = re.search(r"^diff\s+(\d+) tensors compared, (\d+) only in the checkpoint, (\d+) only in", out, re.M)
    counts = [sum(1 for v in want.values() if v[0] == p) for p in ("both", "ckpt_only", "other_only")]
    check("%s.diff_human_counts" % label, n_line is not None and [int(x) for x in n_line.groups()] == counts,
          n_line.group(0) if n_line else "no 'diff ... compared' line")


def check_human(B, ckpt, ref, label):
    _, out, err = run([B, "inspect", ckpt])
    with h5py.File(ckpt, "r") as f:
        step, method = int(f.attrs["step"]), f.attrs["method"]
    n = len(ref)
    ok = (re.search(r"^step\s+%d\s" % step, out, re.M) and re.search(r"^method\s+%s\s" % re.escape(method), out, re.M)
          and "all %d datasets of %s read and verified" % (n, ckpt) in out and err == "")
    check("%s.human" % label, bool(ok), "" if ok else out[:1500] + err)
    # every params tensor has a row whose l2 column matches numpy to the 5 digits printed
    bad = []
    for (g, name), x in ref.items():
        if g != "params":
            continue
        m = re.search(r"^  %s\s+\[[^\]]*\]\s+(\S+)" % re.escape(name), out, re.M)
        if not m or not math.isclose(float(m.group(1)), np.linalg.norm(x.ravel()), rel_tol=1e-4):
            bad.append(name)
    check("%s.human_l2" % label, not bad, "; ".join(bad[:3]))


# ---- errors ----------------------------------------------------------------------------------------

def expect_error(B, name, argv, mentions):
    r = subprocess.run([B] + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    err = r.stderr.decode(errors="replace")
    lines = [l for l in err.splitlines() if l.strip()]
    problems = []
    if r.returncode == 0:
        problems.append("exit status 0")
    elif r.returncode < 0 or r.returncode >= 128:
        problems.append("crashed (status %d)" % r.returncode)
    if len(lines) != 1 or not lines[0].startswith("onelora: error: "):
        problems.append("stderr is not one 'onelora: error: ' line")
    missing = [m for m in mentions if not lines or m not in lines[0]]
    if missing:
        problems.append("the line does not name %s" % missing)
    check("error." + name, not problems, "; ".join(problems) + " stderr: %r" % err[-1200:] if problems else lines[0])


# ---- docs/FORMATS.md example -----------------------------------------------------------------------

def docs_block(docs):
    text = open(docs).read()
    m = re.search(r"^#+ Reading a checkpoint with h5py\s*$.*?^```python\n(.*?)^```", text, re.M | re.S)
    return m.group(1) if m else None


def check_docs_example(B, docs, ckpt, workdir):
    code = docs_block(docs)
    check("docs.block_found", code is not None, docs)
    if code is None:
        return
    script = os.path.join(workdir, "formats_example.py")
    with open(script, "w") as f:
        f.write(code)
    r = subprocess.run([sys.executable, script, ckpt], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = r.stdout.decode()
    check("docs.runs", r.returncode == 0, r.stderr.decode()[-800:])
    norms = dict(re.findall(r"^(\S+\.onelora_b) (\S+)$", out, re.M))
    layers = dict(re.findall(r"^layer (\d+) (\S+)$", out, re.M))
    tensors = {r["name"]: float(r["l2"]) for r in csv_rows(run([B, "inspect", ckpt, "--csv"])[1])
               if r["group"] == "params" and r["name"].endswith(".onelora_b")}
    per_layer = {r["layer"]: float(r["l2"]) for r in csv_rows(run([B, "inspect", ckpt, "--csv", "--per-layer"])[1])
                 if r["module"] == "total" and r["layer"] not in ("all", "outside")}
    ok_t = set(norms) == set(tensors) and all(close(float(norms[k]), tensors[k]) for k in tensors) and tensors
    check("docs.tensor_norms_match_inspect", bool(ok_t), "%d printed, %d in inspect" % (len(norms), len(tensors)))
    ok_l = set(layers) == set(per_layer) and all(close(float(layers[k]), per_layer[k]) for k in per_layer) and per_layer
    check("docs.layer_norms_match_inspect", bool(ok_l), "doc %s inspect %s" % (layers, per_layer))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--docs", required=True, help="docs/FORMATS.md")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = lambda n: os.path.join(a.workdir, n)
    B = a.onelora

    rng = np.random.default_rng(11)
    with open(w("text.txt"), "wb") as f:
        f.write(bytes(rng.integers(32, 127, 8000, dtype=np.uint8)))
    run([B, "tokenize", "--in", w("text.txt"), "--out", w("d.h5"), "--val-fraction", "0.1"])
    shape = ["--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "64", "--vocab", "256",
             "--max-seq-len", "32"]
    run([B, "init", "--preset", "tiny", "--seed", "3", "--dim", "32", "--out", w("m.h5")] + shape)
    run([B, "init", "--preset", "tiny", "--seed", "3", "--dim", "48", "--out", w("m48.h5")] + shape)

    def train(model, method, ckdir, steps="4"):
        run([B, "train", "--model", model, "--data", w("d.h5"), "--method", method, "--rank", "2",
             "--alpha", "4", "--steps", steps, "--ckpt-every", "2", "--micro-batch", "2",
             "--seq-len", "16", "--lr", "0.01", "--seed", "1", "--ckpt-dir", ckdir])

    methods = {"1lora": "ck_1lora", "1lora,norms": "ck_1lora_norms", "lora": "ck_lora", "vera": "ck_vera"}
    for method, d in methods.items():
        train(w("m.h5"), method, w(d))
    train(w("m48.h5"), "1lora", w("ck48"), steps="2")
    step = lambda d, s: w("%s/step-%08d.h5" % (d, s))

    r = subprocess.run([B, "inspect", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    check("help", r.returncode == 0 and b"usage: onelora inspect" in r.stdout and b"--diff" in r.stdout)

    for method, d in methods.items():
        label = method.replace(",", "_")
        ref = check_stats(B, step(d, 4), label)
        check_layers(B, step(d, 4), ref, label)
        check_human(B, step(d, 4), ref, label)
        want = check_diff(B, step(d, 4), step(d, 2), label)
        check_diff_human(B, step(d, 4), step(d, 2), want, label)
    check_diff(B, step("ck_lora", 4), step("ck_lora", 2), "lora.moments", moments=True)
    # the vera checkpoint's frozen group (shared A, B) is listed
    with h5py.File(step("ck_vera", 4), "r") as f:
        check("vera.has_frozen", len(f["frozen"]) > 0)
    # across methods with tensors in common: 1lora vs 1lora,norms lists the norms as other_only
    check_diff(B, step("ck_1lora", 4), step("ck_1lora_norms", 4), "1lora_vs_1lora_norms")

    # zero references: b = 0 and a != 0 -> inf; both zero -> 0
    zref, zboth = w("zero_ref.h5"), w("zero_both.h5")
    name = "model.layers.1.self_attn.k_proj.onelora_b"
    shutil.copyfile(step("ck_1lora", 2), zref)
    shutil.copyfile(step("ck_1lora", 4), zboth)
    for p in (zref, zboth):
        with h5py.File(p, "r+") as f:
            f["params/" + name][...] = 0
    want = check_diff(B, step("ck_1lora", 4), zref, "zero_reference")
    check("zero_reference.is_inf", want[("params", name)][2] == math.inf)
    want = check_diff(B, zboth, zref, "zero_both")
    check("zero_both.is_zero", want[("params", name)][1:] == (0.0, 0.0))

    check_docs_example(B, a.docs, step("ck_1lora", 4), a.workdir)

    # errors: each one line naming the file (and the dataset of a checksum failure)
    good = step("ck_1lora", 4)
    expect_error(B, "model_file", ["inspect", w("m.h5")], [w("m.h5"), "not a onelora checkpoint"])
    expect_error(B, "text_file", ["inspect", w("text.txt")], [w("text.txt")])
    trunc = w("truncated.h5")
    blob = open(good, "rb").read()
    with open(trunc, "wb") as f:
        f.write(blob[:len(blob) // 2])
    expect_error(B, "truncated", ["inspect", trunc], [trunc])
    flipped = w("flipped.h5")
    shutil.copyfile(good, flipped)
    target = "params/model.layers.1.mlp.up_proj.onelora_b"
    flip_dataset_bytes(flipped, target)
    expect_error(B, "flipped_bytes", ["inspect", flipped], [flipped, "'%s'" % target, "checksum"])
    expect_error(B, "flipped_bytes_csv", ["inspect", flipped, "--csv"], [flipped, target])
    expect_error(B, "flipped_reference", ["inspect", good, "--diff", flipped], [flipped, target, "checksum"])
    missing = w("no_such.h5")
    expect_error(B, "missing_file", ["inspect", missing], [missing])
    expect_error(B, "missing_reference", ["inspect", good, "--diff", missing], [missing])
    expect_error(B, "diff_other_method", ["inspect", good, "--diff", step("ck_lora", 4)],
                 [good, step("ck_lora", 4), "in common"])
    expect_error(B, "diff_other_shape", ["inspect", good, "--diff", step("ck48", 2)],
                 ["model.layers.0.", step("ck48", 2), "shape"])
    expect_error(B, "per_layer_without_csv", ["inspect", good, "--per-layer"], ["--per-layer"])
    expect_error(B, "no_checkpoint", ["inspect"], ["checkpoint"])
    expect_error(B, "two_checkpoints", ["inspect", good, good], ["--diff"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
