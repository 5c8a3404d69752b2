"""Collects the results rows of onelora runs and writes a Markdown report and gnuplot PNGs.
Run through jobs/analysis.sh (see its usage); python3 standard library only.

Input: run directories (each with results.csv, written by `onelora train --results`, and an optional
`experiment` file, written by the job scripts: `compare`, `scaling-<strong|weak>-<base|dp|tp|pp>`),
directories holding such run directories (searched recursively), or CSV files.
A run that was stopped and resumed has several rows in its results.csv: its `stopped` rows and
its final row form one run whose training time is the sum of their wall_s.

Output in --out DIR:
  results.csv      one row per run: experiment, run, train_s (summed wall_s), the trainer's columns
  report.md        the methods table and the scaling tables
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
        runs += read_csv(f, os.path.basename(d) if os.path.basename(f) == "results.csv" else f, experiment)
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


def methods_plots(out, runs):
    """(a) the bubble plot and (b) peak memory per rank, one entry per run, labelled by method."""
    made = []
    pts = [r for r in runs if num(r, "val_loss") is not None and num(r, "trainable") is not None]
    if pts:
        xs, ys = [r["train_s"] for r in pts], [num(r, "val_loss") for r in pts]
        logx = min(xs) > 0 and max(xs) / min(xs) > 20
        fx = math.log10 if logx else (lambda v: v)
        x0, x1 = fx(min(xs)), fx(max(xs))
        y0, y1 = min(ys), max(ys)
        dx, dy = (x1 - x0) or abs(x1) or 1.0, (y1 - y0) or abs(y1) or 1.0
        # room for the labels on the right and the bubbles at the edges
        x0, x1, y0, y1 = x0 - 0.06 * dx, x1 + 0.3 * dx, y0 - 0.12 * dy, y1 + 0.12 * dy
        # the plot area is about 890 x 540 pixels; a 10-point character about 6.5 x 15
        px = lambda x: (fx(x) - x0) / (x1 - x0) * 890
        py = lambda y: (y - y0) / (y1 - y0) * 540
        tmax = max(num(r, "trainable") for r in pts)
        placed, lines = [], []
        for r in sorted(pts, key=lambda r: -num(r, "val_loss")):
            # gnuplot's point size scales the radius: size ~ sqrt(trainable) makes area ~
            # trainable (down to a visible minimum; the label gives the count)
            size = max(7.0 * math.sqrt(num(r, "trainable") / tmax), 0.8)
            off = round(0.45 * size + 0.8, 1)  # characters right of the bubble's centre
            label = f"{r['method']} ({human(num(r, 'trainable'))})"
            left, right = px(r["train_s"]) + off * 6.5, px(r["train_s"]) + (off + len(label)) * 6.5
            # the label moves up or down by whole lines until it overlaps no label placed before
            for shift in (0, -1, 1, -2, 2, -3, 3, -4, 4):
                mid = py(num(r, "val_loss")) + shift * 15
                if not any(left < b[1] and b[0] < right and abs(mid - b[2]) < 15 for b in placed):
                    break
            placed.append((left, right, mid))
            ly = y0 + mid / 540 * (y1 - y0)
            lines.append(f"{r['train_s']:.6g} {r['val_loss']} {size:.4f} {off} {ly:.6g} {q(label)}\n")
        with open(os.path.join(out, "methods.dat"), "w") as f:
            f.write("# train_s val_loss point_size label_offset label_y label\n" + "".join(lines))
        # one label series per offset, so that each label starts just right of its own bubble
        label_plots = "".join(
            f", \\\n     '' using 1:($4 == {o} ? $5 : NaN):6 with labels left offset char {o},0 font ',10'"
            for o in sorted({float(l.split()[3]) for l in lines}))
        xr = f"[{10 ** x0:.6g}:{10 ** x1:.6g}]" if logx else f"[{x0:.6g}:{x1:.6g}]"
        made.append(gnuplot(out, "methods", f"""\
set title "Validation loss against training time (bubble area ∝ trainable parameters)"
set xlabel "training time (s, wall clock of the run, all restarts)"
set ylabel "validation loss (nats per token)"
{"set logscale x" if logx else ""}
set xrange {xr}
set yrange [{y0:.6g}:{y1:.6g}]
set grid
unset key
plot 'methods.dat' using 1:2:3 with points pt 7 ps variable lc rgb '#80336699'{label_plots}
"""))
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


def report(out, runs, by_mode, plots):
    lines = ["# onelora results", ""]
    methods = [r for r in runs if not r["experiment"].startswith("scaling-")]
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
        w = csv.DictWriter(f, ["experiment", "run", "train_s"] + COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(runs)
    by_mode = scaling(runs)
    compare = [r for r in runs if r["experiment"] == "compare" and r["status"] == "done"]
    others = [r for r in runs if not r["experiment"].startswith("scaling-") and r["status"] == "done"]
    plots = methods_plots(a.out, compare or others) + scaling_plots(a.out, by_mode)
    report(a.out, runs, by_mode, plots)
    print(f"analysis: {len(runs)} runs -> {os.path.join(a.out, 'report.md')}, "
          f"{', '.join(plots) if plots else 'no plots'}")


if __name__ == "__main__":
    main()
