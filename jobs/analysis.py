"""Collects the results rows of onelora runs and writes a Markdown report and gnuplot PNGs.
Run through jobs/analysis.sh (see its usage); python3 standard library only.

Input: run directories (each with results.csv, written by `onelora train --results`, and an optional
`experiment` file, written by the job scripts: `compare`, `study`, `scaling-<strong|weak>-<base|dp|tp|pp>`;
runs of jobs/study.sbatch also have a `study` file: index, method, targets, lr, seed),
directories holding such run directories (searched recursively), or CSV files.
A run that was stopped and resumed has several rows in its results.csv: its `stopped` rows and
its final row form one run whose training time is the sum of their wall_s.

Output in --out DIR:
  results.csv      one row per run: experiment, run, train_s (summed wall_s), lr and seed (study
                   runs), the trainer's columns
  report.md        the study's tables and claims, the methods table and the scaling tables
  study.png        the study: each method and target set at its best learning rate (lowest mean
                   validation loss over seeds), validation loss against training time, bubble
                   area ~ trainable parameters, error bars +-1 std over seeds
  study-lr.png     the study: validation loss against learning rate, one curve per method/targets
  trajectory/<method>-<targets>/   jobs/trajectory.sh on the checkpoints of each one's best run
                   (best lr, first seed); skipped, with a note in report.md, without that script
  methods.png      validation loss against training time, bubble area ~ trainable parameters
  memory.png       peak memory per rank for each method
  scaling-strong.png, scaling-weak.png   tokens/s and step time against ranks, with the ideal
  *.dat, *.gp      the data and gnuplot scripts behind each plot (rerun with gnuplot FILE.gp)
"""
import argparse
import csv
import math
import os
import subprocess
import sys

COLUMNS = ("model,method,targets,rank,tp,pp,dp,ranks,steps,global_batch,seq_len,trainable,"
           "tokens_per_s,step_s,peak_rss_mib,bytes_dp,bytes_tp_fwd,bytes_tp_bwd,bytes_pp,"
           "train_loss,val_loss,wall_s,status").split(",")
# the columns that identify a run, so that a stopped row joins the row of its resumed run
KEY = ("model", "method", "targets", "rank", "tp", "pp", "dp", "steps", "global_batch", "seq_len")


def fail(msg):
    sys.exit(f"analysis: error: {msg}")


