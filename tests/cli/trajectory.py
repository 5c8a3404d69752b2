#!/usr/bin/python3
"""onelora inspect --trajectory and jobs/trajectory.sh, end to end, on checkpoints made by the real
binary: a tiny model trained 3 steps with --ckpt-every 1 for lora, dora, 1lora, 1lora-random,
1lora,norms, vera, mora, mora6 (r^ <= k, and r^ > k where mora6's inputs overlap), bitfit, norms
and full (norms and full also with --model).

Every CSV row is recomputed in numpy (float64) from the h5py-read checkpoints, delta W built
whole and literally from DESIGN §7 and the methods' merge (lora s B A, vera's sliced shared
matrices, MoRA's cyclic map, MoRA-6's rotations back), and compared within a bound derived from
the f32 arithmetic inspect does (error model below); the deltas against the differences of
neighbouring checkpoints. Each comparison is also run on a deliberately wrong reference (a
relative 1e-5 off, lora without its scale s, vera with the rows of B reversed, mora6 read as
mora, deltas against the first checkpoint) and must fail. The CSV's exact format, the human
output, the error lines (empty and missing directories, a bit-flipped and a truncated
checkpoint, runs of another method, shape and seed mixed in, a renamed file, a bad --model, bad
flag combinations) and jobs/trajectory.sh (valid PNGs with their .dat/.gp; a clear error
without gnuplot or on a bad directory) are checked. The PNG checks are skipped, with the reason
printed, where gnuplot is missing.

Prints PASS/FAIL per check; exits 1 on any failure."""

import csv
import io
import math
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clitest import check, finish, flip_dataset_bytes, png_size, run, setup  # noqa: E402

# ---- the error model ----------------------------------------------------------------------------
# inspect forms each element of delta W in f32 and sums squares in double:
#   an element that is a sum of n f32 terms (products, scalings, cyclic overlaps), each term
#   rounded once, is within gamma(n) * (the same sum of the terms' absolute values) of the exact
#   value (Higham, Thm 3.1; an FMA only tightens it), u = 2^-24 the f32 unit roundoff;
#   so ||fl(E) - E||_F <= ||bound||_F, and | ||fl(E)|| - ||E|| | <= ||fl(E) - E||_F;
#   the double sum of N squares adds at most gamma_d(N) ~ N * 2^-53 relative to the square
#   (half of it to the norm; N * 1.2e-16 is a safe round-up), and printing with %.9g rounds to 9
#   significant digits, at most 5e-9 relative.
U = 2.0 ** -24
PRINT_REL = 5e-9


def gamma(n):
    return n * U / (1 - n * U)


def tolerance(value, bound_sq, n_squares):
    return math.sqrt(bound_sq) + value * (n_squares * 1.2e-16 + PRINT_REL) + 1e-300


MODULES = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
           "self_attn.o_proj": "o", "mlp.gate_proj": "gate", "mlp.up_proj": "up",
           "mlp.down_proj": "down", "input_layernorm": "attn_norm",
           "post_attention_layernorm": "mlp_norm"}
PROJ_ORDER = ["q", "k", "v", "o", "gate", "up", "down", "attn_norm", "mlp_norm"]


def split_name(name, n_layers):
    """'model.layers.3.self_attn.q_proj.lora_A' -> (3, 'q', 'lora_A'); None outside the layers."""
    parts = name.split(".")
    if len(parts) < 4 or parts[0] != "model" or parts[1] != "layers" or not parts[2].isdigit():
        return None
    layer = int(parts[2])
    for mod, short in MODULES.items():
        if ".".join(parts[3:]).startswith(mod + ".") and layer < n_layers:
            return layer, short, ".".join(parts[3:])[len(mod) + 1:]
    return None


def proj_dims(attrs, proj):
    D, F = int(attrs["dim"]), int(attrs["ffn_dim"])
    kv = D // int(attrs["n_heads"]) * int(attrs["n_kv_heads"])
    d = {"q": D, "k": kv, "v": kv, "o": D, "gate": F, "up": F, "down": D}[proj]
    return d, (F if proj == "down" else D)


