#!/usr/bin/python3
"""End-to-end bad-input tests for the onelora CLI (DESIGN.md section 8 and section 9: "the CLI turns [an
error] into one line naming the file, flag or value").

Every bad-input case must:
  * exit with a nonzero status, by returning from main, not by a signal (no abort/segfault: a
    negative returncode in Python, or >= 128 from a wrapper);
  * print exactly one line to stderr, starting with "onelora: error: " (no HDF5 error-stack spew,
    no MPI abort banner, no second line);
  * name what is at fault: the file path, flag, dataset, attribute or value (each case lists the
    names any one of which is accepted).

Also: `--help` on train, init and tokenize exits 0 and prints usage on stdout; `onelora` without a
subcommand, or with an unknown one, exits nonzero with a one-line error.

Each case prints PASS/FAIL; the exit status is 1 if any case failed, 2 if the environment cannot run
the test (h5py/numpy missing).
"""

import argparse
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys

try:
    import h5py
    import numpy as np
except Exception as e:
    sys.stderr.write("cli: FAIL: cannot import h5py/numpy with %s (%s: %s); configure with "
                     "-DONELORA_TEST_PYTHON=/path/to/python3 that has python3-h5py\n" % (sys.executable, type(e).__name__, e))
    sys.exit(2)

TIMEOUT = 120
results = []  # (name, ok, detail)