def read_csv(path, run, experiment):
    """The runs of one results CSV: stopped rows are merged into the next row with the same key."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else None
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    if not rows:
        return []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        fail(f"{path}: not a onelora results file (missing columns: {', '.join(missing)})")
    runs, pending = [], {}
    for i, r in enumerate(rows, start=2):
        if None in r or None in r.values():
            fail(f"{path}:{i}: {len(r.get(None, []))} fields too many or too few (unquoted comma?)")
        try:
            wall = float(r["wall_s"])
        except ValueError:
            fail(f"{path}:{i}: wall_s is not a number: '{r['wall_s']}'")
        key = tuple(r[k] for k in KEY)
        r = dict(r, train_s=wall + pending.pop(key, 0.0), run=run, experiment=experiment)
        if r["status"] == "stopped":
            pending[key] = r["train_s"]
            runs.append(r)  # replaced below if a resumed row follows
        else:
            runs = [x for x in runs if not (x["status"] == "stopped" and tuple(x[k] for k in KEY) == key)]
            runs.append(r)
    return runs


def collect(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names) if n == "results.csv"]
        elif os.path.isfile(p):
            files.append(p)
        else:
            fail(f"{p}: no such file or directory")
    if not files:
        fail(f"no results.csv under {' '.join(paths)}")
    runs = []
    for f in files:
        d = os.path.dirname(os.path.abspath(f))
        exp_file = os.path.join(d, "experiment")
        experiment = open(exp_file).read().strip() if os.path.exists(exp_file) else ""
        # jobs/study.sbatch's RUN/study: index, method, targets, lr and seed of the array task
        study = {}
        study_file = os.path.join(d, "study")
        if os.path.basename(f) == "results.csv" and os.path.exists(study_file):
            for line in open(study_file):
                k, _, v = line.strip().partition("=")
                if k:
                    study[k] = v
            missing = [k for k in ("index", "lr", "seed") if k not in study]
            if missing:
                fail(f"{study_file}: no {', '.join(missing)} (written by jobs/study.sbatch: index=, lr=, seed=)")
        for r in read_csv(f, os.path.basename(d) if os.path.basename(f) == "results.csv" else f, experiment):
            if study:
                r.update(lr=study["lr"], seed=study["seed"], index=study["index"], ckpt=os.path.join(d, "ckpt"))
            runs.append(r)
    return runs


def num(r, col):
    try:
        return float(r[col])
    except (ValueError, TypeError):
        return None


def human(n):
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def gnuplot(out, name, script):
    gp = os.path.join(out, name + ".gp")
    with open(gp, "w") as f:
        f.write(f"set terminal pngcairo size 1000,650 font 'Sans,11' noenhanced\nset encoding utf8\n"
                f"set output '{name}.png'\n{script}")
    r = subprocess.run(["gnuplot", name + ".gp"], cwd=out, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"gnuplot failed on {gp}:\n{r.stderr.strip()}")
    return name + ".png"


def q(s):
    return '"' + s.replace('"', "'") + '"'


def bubble_plot(out, name, title, xlabel, pts):
    """Validation loss against time, bubble area ~ trainable parameters, each bubble labelled.
    pts: dicts with x, y, trainable, label and, for error bars, xerr and yerr (None: no bars)."""
    xs, ys = [p["x"] for p in pts], [p["y"] for p in pts]
    bars = any(p.get("yerr") is not None or p.get("xerr") is not None for p in pts)
    logx = min(xs) > 0 and max(xs) / min(xs) > 20
    fx = math.log10 if logx else (lambda v: v)
    x0, x1 = fx(min(xs)), fx(max(xs))
    y0 = min(y - (p.get("yerr") or 0) for y, p in zip(ys, pts))
    y1 = max(y + (p.get("yerr") or 0) for y, p in zip(ys, pts))
    dx, dy = (x1 - x0) or abs(x1) or 1.0, (y1 - y0) or abs(y1) or 1.0
    # room for the labels on the right and the bubbles at the edges
    x0, x1, y0, y1 = x0 - 0.06 * dx, x1 + 0.3 * dx, y0 - 0.12 * dy, y1 + 0.12 * dy
    # the plot area is about 890 x 540 pixels; a 10-point character about 6.5 x 15
    px = lambda x: (fx(x) - x0) / (x1 - x0) * 890
    py = lambda y: (y - y0) / (y1 - y0) * 540
    tmax = max(p["trainable"] for p in pts)
    placed, lines = [], []
    for p in sorted(pts, key=lambda p: -p["y"]):
        # gnuplot's point size scales the radius: size ~ sqrt(trainable) makes area ~
        # trainable (down to a visible minimum; the label gives the count)
        size = max(7.0 * math.sqrt(p["trainable"] / tmax), 0.8)
        off = round(0.45 * size + 0.8, 1)  # characters right of the bubble's centre
        label = f"{p['label']} ({human(p['trainable'])})"
        left, right = px(p["x"]) + off * 6.5, px(p["x"]) + (off + len(label)) * 6.5
        # the label moves up or down by whole lines until it overlaps no label placed before
        for shift in (0, -1, 1, -2, 2, -3, 3, -4, 4):
            mid = py(p["y"]) + shift * 15
            if not any(left < b[1] and b[0] < right and abs(mid - b[2]) < 15 for b in placed):
                break
        placed.append((left, right, mid))
        ly = y0 + mid / 540 * (y1 - y0)
        err = f" {p.get('xerr') or 0:.6g} {p.get('yerr') or 0:.6g}" if bars else ""
        lines.append(f"{p['x']:.6g} {p['y']:.6g} {size:.4f} {off} {ly:.6g} {q(label)}{err}\n")
    with open(os.path.join(out, name + ".dat"), "w") as f:
        f.write("# x val_loss point_size label_offset label_y label" + (" x_err y_err" if bars else "")
                + "\n" + "".join(lines))
    # one label series per offset, so that each label starts just right of its own bubble
    label_plots = "".join(
        f", \\\n     '' using 1:($4 == {o} ? $5 : NaN):6 with labels left offset char {o},0 font ',10'"
        for o in sorted({float(l.rsplit('"', 1)[0].split()[3]) for l in lines}))
    # the bars over the bubbles, so that a bar shorter than its bubble's radius stays visible
    errs = f", \\\n     '' using 1:2:7:8 with xyerrorbars pt -1 lw 1.5 lc rgb '#222222'" if bars else ""
    xr = f"[{10 ** x0:.6g}:{10 ** x1:.6g}]" if logx else f"[{x0:.6g}:{x1:.6g}]"
    return gnuplot(out, name, f"""\
