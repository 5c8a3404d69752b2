#!/usr/bin/python3
"""onelora merge for every method, end to end: init a tiny model, train 4 steps with a learning
rate large enough that the trainables move, merge to an HDF5 model file and to a Hugging Face
directory, then check that
  (a) the merged model's validation loss equals the adapted model's last one,
  (b) model.safetensors (read with the small parser below: json + numpy) holds exactly the
      merged model file's tensors, and config.json matches its config,
  (c) BitFit merges into biases: bias datasets, attention_bias/mlp_bias set, zero biases on the
      untargeted projections of a flagged group; the merged model trains and merges again; a
      file whose config promises biases but lacks one is an error,
and that merging changed exactly the tensors the method trains.
Prints PASS/FAIL per check and a summary line per method; exits nonzero on any failure."""

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

import h5py
import numpy as np

PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
SHORT = ["q", "k", "v", "o", "gate", "up", "down"]
ATTN, MLP = {"q", "k", "v", "o"}, {"gate", "up", "down"}

# (case name, --method, extra train flags)
CASES = [
    ("1lora", "1lora", []),
    ("1lora-random", "1lora-random", []),
    ("lora", "lora", ["--rank", "2"]),
    ("dora", "dora", ["--rank", "2"]),
    ("vera", "vera", ["--rank", "2"]),
    ("mora", "mora", ["--rank", "2"]),
    ("mora6", "mora6", ["--rank", "2"]),
    ("bitfit", "bitfit", []),
    ("bitfit-qk", "bitfit", ["--targets", "q,k"]),
    ("norms", "norms", []),
    ("full", "full", []),
    ("1lora,norms", "1lora,norms", []),
    ("1lora,bitfit", "1lora,bitfit", []),
    ("lora,norms", "lora,norms", ["--rank", "2"]),
]

failures = 0
case_failures = {}
current = None


def check(name, ok, detail=""):
    global failures
    print("%s %s/%s %s" % ("PASS" if ok else "FAIL", current, name, detail), flush=True)
    if not ok:
        failures += 1
        case_failures.setdefault(current, []).append(name)
    return ok


class CommandFailed(Exception):
    pass


def run(argv, expect_ok=True):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    err = r.stderr.decode(errors="replace")
    if expect_ok and r.returncode != 0:
        raise CommandFailed("exit %d: %s\n%s" % (r.returncode, " ".join(argv), err.strip()))
    return r.returncode, err


def eval_losses(log):
    with open(log) as f:
        return [json.loads(l)["val_loss"] for l in f if '"eval"' in l]