def run(onelora, argv, timeout=TIMEOUT):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    try:
        r = subprocess.run([onelora] + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "", "timed out after %d s" % timeout
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def describe_rc(rc):
    if rc is None:
        return "timeout"
    if rc < 0:
        try:
            return "killed by signal %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "exit %d" % rc


def record(name, ok, detail):
    results.append((name, ok, detail))
    # On PASS the detail is the error line itself (worth seeing); on FAIL, the whole story.
    print("%s  %s\n      %s" % ("PASS" if ok else "FAIL", name, detail.replace("\n", "\n      ")), flush=True)


cases = []  # (check function, name, argv, extra): run concurrently, reported in order


def expect_error(onelora, name, argv, mentions):
    cases.append((judge_error, name, argv, mentions))


def expect_help(onelora, sub):
    cases.append((judge_help, "%s --help exits 0 and prints usage" % sub, [sub, "--help"], None))


def judge_error(name, argv, mentions, rc, out, err):
    """A bad-input case: nonzero exit (not a signal), one stderr line 'onelora: error: ...' naming one of `mentions`."""
    lines = [l for l in err.splitlines() if l.strip()]
    problems = []
    if rc is None:
        problems.append("timed out after %d s (the input was not rejected?)" % TIMEOUT)
    elif rc == 0:
        problems.append("exit status 0, expected nonzero")
    elif rc < 0 or rc >= 128:
        problems.append("%s: a crash/abort, not a clean error exit" % describe_rc(rc))
    if len(lines) != 1:
        problems.append("stderr has %d non-empty lines, expected exactly 1" % len(lines))
    if not lines or not lines[0].startswith("onelora: error: "):
        problems.append("stderr does not start with 'onelora: error: '")
    first = lines[0] if lines else ""
    if not any(m in first for m in mentions):
        problems.append("the error line names none of %s" % (mentions,))
    detail = "argv: onelora %s\n%s\nstderr: %r" % (" ".join(argv), describe_rc(rc), err[-1500:])
    if problems:
        detail = "; ".join(problems) + "\n" + detail
    else:
        detail = first
    record(name, not problems, detail)


def judge_help(name, argv, _, rc, out, err):
    ok = rc == 0 and "usage" in out.lower()
    record(name, ok, "%s, stdout starts %r" % (describe_rc(rc), out[:60]) if ok else
           "%s\nstdout: %r\nstderr: %r" % (describe_rc(rc), out[:500], err[:500]))


def run_cases(onelora):
    # Each onelora start spends ~0.5 s, mostly idle, in MPI start-up: run the cases concurrently.
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        futs = [pool.submit(run, onelora, argv) for _, _, argv, _ in cases]
        for (judge, name, argv, extra), fut in zip(cases, futs):
            judge(name, argv, extra, *fut.result())


def has_gpu():
    """True where nvidia-smi lists a GPU (then --device cuda may succeed in a CUDA build)."""
    try:
        r = subprocess.run(["nvidia-smi", "-L"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and b"GPU" in r.stdout


def write_data(path, vocab, n=2048, vocab_attr=None):
    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=rng.integers(0, vocab, size=n, dtype=np.uint16))
        f.create_dataset("val", data=rng.integers(0, vocab, size=n // 4, dtype=np.uint16))
        f.attrs["vocab_size"] = np.int64(vocab if vocab_attr is None else vocab_attr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onelora", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    bin_ = args.onelora
    wd = os.path.abspath(args.workdir)
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)

    V, MAXT = 64, 32
    good_model = os.path.join(wd, "good_model.h5")
    good_data = os.path.join(wd, "good_data.h5")
    rc, out, err = run(bin_, ["init", "--preset", "tiny", "--out", good_model, "--seed", "1", "--dim", "32",
                              "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "64", "--vocab", str(V),
                              "--max-seq-len", str(MAXT), "--dtype", "f32"])
    if rc != 0 or not os.path.exists(good_model):
        print("cli: FAIL: cannot make the valid model the cases start from (%s)\nstderr: %s" % (describe_rc(rc), err))
        return 1
    write_data(good_data, V)

    serial = iter(range(1000))

    def train(model=good_model, data=good_data, **over):
        """A valid train command line, with flags replaced (value None drops the flag). Each command line
        gets its own checkpoint dir and log, so that concurrent cases never share an output path."""
        k = next(serial)
        flags = {"--model": model, "--data": data, "--method": "1lora", "--targets": "all", "--steps": "1",
                 "--micro-batch": "1", "--micro-batches": "1", "--seq-len": "8", "--lr": "1e-3",
                 "--ckpt-dir": os.path.join(wd, "ckpt%02d" % k), "--log": os.path.join(wd, "log%02d.jsonl" % k)}
        for k, v in over.items():
            flags["--" + k.replace("_", "-")] = v
        argv = ["train"]
        for k, v in flags.items():
            if v is not None:
                argv += [k, v]
        return argv

    # Sanity: the baseline command line must work, or every "bad" case below proves nothing.
    train_argv = train()
    rc, out, err = run(bin_, train_argv)
    record("baseline: a valid train command succeeds", rc == 0,
           "onelora %s\n%s\nstderr: %r" % (" ".join(train_argv), describe_rc(rc), err[-1500:]))

    # ---- bad files ------------------------------------------------------------------------
    missing = os.path.join(wd, "no_such_model.h5")
    expect_error(bin_, "missing model file", train(model=missing), [missing])

    corrupt = os.path.join(wd, "corrupt_model.h5")
    with open(corrupt, "wb") as f:
        f.write(np.random.default_rng(3).integers(0, 256, size=65536, dtype=np.uint8).tobytes())
    expect_error(bin_, "corrupt model file (random bytes)", train(model=corrupt), [corrupt])

    truncated = os.path.join(wd, "truncated_model.h5")
    with open(good_model, "rb") as f:
        blob = f.read()
    with open(truncated, "wb") as f:
        f.write(blob[:len(blob) // 2])
    expect_error(bin_, "truncated model file (first half)", train(model=truncated), [truncated])

    no_dim = os.path.join(wd, "model_no_dim.h5")
    shutil.copyfile(good_model, no_dim)
    with h5py.File(no_dim, "r+") as f:
        del f.attrs["dim"]
    expect_error(bin_, "model without the 'dim' attribute", train(model=no_dim), ["dim"])

    bad_shape = os.path.join(wd, "model_bad_q.h5")
    shutil.copyfile(good_model, bad_shape)
    qname = "model.layers.0.self_attn.q_proj.weight"
    with h5py.File(bad_shape, "r+") as f:
        q = f[qname][()]
        del f[qname]
        f.create_dataset(qname, data=np.zeros((q.shape[0], q.shape[1] + 1), dtype=q.dtype))
    expect_error(bin_, "model with a wrong-shaped q_proj", train(model=bad_shape), [qname])

    # bad bytes: sizes no allocation may follow, and flipped metadata bytes (tests/fuzz does more)
    for attr, value in [("n_layers", 1 << 40), ("vocab_size", 1 << 30)]:
        huge = os.path.join(wd, "model_huge_%s.h5" % attr)
        shutil.copyfile(good_model, huge)
        with h5py.File(huge, "r+") as f:
            f.attrs[attr] = np.int64(value)
        expect_error(bin_, "model whose %s is %d" % (attr, value), train(model=huge), [attr, huge])
    ckpt = os.path.join(wd, "ckpt%02d" % 0, "step-00000001.h5")  # the baseline run's
    with open(ckpt, "rb") as f:
        blob = f.read()
    headers = [i for i in range(len(blob)) if blob[i:i + 4] == b"OHDR"]
    for k, at in enumerate(headers[:4]):
        flipped = os.path.join(wd, "ckpt_flipped_header%d.h5" % k)
        with open(flipped, "wb") as f:
            f.write(blob[:at + 24] + bytes([blob[at + 24] ^ 0x5A]) + blob[at + 25:])
        expect_error(bin_, "checkpoint with a flipped object-header byte (%d)" % k, ["inspect", flipped],
                     [flipped])

    big_vocab = os.path.join(wd, "data_big_vocab.h5")
    write_data(big_vocab, V, vocab_attr=4 * V)
    expect_error(bin_, "data vocab_size larger than the model's", train(data=big_vocab),
                 ["vocab_size", big_vocab])

    missing_data = os.path.join(wd, "no_such_data.h5")
    expect_error(bin_, "missing data file", train(data=missing_data), [missing_data])

    # A model file where a data file is expected: it has no 'train' dataset.
    expect_error(bin_, "data file without a 'train' dataset", train(data=good_model), ["train", good_model])

    # ---- bad flags and values --------------------------------------------------------------
    expect_error(bin_, "--seq-len above max_seq_len", train(seq_len=str(2 * MAXT)),
                 ["--seq-len", "max_seq_len", str(2 * MAXT)])
    expect_error(bin_, "unknown flag --bogus", train() + ["--bogus"], ["--bogus"])
    expect_error(bin_, "--steps abc", train(steps="abc"), ["--steps", "abc"])
    expect_error(bin_, "--lr nan", train(lr="nan"), ["--lr", "nan"])
    expect_error(bin_, "--steps 0", train(steps="0"), ["--steps"])
    expect_error(bin_, "--steps -3", train(steps="-3"), ["--steps"])
    expect_error(bin_, "--method nope", train(method="nope"), ["--method", "nope"])
    expect_error(bin_, "--targets q,kk", train(targets="q,kk"), ["kk"])
    # methods: invalid combinations, unknown names, bad ranks
    expect_error(bin_, "--method full,1lora", train(method="full,1lora"), ["full"])
    expect_error(bin_, "--method lora,full", train(method="lora,full"), ["full"])
    expect_error(bin_, "--method none,1lora", train(method="none,1lora"), ["none"])
    expect_error(bin_, "--method dora,lora", train(method="dora,lora"), ["dora"])
    expect_error(bin_, "--method 1lora,1lora", train(method="1lora,1lora"), ["1lora"])
    expect_error(bin_, "--method lora,", train(method="lora,"), ["--method"])
    expect_error(bin_, "--method LoRA", train(method="LoRA"), ["LoRA"])
    expect_error(bin_, "--rank 0", train(method="lora") + ["--rank", "0"], ["--rank"])
    expect_error(bin_, "--rank -2", train(method="vera") + ["--rank", "-2"], ["--rank"])
    expect_error(bin_, "--targets attn,qq", train(targets="attn,qq"), ["qq"])
    expect_error(bin_, "--targets lm_head", train(targets="lm_head"), ["lm_head"])
    expect_error(bin_, "plan --method full,norms", ["plan", "--method", "full,norms"], ["full"])
    expect_error(bin_, "--micro-batch 0", train(micro_batch="0"), ["--micro-batch"])
    expect_error(bin_, "--model without a value", train(model=None) + ["--model"], ["--model"])
    expect_error(bin_, "--device tpu", train(device="tpu"), ["--device tpu"])
    expect_error(bin_, "generate --device tpu", ["generate", "--model", good_model, "--prompt-ids", "1",
                                                 "--tokens", "1", "--device", "tpu"], ["--device tpu"])
    if not has_gpu():  # no GPU here, or a build without CUDA: one line, whichever it is
        expect_error(bin_, "--device cuda without a usable GPU", train(device="cuda"), ["--device cuda"])

    # ---- init ---------------------------------------------------------------------------------
    expect_error(bin_, "init --preset nope", ["init", "--preset", "nope", "--out", os.path.join(wd, "x.h5")],
                 ["nope", "--preset"])
    unwritable = os.path.join(wd, "no_such_dir", "m.h5")
    expect_error(bin_, "init --out in a missing directory",
                 ["init", "--preset", "tiny", "--out", unwritable, "--seed", "1"], [unwritable])

    # ---- help and subcommands ------------------------------------------------------------------
    for sub in ("train", "init", "tokenize"):
        expect_help(bin_, sub)
    # Nothing specific to name here: any one-line "onelora: error: ..." will do ("" matches any line).
    expect_error(bin_, "no subcommand", [], [""])
    expect_error(bin_, "unknown subcommand 'frobnicate'", ["frobnicate"], ["frobnicate"])
    run_cases(bin_)

    n_fail = sum(1 for _, ok, _ in results if not ok)
    print("\n%d passed, %d failed" % (len(results) - n_fail, n_fail))
    if n_fail:
        print("cli: FAIL:")
        for name, ok, _ in results:
            if not ok:
                print("  - " + name)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