set title "{title}"
set xlabel "{xlabel}"
set ylabel "validation loss (nats per token)"
{"set logscale x" if logx else ""}
set xrange {xr}
set yrange [{y0:.6g}:{y1:.6g}]
set grid
unset key
plot '{name}.dat' using 1:2:3 with points pt 7 ps variable lc rgb '#80336699'{errs}{label_plots}
""")


def methods_plots(out, runs):
    """(a) the bubble plot and (b) peak memory per rank, one entry per run, labelled by method."""
    made = []
    pts = [dict(x=r["train_s"], y=num(r, "val_loss"), trainable=num(r, "trainable"), label=r["method"])
           for r in runs if num(r, "val_loss") is not None and num(r, "trainable") is not None]
    if pts:
        made.append(bubble_plot(out, "methods",
                                "Validation loss against training time (bubble area ∝ trainable parameters)",
                                "training time (s, wall clock of the run, all restarts)", pts))
    mem = [r for r in runs if num(r, "peak_rss_mib") is not None]
    if mem:
        with open(os.path.join(out, "memory.dat"), "w") as f:
            f.write("# index peak_rss_mib label\n")
            for i, r in enumerate(mem):
                f.write(f"{i} {r['peak_rss_mib']} {q(r['method'])}\n")
        made.append(gnuplot(out, "memory", f"""\
set title "Peak memory per rank (max over ranks), by method"
set ylabel "peak RSS per rank (MiB)"
set xlabel "method"
set style fill solid 0.6 border -1
set boxwidth 0.6
set yrange [0:*]
set offsets 0.5, 0.5, graph 0.12, 0
set grid ytics
set xtics rotate by -30 left
unset key
plot 'memory.dat' using 1:2:xtic(3) with boxes lc rgb '#336699', \\
     '' using 1:2:(sprintf('%.0f', $2)) with labels offset 0,0.8 font ',10'
"""))
    return made


def scaling(runs):
    """{mode: {axis: [(ranks, run)]}} with the mode's single-rank baseline at the head of every axis."""
    by_mode = {}
    for r in runs:
        parts = r["experiment"].split("-")
        if len(parts) == 3 and parts[0] == "scaling" and r["status"] == "done":
            by_mode.setdefault(parts[1], {}).setdefault(parts[2], []).append((int(num(r, "ranks")), r))
    for axes in by_mode.values():
        base = axes.pop("base", [])
        for axis in axes:
            axes[axis] = sorted(base[:1] + axes[axis], key=lambda x: x[0])
    return by_mode


