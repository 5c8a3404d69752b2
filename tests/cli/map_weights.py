#!/usr/bin/python3
"""Frozen weights mapped read-only from the model file (DESIGN §4): a run that maps them is
bit-identical to one that reads them (--no-map): the same values, only their address and, for a
row-parallel TP shard, their row stride differ, and no sum changes order. Checked for an f32
and a bf16 model file and a Hugging Face directory, on one rank and at TP=2, and with DoRA, whose
row-parallel shards are read instead (logged). The log names the path taken.

Sharing: two data-parallel ranks on one node that map the weights hold one copy in the page cache,
so the sum of their proportional set sizes (PSS, /proc/self/smaps_rollup) is about one copy of the
weights smaller than when each reads its own: the test asks for at least 0.8 of the weights'
bytes (the rest of the two processes is identical in both runs, up to allocator noise of a few
MiB against 64 MiB of weights). The same comparison between two --no-map runs must fail.
Prints PASS/FAIL per check and exits nonzero on any failure."""

import os
import re
import sys

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_import  # noqa: E402  (its safetensors writer)
from clitest import ENV as env, check, finish, run, same_ckpt, setup, write_tokens  # noqa: E402


def main():
    a, w = setup(mpirun_required=True)
    B = a.onelora
    for cmd in ([B, "init", "--preset", "tiny", "--seed", "5", "--layers", "3", "--out", w("m.h5")],
                [B, "convert", w("m.h5"), "--out", w("m-bf16.h5"), "--dtype", "bf16"]):
        rc, _, err = run(cmd, env)
        if rc != 0:
            print("FAIL setup: " + err)
            return 1
    cfg, tensors = hf_import.model_tensors(w("m.h5"))
    hf_import.write_hf(w("hf-bf16"), cfg, tensors, dtype="BF16", shards=2)
    write_tokens(w("d.h5"), 256, 8000, 2000)

    def train(tag, model, dtype, extra, ranks=1, data=None, seq=32, steps=2, method="1lora"):
        d = w("ck-" + tag)
        argv = [a.mpirun, "-n", str(ranks), B, "train", "--model", model, "--data", data or w("d.h5"),
                "--method", method, "--steps", str(steps), "--micro-batch", "2", "--seq-len", str(seq),
                "--ckpt-dir", d, "--weights-dtype", dtype] + extra
        rc, out, err = run(argv, env)
        if rc != 0:
            print("train %s failed: %s" % (tag, err.strip()[-300:]))
            return None, out
        return os.path.join(d, "step-%08d.h5" % steps), out

    cases = [("f32", w("m.h5"), "f32", "1lora"), ("bf16", w("m-bf16.h5"), "bf16", "1lora"),
             ("hf_bf16", w("hf-bf16"), "bf16", "1lora,norms"), ("dora", w("m.h5"), "f32", "dora")]
    for name, model, dtype, method in cases:
        for tp in (1, 2):
            tag = "%s-tp%d" % (name, tp)
            mapped, log = train(tag + "-map", model, dtype, ["--tp", str(tp)], tp, method=method)
            read, log_read = train(tag + "-read", model, dtype, ["--tp", str(tp), "--no-map"], tp,
                                   method=method)
            ok = mapped and read and same_ckpt(mapped, read)
            check("map.%s_bit_identical" % tag, ok)
            line = [l for l in log.splitlines() if l.startswith("frozen weights:")]
            want = "the rest read" if name == "dora" and tp == 2 else "matrices mapped read-only"
            check("map.%s_logged" % tag, len(line) == 1 and want in line[0], line[0] if line else log[-200:])
            check("map.%s_no_map_logged" % tag, "read into memory" in log_read and "--no-map" in log_read)
    # a header not padded to alignment leaves 2-byte values at odd offsets: read, not mapped
    hf_import.write_hf(w("hf-unpadded"), cfg, tensors, dtype="BF16", pad="odd")
    mapped, log = train("hf-unpadded-map", w("hf-unpadded"), "bf16", [])
    read, _ = train("hf-unpadded-read", w("hf-unpadded"), "bf16", ["--no-map"])
    line = [l for l in log.splitlines() if l.startswith("frozen weights:")]
    check("map.unaligned_is_read", mapped and read and same_ckpt(mapped, read) and line and
          "not a multiple of its 2-byte values" in line[0], line[0] if line else log[-200:])
    _, log = train("f32-held-bf16", w("m.h5"), "bf16", [])
    check("map.dtype_mismatch_reads", "stored as f32, held as bf16" in log,
          [l for l in log.splitlines() if l.startswith("frozen weights:")])

    # sharing: DP = 2 on one node, 64 MiB of f32 weights
    rc, _, err = run([B, "init", "--preset", "tiny", "--dim", "512", "--layers", "4", "--heads", "8",
                      "--kv-heads", "8", "--ffn", "1376", "--vocab", "4096", "--out", w("big.h5")], env)
    with h5py.File(w("big.h5"), "r") as f:
        weight_bytes = sum(f[k].size * 4 for k in f if f[k].ndim == 2)
    write_tokens(w("d4k.h5"), 4096, 20000, 2000)

    def pss_sum(tag, extra):
        _, out = train(tag, w("big.h5"), "f32", extra, 2, w("d4k.h5"), seq=16, steps=1)
        m = re.search(r"PSS \d+ MiB \(max over ranks\), (\d+) MiB \(sum\)", out)
        return float(m.group(1)) * 2 ** 20 if m else None

    mapped, read, read2 = pss_sum("dp2-map", []), pss_sum("dp2-read", ["--no-map"]), \
        pss_sum("dp2-read2", ["--no-map"])
    ok = None not in (mapped, read, read2)
    saved = (read - mapped) / weight_bytes if ok else 0
    check("map.dp2_shares_one_copy", ok and saved >= 0.8,
          "PSS sum mapped %.1f MiB, read %.1f MiB: %.2f of the %.1f MiB of weights saved"
          % ((mapped or 0) / 2 ** 20, (read or 0) / 2 ** 20, saved, weight_bytes / 2 ** 20))
    check("map.selftest_no_map_twice_saves_nothing", ok and (read2 - read) / weight_bytes < 0.8,
          "%.2f" % (((read2 or 0) - (read or 0)) / weight_bytes))
    return finish()


if __name__ == "__main__":
    sys.exit(main())