def read_ckpt(path):
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        params = {k: v[...].astype(np.float64) for k, v in f["params"].items()}
        frozen = {k: v[...].astype(np.float64) for k, v in f["frozen"].items()}
    return attrs, params, frozen


def cells_of(attrs, params, names=False):
    """{(layer, proj): {param: array}} of the params tensors inside the layers ({param: dataset
    name} with names)."""
    cells = {}
    for name, x in params.items():
        s = split_name(name, int(attrs["n_layers"]))
        if s:
            cells.setdefault(s[:2], {})[s[2]] = name if names else x
    return cells


def mora1_delta(M, d, k):
    """Type 1's delta W (mora.c merge): W[i, p mod k] += M[i mod r^, p mod r^], p < k_pad."""
    r = M.shape[0]
    kp = -(-k // r) * r
    E, A = np.zeros((d, k)), np.zeros((d, k))
    for i in range(d):
        for p in range(kp):
            E[i, p % k] += M[i % r, p % r]
            A[i, p % k] += abs(M[i % r, p % r])
    return E, A, gamma(max(-(-kp // k) - 1, 0))


def mora6_delta(M, d, k):
    """Type 6's delta W (mora.c merge): row i gets rot_g^T(M_a), q = i mod k_pad, g = q / r^,
    a = q mod r^, at the inputs (g r^ + s) mod k; rot_g^T: x1' = x1 c + x2 s, x2' = x2 c - x1 s
    with angle g * 10000^(-2j/r^)."""
    r = M.shape[0]
    h, kp = r // 2, -(-k // r) * r
    E, A = np.zeros((d, k)), np.zeros((d, k))
    for i in range(d):
        q = i % kp
        g, a = q // r, q % r
        ang = g * 10000.0 ** (-2.0 * np.arange(h) / r)
        x1, x2 = M[a, :h], M[a, h:]
        v = np.concatenate([x1 * np.cos(ang) + x2 * np.sin(ang), x2 * np.cos(ang) - x1 * np.sin(ang)])
        va = np.concatenate([np.abs(x1) + np.abs(x2)] * 2)
        for s in range(r):
            E[i, (g * r + s) % k] += v[s]
            A[i, (g * r + s) % k] += va[s]
    # each element: the rotation (c and s rounded to f32, two products, one sum) and up to
    # ceil(r^/k) overlapping rows summed
    return E, A, gamma(4 + -(-r // k))


_cache = {}


def cached(fn, *args):
    """fn(*args), computed once per (fn, args); a model dict is keyed by its identity."""
    key = (fn.__name__,) + tuple(id(x) if isinstance(x, dict) else x for x in args)
    if key not in _cache:
        _cache[key] = fn(*args)
    return _cache[key]


def reference(path, model=None, wrong=None):
    """{(layer, proj): (value, bound^2, squares summed)} from the checkpoint, in float64.
    wrong: None, or a deliberate mistake ('lora_no_scale', 'vera_slice', 'mora6_as_mora')."""
    attrs, params, frozen = read_ckpt(path)
    method = str(attrs["method"])
    out = {}
    names = cells_of(attrs, params, names=True)
    for (layer, proj), t in cells_of(attrs, params).items():
        sq = bsq = 0.0
        n = 0
        used = set()
        if proj in MODULES.values() and proj not in ("attn_norm", "mlp_norm"):
            d, k = proj_dims(attrs, proj)
        if "lora_A" in t:  # lora, dora: s B A
            A, B = t["lora_A"], t["lora_B"]
            s = attrs["alpha_x1000"] / 1000.0 / attrs["rank"]
            if wrong == "lora_no_scale":
                s = 1.0
            E = s * B @ A
            bound = gamma(A.shape[0] + 2) * s * np.abs(B) @ np.abs(A)
            used |= {"lora_A", "lora_B"}
        elif "vera_lambda_b" in t:  # diag(lambda_b) B[:d] diag(lambda_d) A[:, :k]
            lb, ld = t["vera_lambda_b"], t["vera_lambda_d"]
            Bd = frozen["vera_B"][:d][::-1] if wrong == "vera_slice" else frozen["vera_B"][:d]
            Ak = frozen["vera_A"][:, :k]
            S = lb[:, None] * Bd * ld[None, :]
            E = S @ Ak
            bound = gamma(len(ld) + 2) * np.abs(S) @ np.abs(Ak)
            used |= {"vera_lambda_b", "vera_lambda_d"}
        elif "mora_M" in t:
            mora6 = "mora6" in method.split(",") and wrong != "mora6_as_mora"
            E, Aabs, gam = (mora6_delta if mora6 else mora1_delta)(t["mora_M"], d, k)
            bound = gam * Aabs
            used.add("mora_M")
        else:
            E = None
        if E is not None:
            sq += float(np.sum(E * E))
            bsq += float(np.sum(bound * bound))
            n += E.size
        used.add("dora_m")  # its value needs W: in delta only
        for p, x in t.items():
            if p in used:
                continue
            if model is not None and (p == "weight" or (method == "full" and p == "bias")):
                diff = x - model[names[(layer, proj)][p]]
                sq += float(np.sum(diff * diff))
                bsq += float(np.sum((U * diff) ** 2))  # theta - theta_model rounded once in f32
            else:
                sq += float(np.sum(x * x))
            n += x.size
        out[(layer, proj)] = (math.sqrt(sq), bsq, n)
    return out


def reference_delta(path, prev_path):
    """{(layer, proj): (delta, bound^2, squares)}: the cell's tensors' difference, rounded once
    in f32 per element."""
    attrs, params, _ = read_ckpt(path)
    _, prev, _ = read_ckpt(prev_path)
    out = {}
    for cell, t in cells_of(attrs, params).items():
        sq, n = 0.0, 0
        for name in params:
            s = split_name(name, int(attrs["n_layers"]))
            if s and s[:2] == cell:
                dd = params[name] - prev[name]
                sq += float(np.sum(dd * dd))
                n += dd.size
        out[cell] = (math.sqrt(sq), U * U * sq, n)
    return out


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def compare(rows, ckdir, steps, model=None, wrong=None, wrong_delta=False, scale=1.0):
    """The mismatches between inspect's CSV rows and the references (empty = all within
    tolerance). scale != 1 multiplies every reference (a deliberately wrong value)."""
    refs = {s: cached(reference, os.path.join(ckdir, "step-%08d.h5" % s), model, wrong) for s in steps}
    bad = []
    for r in rows:
        step, cell = int(r["step"]), (int(r["layer"]), r["proj"])
        v, bsq, n = refs[step][cell]
        v *= scale
        got = float(r["value"])
        if abs(got - v) > tolerance(v, bsq, n):
            bad.append("step %d %s value %r vs %r (tol %.3g)" % (step, cell, got, v, tolerance(v, bsq, n)))
        i = steps.index(step)
        if i > 0:
            prev = steps[0] if wrong_delta else steps[i - 1]
            if wrong_delta and i == 1:
                continue  # the first delta is against the first checkpoint anyway
            dl, dbsq, dn = cached(reference_delta, os.path.join(ckdir, "step-%08d.h5" % step),
                                           os.path.join(ckdir, "step-%08d.h5" % prev))[cell]
            dl *= scale
            got = float(r["delta"])
            if abs(got - dl) > tolerance(dl, dbsq, dn):
                bad.append("step %d %s delta %r vs %r" % (step, cell, got, dl))
    return bad


def check_format(label, text, ckdir, steps):
    """The CSV exactly as docs/FORMATS.md states: header, one row per (checkpoint, layer, proj)
    in that order, integers, short names, %.9g values, delta empty on the first checkpoint."""
    lines = text.splitlines()
    problems = []
    if not lines or lines[0] != "step,layer,proj,value,delta":
        problems.append("header %r" % (lines[:1],))
    attrs, params, _ = read_ckpt(os.path.join(ckdir, "step-%08d.h5" % steps[0]))
    cells = sorted(cells_of(attrs, params), key=lambda c: (c[0], PROJ_ORDER.index(c[1])))
    want_keys = [(s, l, p) for s in steps for (l, p) in cells]
    got_keys = []
    for ln in lines[1:]:
        f = ln.split(",")
        if len(f) != 5:
            problems.append("row %r has %d fields" % (ln, len(f)))
            continue
        if not (f[0].isdigit() and f[1].isdigit() and f[2] in PROJ_ORDER):
            problems.append("row %r: step, layer not integers or proj unknown" % ln)
            continue
        got_keys.append((int(f[0]), int(f[1]), f[2]))
        if f[3] != "%.9g" % float(f[3]):
            problems.append("value %r not %%.9g" % f[3])
        first = int(f[0]) == steps[0]
        if first != (f[4] == "") or (f[4] and f[4] != "%.9g" % float(f[4])):
            problems.append("delta %r on step %s" % (f[4], f[0]))
    if got_keys != want_keys:
        problems.append("rows %s..., expected %s..." % (got_keys[:3], want_keys[:3]))
    check(label + ".csv_format", not problems, "; ".join(problems[:3]) or "%d rows" % (len(lines) - 1))


def expect_error(B, name, argv, mentions, env=None):
    rc, _, err = run([B] + argv, env)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    problems = []
    if rc == 0:
        problems.append("exit status 0")
    elif rc < 0 or rc >= 128:
        problems.append("crashed (status %d)" % rc)
    if len(lines) != 1 or not lines[0].startswith("onelora: error: "):
        problems.append("stderr is not one 'onelora: error: ' line")
    missing = [m for m in mentions if not lines or m not in lines[0]]
    if missing:
        problems.append("the line does not name %s" % missing)
    check("error." + name, not problems, ("; ".join(problems) + " stderr: %r" % err[-600:]) if problems else lines[0])


def check_script(a, w, ckdir, steps):
    script = a.script
    env = dict(os.environ, ONELORA_BIN=a.onelora)
    # without gnuplot: a clear error (PATH without it; the check precedes every other command)
    rc, _, err = run(["/bin/bash", script, ckdir, "--out", w("noplot")], dict(env, PATH="/nonexistent"))
    check("script.no_gnuplot", rc != 0 and "gnuplot not found" in err, err.strip()[-200:])
    rc, out, _ = run(["/bin/bash", script, "--help"], env)
    check("script.help", rc == 0 and "--frames" in out and "CKPT_DIR --out DIR" in out)
    if not shutil.which("gnuplot"):
        print("SKIP script.png: gnuplot not found (Debian: apt-get install gnuplot-nox; tests/slurm "
              "installs it), so trajectory.sh's pictures are not drawn here")
        return
    rc, _, err = run(["/bin/bash", script, w("empty"), "--out", w("plot_empty")], env)
    check("script.bad_dir", rc != 0 and "onelora: error:" in err and "trajectory.sh: error:" in err, err.strip()[-300:])
    out_dir = w("plot")
    rc, _, err = run(["/bin/bash", script, ckdir, "--out", out_dir, "--frames"], env)
    check("script.runs", rc == 0, err.strip()[-500:])
    if rc != 0:
        return
    names = ["trajectory"] + ["trajectory-step-%08d" % s for s in steps]
    bad = []
    for n in names:
        png = os.path.join(out_dir, n + ".png")
        size = png_size(png) if os.path.exists(png) else None
        if size is None or size[0] < 300 or size[1] < 200 or os.path.getsize(png) < 2000:
            bad.append("%s.png: %s" % (n, size))
        for ext in (".dat", ".gp"):
            if not os.path.exists(os.path.join(out_dir, n + ext)):
                bad.append(n + ext + " missing")
    check("script.pngs", not bad, "; ".join(bad) or "%d PNGs with their .dat/.gp" % len(names))
    # the picture's data are the CSV's final values
    rows = csv_rows(open(os.path.join(out_dir, "trajectory.csv")).read())
    final = {(int(r["layer"]), r["proj"]): r["value"] for r in rows if int(r["step"]) == steps[-1]}
    cols = [p for p in PROJ_ORDER if any(c[1] == p for c in final)]
    dat = {}
    for ln in open(os.path.join(out_dir, "trajectory.dat")):
        if ln.startswith("#") or not ln.strip():
            continue
        x, y, v = ln.split()
        dat[(int(y), cols[int(x)])] = v
    check("script.dat_is_final_csv", dat == final, "%d cells" % len(dat))


def main():
    a, w = setup(extra=[("--script", "jobs/trajectory.sh")])
    B = a.onelora

    rng = np.random.default_rng(0)
    with h5py.File(w("d.h5"), "w") as f:
        f.create_dataset("train", data=rng.integers(0, 256, 20000, dtype=np.uint16))
        f.create_dataset("val", data=rng.integers(0, 256, 4000, dtype=np.uint16))
        f.attrs["vocab_size"] = np.int64(256)
    shape = ["--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "64", "--vocab", "256",
             "--max-seq-len", "32"]
    for dim, name in ((32, "m.h5"), (48, "m48.h5")):
        rc, _, err = run([B, "init", "--preset", "tiny", "--seed", "3", "--dim", str(dim), "--out", w(name)] + shape)
        if not check("init." + name, rc == 0, err.strip()[-300:]):
            return finish()
    steps = [1, 2, 3]

    def train(tag, method, rank="2", model="m.h5", seed="1"):
        ckdir = w("ck_" + tag)
        rc, _, err = run([B, "train", "--model", w(model), "--data", w("d.h5"), "--method", method,
                          "--targets", "all", "--rank", rank, "--alpha", "4", "--steps", "3",
                          "--ckpt-every", "1", "--micro-batch", "2", "--seq-len", "16", "--lr", "0.01",
                          "--seed", seed, "--ckpt-dir", ckdir], dict(os.environ, OMP_NUM_THREADS="1"))
        check("train." + tag, rc == 0, err.strip()[-300:])
        return ckdir if rc == 0 else None

    # (tag, method, rank): mora at rank 2 wraps k_pad past k and tiles d past r^; mora6 at rank 24
    # has r^ > k on q, k, v (overlapping inputs) and r^ <= k on down
    runs = [("lora", "lora", "2"), ("dora", "dora", "2"), ("1lora", "1lora", "2"),
            ("1lora-random", "1lora-random", "2"), ("1lora+norms", "1lora,norms", "2"),
            ("vera", "vera", "4"), ("mora", "mora", "2"), ("mora6", "mora6", "2"),
            ("mora6-r24", "mora6", "24"), ("bitfit", "bitfit", "2"), ("norms", "norms", "2"),
            ("full", "full", "2")]
    dirs = {}
    for tag, method, rank in runs:
        d = train(tag, method, rank)
        if d:
            dirs[tag] = d
    with h5py.File(w("m.h5"), "r") as f:
        model = {k: f[k][...].astype(np.float64) for k in f if isinstance(f[k], h5py.Dataset)}

    for tag, ckdir in dirs.items():
        rc, text, err = run([B, "inspect", "--trajectory", ckdir, "--csv"])
        if not check(tag + ".runs", rc == 0, err.strip()[-300:]):
            continue
        rows = csv_rows(text)
        check_format(tag, text, ckdir, steps)
        bad = compare(rows, ckdir, steps)
        check(tag + ".values_and_deltas", not bad, "; ".join(bad[:3]) or "%d rows within the error model" % len(rows))
        # the same comparison must fail on wrong references
        check(tag + ".detects_relative_1e-5", compare(rows, ckdir, steps, scale=1 + 1e-5) != [])
        check(tag + ".detects_wrong_delta", compare(rows, ckdir, steps, wrong_delta=True) != [])
        wrong = {"lora": "lora_no_scale", "dora": "lora_no_scale", "vera": "vera_slice",
                 "mora6": "mora6_as_mora", "mora6-r24": "mora6_as_mora"}.get(tag)
        if wrong:
            check("%s.detects_%s" % (tag, wrong), compare(rows, ckdir, steps, wrong=wrong) != [])
        if tag in ("norms", "full", "1lora+norms"):
            rc, text, err = run([B, "inspect", "--trajectory", ckdir, "--csv", "--model", w("m.h5")])
            rows_m = csv_rows(text) if rc == 0 else []
            bad = compare(rows_m, ckdir, steps, model=model) if rc == 0 else [err.strip()[-300:]]
            check(tag + ".model_values", rc == 0 and not bad, "; ".join(bad[:3]))
            check(tag + ".model_detects_no_model", rc == 0 and compare(rows_m, ckdir, steps) != [])

    # the human output: one line per checkpoint, the final values as a table
    if "lora" in dirs:
        rc, out, err = run([B, "inspect", "--trajectory", dirs["lora"]])
        rows = csv_rows(run([B, "inspect", "--trajectory", dirs["lora"], "--csv"])[1])
        q0 = [r for r in rows if r["step"] == "3" and r["layer"] == "0" and r["proj"] == "q"][0]
        table = out.split("value at step 3")[-1]
        ok = (rc == 0 and "3 checkpoints, steps 1 .. 3" in out and
              any(ln.split()[:1] == ["3"] for ln in out.splitlines()) and
              "%.4e" % float(q0["value"]) in table)
        check("human_output", ok, err.strip()[-300:])
        rc, out, _ = run([B, "inspect", "--help"])
        check("help", rc == 0 and "--trajectory" in out and "--model" in out)

    # errors: one line naming what is wrong
    os.makedirs(w("empty"))
    expect_error(B, "empty_dir", ["inspect", "--trajectory", w("empty")], [w("empty"), "no checkpoint"])
    expect_error(B, "missing_dir", ["inspect", "--trajectory", w("nowhere")], [w("nowhere"), "no such directory"])
    if "lora" in dirs:
        src = dirs["lora"]

        def variant(name, extra_file=None, extra_name=None):
            d = w(name)
            shutil.copytree(src, d)
            if extra_file:
                shutil.copyfile(extra_file, os.path.join(d, extra_name))
            return d

        d = variant("flipped")
        target = "params/model.layers.1.mlp.down_proj.lora_B"
        flip_dataset_bytes(os.path.join(d, "step-00000002.h5"), target)
        expect_error(B, "flipped_bytes", ["inspect", "--trajectory", d],
                     [os.path.join(d, "step-00000002.h5"), target])
        d = variant("truncated")
        p = os.path.join(d, "step-00000003.h5")
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) // 2)
        expect_error(B, "truncated", ["inspect", "--trajectory", d], [p])
        for tag, why in (("1lora", "method"), ("lora48", "shape"), ("lora-seed2", "seed")):
            other = dirs.get(tag) or train(tag, "lora", "2", *(("m48.h5",) if tag == "lora48" else ("m.h5", "2")))
            if not other:
                continue
            d = variant("mixed-" + tag, os.path.join(other, "step-00000002.h5"), "step-00000007.h5")
            expect_error(B, "mixed_" + tag, ["inspect", "--trajectory", d],
                         [os.path.join(d, "step-00000007.h5"), why, "one run"])
        d = variant("renamed", os.path.join(src, "step-00000001.h5"), "step-00000005.h5")
        expect_error(B, "renamed", ["inspect", "--trajectory", d], [os.path.join(d, "step-00000005.h5"), "'step'"])
        expect_error(B, "model_of_other_shape", ["inspect", "--trajectory", src, "--model", w("m48.h5")], [w("m48.h5"), "not the model"])
        expect_error(B, "with_diff", ["inspect", "--trajectory", src, "--diff", os.path.join(src, "step-00000001.h5")], ["--diff"])
        expect_error(B, "with_positional", ["inspect", "--trajectory", src, os.path.join(src, "step-00000001.h5")], ["--trajectory"])
        expect_error(B, "model_without_trajectory", ["inspect", os.path.join(src, "step-00000001.h5"), "--model", w("m.h5")], ["--trajectory"])
        check_script(a, w, src, steps)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