def scaling_plots(out, by_mode):
    made = []
    colors = {"dp": "#1b9e77", "tp": "#d95f02", "pp": "#7570b3"}
    for mode, col, ylabel, title in (
            ("strong", "tokens_per_s", "throughput (tokens/s, global, median step)",
             "Strong scaling: fixed global batch; ideal = single-rank throughput x ranks"),
            ("weak", "step_s", "step time (s, median step)",
             "Weak scaling: fixed work per rank; ideal = single-rank step time")):
        axes = by_mode.get(mode)
        if not axes:
            continue
        plots, maxn = [], 1
        for axis in sorted(axes):
            pts = [(n, num(r, col)) for n, r in axes[axis] if num(r, col) is not None]
            if not pts:
                continue
            with open(os.path.join(out, f"scaling-{mode}-{axis}.dat"), "w") as f:
                f.write(f"# ranks {col}\n" + "".join(f"{n} {v:.6g}\n" for n, v in pts))
            maxn = max(maxn, pts[-1][0])
            plots.append(f"'scaling-{mode}-{axis}.dat' using 1:2 with linespoints lw 2 pt 7 ps 1.3 "
                         f"lc rgb '{colors[axis]}' title '{axis.upper()}'")
        if not plots:
            continue
        # the ideal starts from the smallest run (the single-rank baseline when there is one)
        n0, v0 = min(((n, num(r, col)) for a in axes.values() for n, r in a if num(r, col) is not None),
                     key=lambda x: x[0])
        ideal = f"{v0} * x / {n0}" if mode == "strong" else f"{v0}"
        logy = "set logscale y 2\n" if mode == "strong" else "set yrange [0:*]\n"
        made.append(gnuplot(out, f"scaling-{mode}", f"""\
set title "{title}"
set xlabel "MPI ranks"
set ylabel "{ylabel}"
set logscale x 2
{logy}set xrange [{n0 / 1.3:.3g}:{maxn * 1.3:.3g}]
set xtics ({", ".join(str(2 ** i) for i in range(int(math.log2(maxn)) + 1))})
set grid
set key top left box opaque
set samples 200
plot {ideal} with lines dt 2 lw 2 lc rgb '#555555' title 'ideal', \\
     {", ".join(plots)}
"""))
    return made


# --- jobs/study.sbatch: the paper's comparison -------------------------------------------------
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#000000", "#aec7e8")


def mean_std(vs):
    """Mean and sample standard deviation (None for one value) of a non-empty list."""
    m = sum(vs) / len(vs)
    return m, (math.sqrt(sum((v - m) ** 2 for v in vs) / (len(vs) - 1)) if len(vs) > 1 else None)


def config_name(c):
    return c["method"] + ("" if c["targets"] == "all" else f" ({c['targets']})")


def study(runs):
    """The runs of jobs/study.sbatch grouped by (method, targets), in the grid's order. Each group:
    sweep {lr: {text, runs, vals, mean, std}} over its finished runs (mean inf: a run diverged, None:
    no validation loss), best (the lr of the lowest mean), edge (best at the sweep's end), and the
    means over seeds at the best lr of the columns the report shows."""
    groups = {}
    for r in runs:
        if r["experiment"] != "study" or "lr" not in r:
            continue
        g = groups.setdefault((r["method"], r["targets"]),
                              dict(method=r["method"], targets=r["targets"], order=int(r["index"]), runs=[]))
        g["order"] = min(g["order"], int(r["index"]))
        g["runs"].append(r)
    out = sorted(groups.values(), key=lambda g: g["order"])
    for g in out:
        done = [r for r in g["runs"] if r["status"] == "done"]
        g["done"] = len(done)
        sweep = {}
        for r in done:
            sweep.setdefault(float(r["lr"]), dict(text=r["lr"], runs=[]))["runs"].append(r)
        for lr, s in sweep.items():
            s["runs"].sort(key=lambda r: int(r["index"]))
            s["vals"] = [v for v in (num(r, "val_loss") for r in s["runs"]) if v is not None]
            s["mean"], s["std"] = None, None
            if s["vals"] and all(math.isfinite(v) for v in s["vals"]):
                s["mean"], s["std"] = mean_std(s["vals"])
            elif s["vals"]:
                s["mean"] = math.inf  # a run diverged (nan or inf)
        g["sweep"] = dict(sorted(sweep.items()))
        rated = [lr for lr, s in g["sweep"].items() if s["mean"] is not None]
        g["best"] = min(rated, key=lambda lr: g["sweep"][lr]["mean"]) if rated else None
        if g["best"] is not None and not math.isfinite(g["sweep"][g["best"]]["mean"]):
            g["best"] = None  # every rate diverged
        g["edge"] = g["best"] is not None and len(g["sweep"]) > 1 and g["best"] in (min(g["sweep"]), max(g["sweep"]))
        if g["best"] is not None:
            s = g["sweep"][g["best"]]
            g["mean"], g["std"], g["n"] = s["mean"], s["std"], len(s["vals"])
            for col in ("trainable", "peak_rss_mib", "step_s", "tokens_per_s", "train_s"):
                vals = [v for v in ((r[col] if col == "train_s" else num(r, col)) for r in s["runs"]) if v is not None]
                g[col], g[col + "_std"] = mean_std(vals) if vals else (None, None)
            g["first"] = s["runs"][0]
        # memory does not depend on the rate: the mean over every finished run of the configuration
        mem = [v for v in (num(r, "peak_rss_mib") for r in done) if v is not None]
        g["rss_all"], g["rss_all_std"] = mean_std(mem) if mem else (None, None)
    return out