def read_safetensors(path):
    """A minimal safetensors reader: u64 LE header length N, N bytes of JSON, then the data.
    Checks what the Rust reference checks: offsets contiguous from 0 and covering the data."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    if n % 8 or 8 + n > len(raw):
        raise ValueError("header length %d (file %d bytes) not 8-aligned or too long" % (n, len(raw)))
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    data = raw[8 + n:]
    dtypes = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
    tensors, spans = {}, []
    for name, info in header.items():
        dt = dtypes[info["dtype"]]
        shape = tuple(info["shape"])
        b, e = info["data_offsets"]
        if e - b != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise ValueError("%s: %d bytes for shape %s" % (name, e - b, shape))
        tensors[name] = np.frombuffer(data, dt, count=(e - b) // dt.itemsize, offset=b).reshape(shape)
        spans.append((b, e, name))
    pos = 0
    for b, e, name in sorted(spans):
        if b != pos:
            raise ValueError("%s starts at %d, expected %d (holes or overlap)" % (name, b, pos))
        pos = e
    if pos != len(data):
        raise ValueError("tensors cover %d bytes of a %d-byte data section" % (pos, len(data)))
    return meta, tensors


def read_h5(path):
    with h5py.File(path, "r") as f:
        return dict(f.attrs), {k: f[k][...] for k in f.keys()}


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def check_hf(hf_dir, h5_path, dtype):
    """(b): the HF directory holds the merged model file's tensors, bit for bit, and its config."""
    attrs, ref = read_h5(h5_path)
    try:
        meta, st = read_safetensors(os.path.join(hf_dir, "model.safetensors"))
    except (ValueError, KeyError) as e:
        check("hf.parse", False, str(e))
        return
    check("hf.metadata", meta == {"format": "pt"}, str(meta))
    check("hf.names", set(st) == set(ref), "extra %s missing %s" % (sorted(set(st) - set(ref))[:3],
                                                                    sorted(set(ref) - set(st))[:3]))
    bad = [k for k in ref if k in st and not same_bits(st[k], ref[k])]
    check("hf.tensors_bitwise", not bad and all(st[k].dtype == dtype for k in st),
          "%d differ, e.g. %s" % (len(bad), bad[:2]))
    left = [n for n in os.listdir(hf_dir) if n.endswith(".tmp")]
    check("hf.no_tmp", not left, str(left))
    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    want = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": int(attrs["dim"]), "intermediate_size": int(attrs["ffn_dim"]),
        "num_attention_heads": int(attrs["n_heads"]), "num_hidden_layers": int(attrs["n_layers"]),
        "num_key_value_heads": int(attrs["n_kv_heads"]), "vocab_size": int(attrs["vocab_size"]),
        "max_position_embeddings": int(attrs["max_seq_len"]),
        "rms_norm_eps": float(attrs["norm_eps"]), "rope_theta": float(attrs["rope_theta"]),
        "hidden_act": "silu", "tie_word_embeddings": False,
        "attention_bias": bool(attrs.get("attention_bias", 0)),
        "mlp_bias": bool(attrs.get("mlp_bias", 0)),
        "torch_dtype": "float16" if dtype == np.float16 else "float32",
    }
    wrong = {k: c.get(k) for k in want if c.get(k) != want[k] or type(c.get(k)) is not type(want[k])}
    check("hf.config", not wrong, "wrong: %s" % wrong)


def expected_changed(method, targets, names):
    """Tensor names that merging this method's checkpoint may change relative to the base model."""
    parts = method.split(",")
    tset = set(SHORT) if targets == "all" else set(targets.split(","))
    changed = set()
    for n in names:
        if "full" in parts:
            changed.add(n)
        if ("norms" in parts) and n.endswith("norm.weight"):
            changed.add(n)
        adapters = [p for p in parts if p not in ("norms", "full", "bitfit")]
        for p, s in zip(PROJ, SHORT):
            if s in tset and adapters and n.endswith(p + ".weight"):
                changed.add(n)
    return changed


