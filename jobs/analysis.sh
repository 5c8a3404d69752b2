#!/usr/bin/env bash
# jobs/analysis.sh: collects the results of onelora runs into a Markdown report and PNG plots.
#
# Usage:  jobs/analysis.sh RUNS_DIR_OR_CSV... --out DIR
# e.g.    jobs/analysis.sh runs/ --out report      # every results.csv under runs/
#
# Reads the results.csv of each run directory (jobs/train.sbatch, scaling.sbatch and
# compare-methods.sbatch and study.sbatch write them, one row per run) and writes into DIR:
# results.csv (one row per run, resumed runs joined), report.md (tables), methods.png (validation
# loss against training time, bubble area ~ trainable parameters), memory.png (peak memory per
# rank by method), scaling-strong.png and scaling-weak.png (with their ideal lines), and the
# .dat/.gp files behind each plot. Runs of jobs/study.sbatch: report.md's study section (per
# method and targets the best learning rate, validation loss mean +- std over seeds, trainable
# count, memory, step time, tokens/s; the paper's claims checked against the seeds' noise),
# study.png (the bubble plot at each one's best rate, error bars over seeds), study-lr.png
# (validation loss against learning rate) and trajectory/<method>-<targets>/ (per-layer
# ||Delta|| of the best run's checkpoints by jobs/trajectory.sh, when that script exists). Needs python3 (standard library only) and gnuplot with the pngcairo
# terminal (Debian: gnuplot-nox; on a cluster e.g. `module load gnuplot`).
set -euo pipefail
case "${1:-}" in ''|-h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;; esac
command -v python3 >/dev/null || { echo "analysis.sh: error: python3 not found" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "analysis.sh: error: gnuplot not found (Debian: apt-get install gnuplot-nox; or module load gnuplot)" >&2; exit 2; }
exec python3 "$(dirname "$0")/analysis.py" "$@"