def study_plots(out, groups):
    made = []
    best = [g for g in groups if g["best"] is not None]
    if best:
        pts = [dict(x=g["train_s"], y=g["mean"], xerr=g["train_s_std"], yerr=g["std"], trainable=g["trainable"],
                    label=config_name(g)) for g in best]
        made.append(bubble_plot(
            out, "study", "Each method at its best learning rate (bubble area ∝ trainable parameters, "
            "bars ±1 std over seeds)",
            "training time (s, mean over seeds, wall clock of the run)", pts))
    blocks, plots = [], []
    colors = {}
    for g in groups:
        rows = [(lr, s) for lr, s in g["sweep"].items() if s["mean"] is not None and math.isfinite(s["mean"])]
        if not rows:
            continue
        color = colors.setdefault(g["method"], PALETTE[len(colors) % len(PALETTE)])
        blocks.append(f"# {config_name(g)}: lr mean_val_loss std seeds\n" +
                      "".join(f"{lr:.6g} {s['mean']:.6g} {s['std'] or 0:.6g} {len(s['vals'])}\n" for lr, s in rows))
        style = "dt 1 pt 7" if g["targets"] == "all" else "dt 2 pt 6"
        plots.append(f"'study-lr.dat' index {len(plots)} using 1:2:3 with yerrorlines lw 2 {style} ps 1.2 "
                     f"lc rgb '{color}' title {q(config_name(g))}")
    if plots:
        with open(os.path.join(out, "study-lr.dat"), "w") as f:
            f.write("\n\n".join(blocks))
        lrs = sorted({lr for g in groups for lr in g["sweep"]})
        made.append(gnuplot(out, "study-lr", f"""\
set title "Validation loss against learning rate (mean over seeds, bars ±1 std; dashed: attn targets)"
set xlabel "peak learning rate"
set ylabel "validation loss (nats per token)"
set logscale x
set xrange [{lrs[0] / 1.5:.6g}:{lrs[-1] * 1.5:.6g}]
set grid
set key outside right top
plot {", ".join(plots)}
"""))
    return made