def case(B, w, data, base, name, method, extra, common):
    os.makedirs(w)
    p = lambda n: os.path.join(w, n)
    targets = extra[extra.index("--targets") + 1] if "--targets" in extra else "all"
    # train 4 steps; --lr 0.05 constant moves every trainable well beyond f32 rounding
    run([B, "train", "--model", base, "--method", method, "--steps", "4", "--lr", "0.05",
         "--schedule", "constant", "--eval-every", "4", "--ckpt-dir", p("ck"),
         "--log", p("train.jsonl")] + extra + common)
    adapted = eval_losses(p("train.jsonl"))
    ckpt = p("ck/step-00000004.h5")
    run([B, "merge", "--model", base, "--ckpt", ckpt, "--out", p("merged.h5")])
    run([B, "merge", "--model", base, "--ckpt", ckpt, "--out", p("hf")])

    # (a) the merged model, run with no method, has the adapted model's validation loss.
    # Merging reorders f32 sums (x (W + dW)^T instead of x W^T + adapter(x), DoRA's rescale
    # folded into W), so logits differ by a few f32 ulps (~1e-7 relative each); the mean loss of
    # a few thousand tokens (~5 nats) then agrees to ~1e-6 relative. 1e-5 leaves a 10x margin
    # and still catches any real merge error, which moves the loss by >1e-3 after these steps.
    run([B, "train", "--model", p("merged.h5"), "--method", "none", "--steps", "1",
         "--eval-every", "1", "--log", p("merged.jsonl")] + common)
    merged = eval_losses(p("merged.jsonl"))[0]
    check("val_loss_equal", abs(merged - adapted[-1]) <= 1e-5 * abs(adapted[-1]),
          "adapted %.8f merged %.8f (base %.8f)" % (adapted[-1], merged, adapted[0]))

    # what changed: exactly the trained tensors (and, for bitfit, the new biases)
    _, base_t = read_h5(base)
    attrs, merged_t = read_h5(p("merged.h5"))
    want = expected_changed(method, targets, base_t)
    changed = {n for n in base_t if not same_bits(base_t[n], merged_t[n])}
    check("changed_tensors", changed == want,
          "unexpected %s, unchanged %s" % (sorted(changed - want)[:3], sorted(want - changed)[:3]))
    with h5py.File(ckpt, "r") as f:
        params = {k: f["params"][k][...] for k in f["params"].keys()}
    if "full" in method or "norms" in method:  # trained weights are copied, not merged
        bad = [n for n in params if n in merged_t and not same_bits(params[n], merged_t[n])]
        check("trained_weights_copied", not bad, str(bad[:3]))

    # (b) the Hugging Face directory
    check_hf(p("hf"), p("merged.h5"), np.float32)

    # (c) BitFit: biases
    bias_names = {n for n in merged_t if n.endswith(".bias")}
    if "bitfit" not in method:
        check("no_biases", not bias_names and "attention_bias" not in attrs, str(sorted(bias_names)[:3]))
        return
    tset = set(SHORT) if targets == "all" else set(targets.split(","))
    attn_on, mlp_on = bool(tset & ATTN), bool(tset & MLP)
    check("bias_flags", bool(attrs.get("attention_bias", 0)) == attn_on
          and bool(attrs.get("mlp_bias", 0)) == mlp_on, str(attrs))
    L = int(attrs["n_layers"])
    want_bias = {"model.layers.%d.%s.bias" % (l, m) for l in range(L) for m, s in zip(PROJ, SHORT)
                 if (attn_on and s in ATTN) or (mlp_on and s in MLP)}
    check("bias_datasets", bias_names == want_bias, "extra %s missing %s" % (
        sorted(bias_names - want_bias)[:2], sorted(want_bias - bias_names)[:2]))
    bad = []
    for n in sorted(bias_names & want_bias):
        s = SHORT[[i for i, m in enumerate(PROJ) if n.endswith(m + ".bias")][0]]
        trained = params.get(n)  # the BitFit beta, where targeted: bias = 0 + beta exactly
        ok = same_bits(merged_t[n], trained) if s in tset else not np.any(merged_t[n])
        ok = ok and (s not in tset or np.any(trained))
        if not ok:
            bad.append(n)
    check("bias_values", not bad, "wrong: %s" % bad[:3])
    if name != "bitfit":
        return

    # the merged bitfit model trains: a new adapter on top, and bitfit again, merged again
    run([B, "train", "--model", p("merged.h5"), "--method", "1lora", "--steps", "2",
         "--lr", "0.05", "--log", p("again_1lora.jsonl")] + common)
    with open(p("again_1lora.jsonl")) as f:
        steps = [json.loads(l)["loss"] for l in f if '"step"' in l]
    check("merged_trains", len(steps) == 2 and all(np.isfinite(steps)), str(steps))
    run([B, "train", "--model", p("merged.h5"), "--method", "bitfit", "--steps", "2", "--lr", "0.05",
         "--schedule", "constant", "--eval-every", "2", "--ckpt-dir", p("ck2"),
         "--log", p("again.jsonl")] + common)
    again = eval_losses(p("again.jsonl"))
    ckpt2 = p("ck2/step-00000002.h5")
    run([B, "merge", "--model", p("merged.h5"), "--ckpt", ckpt2, "--out", p("merged2.h5")])
    run([B, "train", "--model", p("merged2.h5"), "--method", "none", "--steps", "1",
         "--eval-every", "1", "--log", p("merged2.jsonl")] + common)
    merged2 = eval_losses(p("merged2.jsonl"))[0]
    check("remerge_val_loss_equal", abs(merged2 - again[-1]) <= 1e-5 * abs(again[-1]),
          "adapted %.8f merged %.8f" % (again[-1], merged2))
    _, m2 = read_h5(p("merged2.h5"))
    with h5py.File(ckpt2, "r") as f:
        beta2 = {k: f["params"][k][...] for k in f["params"].keys()}
    bad = [n for n in want_bias if not same_bits(m2[n], merged_t[n] + beta2[n])]
    check("remerge_adds_to_biases", not bad, str(bad[:3]))

    # a file whose config promises biases but lacks one is an error naming file and dataset
    shutil.copy(p("merged.h5"), p("broken.h5"))
    gone = "model.layers.1.self_attn.v_proj.bias"
    with h5py.File(p("broken.h5"), "a") as f:
        del f[gone]
    for what, argv in [("merge", [B, "merge", "--model", p("broken.h5"), "--ckpt", ckpt2,
                                  "--out", p("nope.h5")]),
                       ("train", [B, "train", "--model", p("broken.h5"), "--method", "none",
                                  "--steps", "1"] + common)]:
        rc, err = run(argv, expect_ok=False)
        lines = [l for l in err.splitlines() if "error" in l]
        check("missing_bias_is_error." + what,
              rc != 0 and len(lines) == 1 and "broken.h5" in lines[0] and gone in lines[0],
              "rc %d: %s" % (rc, err.strip()))
    check("missing_bias_no_output", not os.path.exists(p("nope.h5")))


