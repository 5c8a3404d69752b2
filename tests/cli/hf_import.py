#!/usr/bin/python3
"""Hugging Face input (docs/FORMATS.md, "Hugging Face input"): small HF directories built here
(one file, shards with an index, BF16, tied embeddings) train exactly as the same weights in an
onelora model file; `onelora convert` writes those weights back bit for bit, contiguous so they
can be mapped; every malformed directory gives one error line naming the file and the tensor or
key. Prints PASS/FAIL per check and exits nonzero on any failure.

Why equality is exact: both runs hold the same f32 values in memory (BF16 and F16 widen to f32
exactly) and run the same kernels in the same order on the same layout, so every checkpoint value
and loss must agree bit for bit. A self-test checks that the comparison sees a one-ulp change."""

import json
import os
import shutil
import struct
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clitest import ENV as env, check, finish, run, setup, write_tokens  # noqa: E402


def must(argv, env=None):
    rc, out, err = run(argv, env)
    if rc != 0:
        print("command failed:", " ".join(argv), "\n", err)
        sys.exit(1)
    return out


ST_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (None, 2)}


def bf16_bits(x):
    """Round-to-nearest-even bfloat16 bit patterns of float32 x (PyTorch's rounding)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def bf16_values(x):
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).float().numpy()


def write_safetensors(path, tensors, dtype="F32", header_edit=None, pad=True):
    """tensors: list of (name, float32 array). Offsets back to back in the order given; the header
    padded with spaces to a multiple of 8 bytes as the reference writer does (pad="odd": to an
    odd length, so that the data section is misaligned)."""
    header, blobs, off = {}, [], 0
    for name, a in tensors:
        if dtype == "BF16":
            raw = bf16_bits(a).tobytes()
        else:
            raw = np.ascontiguousarray(a, dtype=ST_DTYPES[dtype][0]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    if header_edit:
        header_edit(header)
    text = json.dumps(header).encode()
    if pad == "odd":  # the data section at an odd offset: no value aligned
        text += b" " * (1 - len(text) % 2)
    elif pad:
        text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def model_tensors(h5_path):
    with h5py.File(h5_path, "r") as f:
        cfg = {k: f.attrs[k] for k in f.attrs}
        return cfg, [(k, f[k][...].astype(np.float32)) for k in f.keys()]


def hf_config(cfg, tied=False, **extra):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
         "hidden_size": int(cfg["dim"]), "intermediate_size": int(cfg["ffn_dim"]),
         "num_hidden_layers": int(cfg["n_layers"]), "num_attention_heads": int(cfg["n_heads"]),
         "num_key_value_heads": int(cfg["n_kv_heads"]), "vocab_size": int(cfg["vocab_size"]),
         "max_position_embeddings": int(cfg["max_seq_len"]), "rms_norm_eps": float(cfg["norm_eps"]),
         "rope_theta": float(cfg["rope_theta"]), "tie_word_embeddings": tied, "torch_dtype": "float32"}
    c.update(extra)
    return c


def write_hf(d, cfg, tensors, dtype="F32", shards=1, tied=False, config_extra=None, header_edit=None,
             pad=True):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config(cfg, tied, **(config_extra or {})), f)
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), tensors, dtype, header_edit, pad)
        return
    # tensors dealt round-robin in reverse order: no shard holds a contiguous range of layers
    parts = [tensors[::-1][i::shards] for i in range(shards)]
    weight_map = {}
    for i, part in enumerate(parts):
        name = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
        write_safetensors(os.path.join(d, name), part, dtype, pad=pad)
        weight_map.update({t: name for t, _ in part})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def write_h5_like(src, dst, replace):
    """A copy of model file src with datasets replaced by replace[name] (f32)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for k, v in replace.items():
            del f[k]
            f.create_dataset(k, data=v.astype(np.float32))


def read_ckpt(path):
    with h5py.File(path, "r") as f:
        out = {}
        for g in ("params", "adam_m", "adam_v"):
            for k in f[g]:
                out[g + "/" + k] = f[g][k][...].tobytes()
        return out


def losses(log):
    with open(log) as f:
        return [r["loss"] for r in map(json.loads, f) if r["kind"] == "step"]


def same_run(a, b):
    """Exact equality of two runs' checkpoints and losses; returns (ok, what differs)."""
    ca, cb = read_ckpt(a[0]), read_ckpt(b[0])
    if ca.keys() != cb.keys():
        return False, "different tensors"
    bad = [k for k in ca if ca[k] != cb[k]]
    if bad:
        return False, "%d tensors differ, e.g. %s" % (len(bad), bad[0])
    if a[1] != b[1]:
        return False, "losses %s vs %s" % (a[1], b[1])
    return True, ""