def study_trajectories(out, groups):
    """jobs/trajectory.sh on the checkpoints of each configuration's best run (best lr, first
    seed): [(group, png or None, note)]. Skipped, with a note, where the script is missing."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trajectory.sh")
    made = []
    for g in groups:
        if g["best"] is None:
            continue
        name = f"{g['method'].replace(',', '+')}-{g['targets']}"
        if not os.path.exists(script):
            made.append((g, None, "skipped: jobs/trajectory.sh is not in this checkout"))
            continue
        dest = os.path.join(out, "trajectory", name)
        r = subprocess.run(["bash", script, g["first"]["ckpt"], "--out", dest], capture_output=True, text=True)
        png = os.path.join("trajectory", name, "trajectory.png")
        if r.returncode != 0 or not os.path.exists(os.path.join(out, png)):
            why = (r.stderr.strip() or r.stdout.strip() or "no trajectory.png").splitlines()[-1]
            print(f"analysis: warning: jobs/trajectory.sh {g['first']['ckpt']}: {why}", file=sys.stderr)
            made.append((g, None, f"failed: {why}"))
        else:
            made.append((g, png, g["first"]["run"]))
    return made


def fmt(v, std=None, digits=4):
    if v is None:
        return "-"
    if not math.isfinite(v):
        return "diverged"
    return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def claims(groups):
    """The paper's claims on this study's numbers, as Markdown lines."""
    by = {(g["method"], g["targets"]): g for g in groups}

    def get(method, targets="all"):
        g = by.get((method, targets))
        return g if g and g["best"] is not None else None

    def diff(a, b):
        """(mean a - mean b, noise): the noise is the standard error of the difference of the means,
        sqrt(s_a^2/n_a + s_b^2/n_b), None when a side has one seed."""
        d = a["mean"] - b["mean"]
        if a["std"] is None or b["std"] is None:
            return d, None
        return d, math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])

    def describe(a, b):
        d, noise = diff(a, b)
        edge = [config_name(x) for x in (a, b) if x["edge"]]
        return (d, noise, f"{config_name(a)} {fmt(a['mean'], a['std'])} (lr {a['sweep'][a['best']]['text']}, "
                f"{a['n']} seeds) vs {config_name(b)} {fmt(b['mean'], b['std'])} (lr {b['sweep'][b['best']]['text']}, "
                f"{b['n']} seeds): difference {d:+.4f}, noise 2σ = " + (f"{2 * noise:.4f}" if noise is not None else
                "unknown (one seed)") + (f"; caveat: the best rate of {', '.join(edge)} is at the sweep's edge" if edge else ""))

    def better(a_name, b_name, targets="all"):
        """'a better than b': holds when a's loss is lower by more than 2σ."""
        a, b = get(a_name, targets), get(b_name, targets)
        if not (a and b):
            return f"not checked: {' and '.join(n for n, x in ((a_name, a), (b_name, b)) if not x)} not in the study (or no finished run)"
        d, noise, text = describe(a, b)
        if noise is None:
            verdict = "undetermined (one seed: no noise estimate)"
        elif d < -2 * noise:
            verdict = "**holds**"
        elif d <= 2 * noise:
            verdict = "**not shown**: within noise"
        else:
            verdict = "**does not hold**: worse beyond noise"
        return f"{verdict}. {text}"

    lines = ["## The paper's claims, checked", "",
             "Each method at its own best learning rate. Noise: σ = sqrt(s_a²/n_a + s_b²/n_b), the standard "
             "error of the difference of two means over seeds (s: sample standard deviation of the validation "
             "loss over the n seeds); a difference within ±2σ (about 95% for normal errors) is noise.", ""]
    for targets in ("all", "attn"):
        a, b = get("1lora", targets), get("lora", targets)
        if targets == "attn" and not (a and b):
            continue
        head = f"1. 1LoRA within noise of LoRA r=1, or better (targets {targets}): "
        if not (a and b):
            lines.append(head + f"not checked: {' and '.join(n for n, x in (('1lora', a), ('lora', b)) if not x)} "
                                "not in the study (or no finished run)")
            continue
        d, noise, text = describe(a, b)
        if noise is None:
            verdict = "**holds** (better)" if d <= 0 else "undetermined (one seed: no noise estimate)"
        else:
            verdict = "**holds**" if d <= 2 * noise else "**does not hold**: worse beyond noise"
        lines.append(head + f"{verdict}. {text}")
    one = get("1lora")
    others = [(m, get(m)) for m in ("lora", "vera", "mora")]
    if not one or not any(g for _, g in others):
        lines.append("2. Fewer trainable parameters and less memory than LoRA r=1, VeRA and MoRA: not checked: "
                     "1lora, or all of lora, vera and mora, not in the study")
    else:
        parts, ok, absent = [], True, [m for m, g in others if not g]
        for m, g in others:
            if not g:
                continue
            fewer = one["trainable"] < g["trainable"]
            less = (one["rss_all"] is not None and g["rss_all"] is not None and one["rss_all"] < g["rss_all"])
            ok = ok and fewer and less
            parts.append(f"{m}: {human(g['trainable'])} parameters ({'more' if fewer else 'NOT more'}), "
                         f"{fmt(g['rss_all'], g['rss_all_std'], 1)} MiB ({'more' if less else 'NOT more'})")
        lines.append(f"2. Fewer trainable parameters and less memory than LoRA r=1, VeRA and MoRA (targets all; "
                     f"memory: peak RSS, mean ± std over every finished run): {'**holds**' if ok else '**does not hold**'}"
                     + (f" (not checked against {', '.join(absent)}: not in the study)" if absent else "") + ". "
                     f"1lora: {human(one['trainable'])} parameters, {fmt(one['rss_all'], one['rss_all_std'], 1)} MiB; "
                     + "; ".join(parts))
    lines.append("3. `1lora,norms` better than 1lora: " + better("1lora,norms", "1lora"))
    lines.append("4. 1lora better than 1lora-random: " + better("1lora", "1lora-random"))
    return lines + [""]