def main():
    global current
    ap = argparse.ArgumentParser()
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--only", default="", help="run only these cases (;-separated names)")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = lambda n: os.path.join(a.workdir, n)
    B = a.onelora

    current = "setup"
    rng = np.random.default_rng(7)
    words = ["merge", "adapter", "weight", "bias", "the", "of", "a", "low", "rank", "model", "train"]
    text = " ".join(rng.choice(words, 3000)) + "\n"
    with open(w("text.txt"), "w") as f:
        f.write(text)
    run([B, "tokenize", "--in", w("text.txt"), "--out", w("d.h5"), "--val-fraction", "0.1"])
    run([B, "init", "--preset", "tiny", "--seed", "5", "--out", w("base.h5")])  # f32
    common = ["--data", w("d.h5"), "--micro-batch", "2", "--seq-len", "32", "--eval-batches", "2",
              "--seed", "1"]

    only = set(filter(None, a.only.split(";")))
    done = []
    for name, method, extra in CASES:
        if only and name not in only:
            continue
        current = name
        try:
            case(B, w("case-" + name.replace(",", "+")), w("d.h5"), w("base.h5"), name, method,
                 extra, common)
        except CommandFailed as e:
            check("commands", False, str(e))
        except Exception as e:  # a broken output file: report, go on with the next method
            check("exception", False, "%s: %s" % (type(e).__name__, e))
        done.append(name)

    # f16 output: the HF tensors equal the f16 model file's bit for bit, torch_dtype float16
    current = "f16"
    try:
        d = w("case-f16")
        os.makedirs(d)
        run([B, "train", "--model", w("base.h5"), "--method", "1lora", "--steps", "2", "--lr", "0.05",
             "--ckpt-dir", os.path.join(d, "ck")] + common)
        ck = os.path.join(d, "ck/step-00000002.h5")
        run([B, "merge", "--model", w("base.h5"), "--ckpt", ck, "--dtype", "f16", "--out",
             os.path.join(d, "m16.h5")])
        run([B, "merge", "--model", w("base.h5"), "--ckpt", ck, "--dtype", "f16", "--out",
             os.path.join(d, "hf16/nested/")])
        check_hf(os.path.join(d, "hf16/nested"), os.path.join(d, "m16.h5"), np.float16)
        # --out X.safetensors (DESIGN §8): that file, with config.json beside it
        run([B, "merge", "--model", w("base.h5"), "--ckpt", ck, "--dtype", "f16", "--out",
             os.path.join(d, "file/model.safetensors")])
        check_hf(os.path.join(d, "file"), os.path.join(d, "m16.h5"), np.float16)
    except CommandFailed as e:
        check("commands", False, str(e))

    for name in done + ["f16"]:
        bad = case_failures.get(name)
        print("SUMMARY %-14s %s" % (name, "FAIL (%s)" % ", ".join(bad) if bad else "PASS"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