def main():
    a, w = setup()
    B = a.onelora

    # a GQA model (4 query heads, 2 kv heads) with 3 layers
    must([B, "init", "--preset", "tiny", "--seed", "5", "--layers", "3", "--out", w("m.h5")])
    write_tokens(w("d.h5"), 256, 8000, 2000)
    cfg, tensors = model_tensors(w("m.h5"))
    names = [n for n, _ in tensors]

    def train(model, tag, method="1lora,norms", tp=1):
        d = w("ck-" + tag)
        shutil.rmtree(d, ignore_errors=True)
        argv = [B, "train", "--model", model, "--data", w("d.h5"), "--method", method, "--steps", "2",
                "--micro-batch", "2", "--seq-len", "32", "--lr", "1e-2", "--ckpt-dir", d,
                "--log", w(tag + ".jsonl"), "--tp", str(tp)]
        if tp > 1:
            argv = [a.mpirun, "-n", str(tp)] + argv
        rc, _, err = run(argv, env)
        if rc != 0:
            print("train %s failed: %s" % (tag, err.strip()[-400:]))
            return None
        return os.path.join(d, "step-00000002.h5"), losses(w(tag + ".jsonl"))

    def compare(name, model_a, model_b, **kw):
        ra, rb = train(model_a, name + "-a", **kw), train(model_b, name + "-b", **kw)
        ok, why = same_run(ra, rb) if ra and rb else (False, "a run failed")
        check(name, ok, why)
        return ra

    # one file, F32; then shards with an index; then the full method (every weight trained)
    write_hf(w("hf-f32"), cfg, tensors)
    ref = compare("hf.f32_equals_h5", w("hf-f32"), w("m.h5"))
    write_hf(w("hf-sharded"), cfg, tensors, shards=3)
    compare("hf.sharded_equals_h5", w("hf-sharded"), w("m.h5"))
    compare("hf.sharded_full_method", w("hf-sharded"), w("m.h5"), method="full")

    # self-test: the comparison sees one ulp of one weight
    nudged = [(n, np.nextafter(t, np.float32(np.inf)) if n == names[3] else t) for n, t in tensors]
    write_hf(w("hf-nudged"), cfg, nudged)
    rn = train(w("hf-nudged"), "nudged")
    check("hf.selftest_one_ulp_is_seen", rn is not None and ref is not None and not same_run(ref, rn)[0])

    # BF16 and F16: training equals the model file holding the rounded values as f32
    for st, rounded in (("BF16", bf16_values), ("F16", lambda x: x.astype(np.float16).astype(np.float32))):
        write_hf(w("hf-" + st), cfg, tensors, dtype=st)
        write_h5_like(w("m.h5"), w("m-%s.h5" % st), {n: rounded(t) for n, t in tensors})
        compare("hf.%s_equals_rounded_h5" % st.lower(), w("hf-" + st), w("m-%s.h5" % st))

    # tied embeddings: no lm_head in the directory; the model file holds a copy of the embedding
    embed = dict(tensors)["model.embed_tokens.weight"]
    write_hf(w("hf-tied"), cfg, [(n, t) for n, t in tensors if n != "lm_head.weight"], tied=True)
    write_h5_like(w("m.h5"), w("m-tied.h5"), {"lm_head.weight": embed})
    compare("hf.tied_equals_copied_head", w("hf-tied"), w("m-tied.h5"))
    rc, _, err = run([B, "train", "--model", w("hf-tied"), "--data", w("d.h5"), "--method", "full",
                      "--steps", "1", "--seq-len", "16"], env)
    check("hf.tied_full_refused", rc != 0 and "tie_word_embeddings" in err, err.strip()[-200:])

    # tensor parallelism: each rank reads its slice of the shards
    if a.mpirun:
        compare("hf.sharded_tp2_equals_h5_tp2", w("hf-sharded"), w("m.h5"), tp=2)

    # convert: the weights back bit for bit, in the source's dtype unless --dtype; contiguous and
    # unfiltered datasets (mappable)
    must([B, "convert", w("hf-sharded"), "--out", w("c.h5")])
    with h5py.File(w("c.h5"), "r") as f, h5py.File(w("m.h5"), "r") as g:
        same = sorted(f.keys()) == sorted(g.keys()) and all(
            f[k].dtype == np.float32 and f[k][...].tobytes() == g[k][...].tobytes() for k in g)
        mappable = all(f[k].chunks is None and f[k].compression is None and f[k].id.get_offset() is not None
                       for k in f)
        attrs = all(f.attrs[k] == g.attrs[k] for k in g.attrs)
    check("convert.f32_bit_identical", same and attrs)
    check("convert.contiguous_mappable", mappable)
    must([B, "convert", w("hf-BF16"), "--out", w("c-bf16.h5")])
    with h5py.File(w("c-bf16.h5"), "r") as f:
        k = names[3]
        raw = f[k].id.get_offset()
        is_2byte = f[k].id.get_storage_size() == 2 * f[k].size
    with open(w("c-bf16.h5"), "rb") as fh:
        fh.seek(raw)
        bits = np.frombuffer(fh.read(2 * dict(tensors)[k].size), dtype=np.uint16)
    check("convert.bf16_keeps_bits", is_2byte and np.array_equal(bits, bf16_bits(dict(tensors)[k]).ravel()))
    compare("convert.bf16_trains_as_dir", w("c-bf16.h5"), w("hf-BF16"))
    must([B, "convert", w("hf-tied"), "--out", w("c-tied.h5"), "--dtype", "f16"])
    with h5py.File(w("c-tied.h5"), "r") as f:
        ok = f["lm_head.weight"].dtype == np.float16 and np.array_equal(
            f["lm_head.weight"][...], embed.astype(np.float16))
    check("convert.tied_f16_head_written", ok)

    # malformed directories: one error line naming the file and the tensor or key
    def bad(name, expect, cfg_extra=None, drop=None, header_edit=None, shards=1, edit=None):
        d = w("bad-" + name)
        keep = [(n, t) for n, t in tensors if n != drop]
        write_hf(d, cfg, keep, shards=shards, config_extra=cfg_extra, header_edit=header_edit)
        if edit:
            edit(d)
        rc, out, err = run([B, "train", "--model", d, "--data", w("d.h5"), "--steps", "1",
                            "--seq-len", "16"], env)
        lines = [l for l in err.splitlines() if l.strip()]
        ok = rc not in (0, -6, -11) and len(lines) == 1 and lines[0].startswith("onelora: error: ") \
            and all(e in lines[0] for e in expect)
        check("bad." + name, ok, lines[-1] if lines else "(no output, rc %d)" % rc)

    k_proj = "model.layers.1.self_attn.k_proj.weight"
    bad("missing_tensor", [k_proj, "missing"], drop=k_proj)
    bad("missing_tensor_sharded", [k_proj, "missing"], drop=k_proj, shards=3)
    bad("wrong_shape", [k_proj, "shape"],
        header_edit=lambda h: h[k_proj].update(shape=h[k_proj]["shape"][::-1]))
    bad("span_mismatch", ["model.safetensors", k_proj, "bytes"],
        header_edit=lambda h: h[k_proj].update(shape=[h[k_proj]["shape"][0], 1]))
    bad("unknown_dtype", ["model.safetensors", k_proj, "I8"],
        header_edit=lambda h: h[k_proj].update(dtype="I8"))
    bad("missing_key", ["config.json", "intermediate_size"], cfg_extra={"intermediate_size": None})
    bad("not_llama", ["config.json", "model_type"], cfg_extra={"model_type": "gpt2"})
    bad("rope_scaling", ["config.json", "rope_scaling"], cfg_extra={"rope_scaling": {"type": "linear", "factor": 2.0}})
    bad("config_bigger_than_data", ["config.json", "describes"], cfg_extra={"num_hidden_layers": 300})
    bad("huge_width", ["config.json", "hidden_size"], cfg_extra={"hidden_size": 1 << 40})

    def point_index(d, to):
        p = os.path.join(d, "model.safetensors.index.json")
        idx = json.load(open(p))
        idx["weight_map"][k_proj] = to
        json.dump(idx, open(p, "w"))
    bad("index_escapes_dir", ["model.safetensors.index.json", k_proj, "../x.safetensors"], shards=3,
        edit=lambda d: point_index(d, "../x.safetensors"))
    bad("index_wrong_shard", ["model.safetensors.index.json", k_proj, "does not hold it"], shards=3,
        edit=lambda d: point_index(d, "model-00001-of-00003.safetensors" if k_proj not in
                                   dict(tensors[::-1][0::3]) else "model-00002-of-00003.safetensors"))
    bad("index_missing_shard", ["model-00009-of-00009.safetensors", "cannot open"], shards=3,
        edit=lambda d: point_index(d, "model-00009-of-00009.safetensors"))

    def truncate(d):
        p = os.path.join(d, "model.safetensors")
        os.truncate(p, os.path.getsize(p) - 100)
    bad("truncated", ["model.safetensors"], edit=truncate)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