def study_report(groups, plots, trajectories):
    if not groups:
        return []
    n = sum(len(g["runs"]) for g in groups)
    done = sum(g["done"] for g in groups)
    lines = ["## The study (jobs/study.sbatch)", "",
             f"{done} of {n} runs finished. Each row: one method and target set at its best learning rate "
             "(the lowest mean validation loss over seeds); the values are means over the seeds at that rate "
             "(validation loss: mean ± sample std). *edge*: the best rate is the lowest or highest of the "
             "sweep, so the optimum may lie outside it (widen STUDY_LRS).", "",
             "| method | targets | best lr | val loss (mean ± std) | seeds | rates swept | trainable | "
             "peak RSS (MiB) | step (s) | tokens/s | training time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        if g["best"] is None:
            lines.append(f"| {g['method']} | {g['targets']} | - | no finished run with a validation loss "
                         f"({g['done']} of {len(g['runs'])} finished) | - | {len(g['sweep'])} | - | - | - | - | - |")
            continue
        lr = g["sweep"][g["best"]]["text"] + (" *edge*" if g["edge"] else "")
        lines.append(f"| {g['method']} | {g['targets']} | {lr} | {fmt(g['mean'], g['std'])} | {g['n']} | "
                     f"{len(g['sweep'])} | {g['trainable']:.0f} | {fmt(g['peak_rss_mib'], None, 1)} | "
                     f"{fmt(g['step_s'], None, 4)} | {fmt(g['tokens_per_s'], None, 0)} | {fmt(g['train_s'], g['train_s_std'], 1)} |")
    lrs = sorted({lr for g in groups for lr in g["sweep"]})
    texts = {lr: next(g["sweep"][lr]["text"] for g in groups if lr in g["sweep"]) for lr in lrs}
    lines += ["", "Validation loss (mean over seeds) at every rate; **bold**: the best:", "",
              "| method | targets | " + " | ".join(texts[lr] for lr in lrs) + " |",
              "|---|---|" + "---|" * len(lrs)]
    for g in groups:
        cells = []
        for lr in lrs:
            s = g["sweep"].get(lr)
            v = "-" if s is None or s["mean"] is None else fmt(s["mean"])
            cells.append(f"**{v}**" if lr == g["best"] else v)
        lines.append(f"| {g['method']} | {g['targets']} | " + " | ".join(cells) + " |")
    lines += [""] + claims(groups)
    if plots:
        lines += ["### Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if trajectories:
        lines += ["### Per-layer ||Δ|| over training (best rate, first seed)", ""]
        for g, png, note in trajectories:
            lines.append(f"- {config_name(g)}: " + (f"{note}\n\n  ![{png}]({png})" if png else note))
        lines.append("")
    return lines


def report(out, runs, by_mode, plots, study_lines):
    lines = ["# onelora results", ""] + study_lines
    methods = [r for r in runs if not r["experiment"].startswith("scaling-") and r["experiment"] != "study"]
    if methods:
        lines += ["## Methods", "",
                  "| run | method | targets | rank | layout tp x pp x dp | steps | trainable | train loss | "
                  "val loss | training time (s) | tokens/s | peak RSS/rank (MiB) | DP bytes/step | status |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in methods:
            lines.append(f"| {r['run']} | {r['method']} | {r['targets']} | {r['rank']} | "
                         f"{r['tp']} x {r['pp']} x {r['dp']} | {r['steps']} | {r['trainable']} | "
                         f"{r['train_loss']} | {r['val_loss'] or '-'} | {r['train_s']:.1f} | "
                         f"{r['tokens_per_s']} | {r['peak_rss_mib']} | {r['bytes_dp']} | {r['status']} |")
        lines.append("")
    for mode, axes in sorted(by_mode.items()):
        what = "speedup = tokens/s ÷ 1-rank tokens/s, efficiency = speedup ÷ ranks" if mode == "strong" \
            else "speedup = tokens/s ÷ 1-rank tokens/s, efficiency = 1-rank step time ÷ step time"
        lines += [f"## {mode.capitalize()} scaling", "", f"({what})", "",
                  "| axis | ranks | tp x pp x dp | global batch | tokens/s | step (s) | speedup | efficiency | "
                  "peak RSS/rank (MiB) | bytes/step dp, tp fwd+bwd, pp |", "|---|---|---|---|---|---|---|---|---|---|"]
        for axis in sorted(axes):
            n0, r0 = axes[axis][0]
            for n, r in axes[axis]:
                t, s, t0, s0 = (num(x, c) for x in (r, r0) for c in ("tokens_per_s", "step_s"))
                sp = t / t0 * n0 if t and t0 else None
                eff = (sp / n if sp else None) if mode == "strong" else (s0 / s if s and s0 else None)
                lines.append(f"| {axis} | {n} | {r['tp']} x {r['pp']} x {r['dp']} | {r['global_batch']} | "
                             f"{r['tokens_per_s']} | {r['step_s']} | {f'{sp:.2f}' if sp else '-'} | "
                             f"{f'{eff:.2f}' if eff else '-'} | {r['peak_rss_mib']} | {r['bytes_dp']}, "
                             f"{r['bytes_tp_fwd']}+{r['bytes_tp_bwd']}, {r['bytes_pp']} |")
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(prog="jobs/analysis.sh", description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", help="run directories, directories of runs, or results CSV files")
    ap.add_argument("--out", required=True, help="output directory (created)")
    a = ap.parse_args()
    runs = collect(a.inputs)
    if not runs:
        fail(f"the results files under {' '.join(a.inputs)} hold no rows")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, ["experiment", "run", "train_s", "lr", "seed"] + COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(runs)
    by_mode = scaling(runs)
    compare = [r for r in runs if r["experiment"] == "compare" and r["status"] == "done"]
    others = [r for r in runs if not r["experiment"].startswith("scaling-") and r["experiment"] != "study"
              and r["status"] == "done"]
    groups = study(runs)
    study_made = study_plots(a.out, groups)
    trajectories = study_trajectories(a.out, groups)
    plots = methods_plots(a.out, compare or others) + scaling_plots(a.out, by_mode)
    report(a.out, runs, by_mode, plots, study_report(groups, study_made, trajectories))
    plots = study_made + plots
    print(f"analysis: {len(runs)} runs -> {os.path.join(a.out, 'report.md')}, "
          f"{', '.join(plots) if plots else 'no plots'}")


if __name__ == "__main__":
    main()
