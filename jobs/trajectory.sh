#!/usr/bin/env bash
# jobs/trajectory.sh: heat maps of a run's checkpoint trajectory (onelora inspect --trajectory).
#
# Usage:  jobs/trajectory.sh CKPT_DIR --out DIR [--model M] [--frames]
# e.g.    jobs/trajectory.sh runs/1lora/ckpt --out report/1lora
#
# Runs `onelora inspect --trajectory CKPT_DIR --csv` (with --model M: the values of a norms or
# full run are ||theta - theta_model||) and writes into DIR:
#   trajectory.csv                 the CSV (step,layer,proj,value,delta; docs/FORMATS.md)
#   trajectory.png                 heat map of the final checkpoint: layers (rows) x projections
#                                  (columns), colour = value (the norm of the method's update)
#   trajectory-step-%08d.png       with --frames: the same for every checkpoint, on one colour
#                                  scale (the largest value of the run, trajectory.png's too),
#                                  so frames compare
#   *.dat, *.gp                    the data and gnuplot scripts behind each PNG (gnuplot FILE.gp
#                                  in DIR redraws it)
# The binary is $ONELORA_BIN, else $ONELORA_BUILD/onelora, else build/onelora of this checkout,
# else onelora on PATH. Needs gnuplot with the pngcairo terminal (Debian: gnuplot-nox; on a
# cluster e.g. `module load gnuplot`) and awk.
set -euo pipefail
case "${1:-}" in ''|-h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;; esac
die() { echo "trajectory.sh: error: $*" >&2; exit 2; }

ckpt_dir="$1"; shift
out="" model="" frames=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out="$2"; shift 2 ;;
    --model) [ $# -ge 2 ] || die "--model needs a model file"; model="$2"; shift 2 ;;
    --frames) frames=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (usage: jobs/trajectory.sh CKPT_DIR --out DIR [--model M] [--frames])" ;;
  esac
done
case "$ckpt_dir" in -*) die "the first argument is the checkpoint directory, got '$ckpt_dir'" ;; esac
[ -n "$out" ] || die "--out DIR is required"
[ -d "$ckpt_dir" ] || die "$ckpt_dir: not a directory"
command -v gnuplot >/dev/null || die "gnuplot not found (Debian: apt-get install gnuplot-nox; or module load gnuplot)"
command -v awk >/dev/null || die "awk not found"
gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo || die "gnuplot has no pngcairo terminal (Debian: gnuplot-nox)"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${ONELORA_BIN:-}"
if [ -z "$bin" ]; then
  if [ -n "${ONELORA_BUILD:-}" ] && [ -x "$ONELORA_BUILD/onelora" ]; then bin="$ONELORA_BUILD/onelora"
  elif [ -x "$here/build/onelora" ]; then bin="$here/build/onelora"
  elif command -v onelora >/dev/null; then bin="$(command -v onelora)"
  else die "no onelora binary: set ONELORA_BIN or ONELORA_BUILD, or build into $here/build"
  fi
fi
[ -x "$bin" ] || die "$bin: not an executable"

mkdir -p "$out" || die "$out: cannot create the directory"
args=(inspect --trajectory "$ckpt_dir" --csv)
[ -z "$model" ] || args+=(--model "$model")
# inspect prints its own one-line error naming the file at fault; keep it and stop
"$bin" "${args[@]}" > "$out/trajectory.csv.tmp" || { rm -f "$out/trajectory.csv.tmp"; die "onelora inspect --trajectory $ckpt_dir failed (its error is above)"; }
mv "$out/trajectory.csv.tmp" "$out/trajectory.csv"
head -n 1 "$out/trajectory.csv" | grep -qx 'step,layer,proj,value,delta' || die "$out/trajectory.csv: unexpected header"

# One .dat (x = projection column, y = layer, value; NaN where a cell is not trained) and one .gp
# per picture. The columns are the projections the run trains, in DESIGN's order.
title="$(basename "$(cd "$ckpt_dir" && pwd)")"
[ "$title" != ckpt ] || title="$(basename "$(dirname "$(cd "$ckpt_dir" && pwd)")")/ckpt"
awk -F, -v out="$out" -v frames="$frames" -v title="$title" '
NR == 1 { next }
{
  step = $1 + 0; layer = $2 + 0; proj = $3; v = $4 + 0
  if (!(step in seen_step)) { seen_step[step] = 1; steps[ns++] = step }
  used[proj] = 1; val[step, layer, proj] = v; has[step, layer, proj] = 1
  if (layer + 1 > nl) nl = layer + 1
  if (v > vmax) vmax = v
}
function picture(step, base,    c, l, p, f, g, w, h, tics) {
  f = out "/" base ".dat"; g = out "/" base ".gp"
  printf "# %s, step %d: x = projection column, y = layer, value (NaN: not trained)\n", title, step > f
  for (l = 0; l < nl; l++)
    for (c = 0; c < nc; c++) {
      p = cols[c]
      if (has[step, l, p]) printf "%d %d %.9g\n", c, l, val[step, l, p] > f
      else printf "%d %d NaN\n", c, l > f
    }
  close(f)
  tics = ""
  for (c = 0; c < nc; c++) tics = tics (c ? ", " : "") sprintf("\"%s\" %d", cols[c], c)
  w = 260 + 70 * nc; if (w < 560) w = 560
  h = 160 + 22 * nl; if (h < 420) h = 420; if (h > 2400) h = 2400
  printf "# gnuplot %s.gp (in this directory) draws %s.png from %s.dat\n", base, base, base > g
  printf "set terminal pngcairo size %d,%d noenhanced font \"sans,10\"\n", w, h > g
  printf "set output \"%s.png\"\n", base > g
  printf "set title \"%s: step %d, value = norm of the update per layer and projection\"\n", title, step > g
  printf "set xlabel \"projection\"\nset ylabel \"layer\"\nset cblabel \"value\"\n" > g
  printf "set xtics (%s)\n", tics > g
  printf "set xrange [-0.5:%g]\nset yrange [-0.5:%g]\n", nc - 0.5, nl - 0.5 > g
  printf "set ytics %d\nset mytics 1\nset rmargin 12\n", (nl > 32 ? int(nl / 16) : 1) > g
  printf "set cbrange [0:%.9g]\n", (cbmax > 0 ? cbmax : 1) > g
  printf "set palette defined (0 \"#ffffff\", 1 \"#fdd49e\", 2 \"#ef6548\", 3 \"#7f0000\")\n" > g
  printf "set style fill solid 1.0 noborder\nunset key\nset tics out\n" > g
  printf "plot \"%s.dat\" using 1:2:(0.5):(0.5):3 with boxxyerror fillcolor palette\n", base > g
  close(g)
  print base
}
END {
  if (ns == 0) { print "trajectory.sh: error: the CSV has no rows" > "/dev/stderr"; exit 3 }
  split("q k v o gate up down attn_norm mlp_norm", order, " ")
  for (i = 1; i <= 9; i++) if (order[i] in used) cols[nc++] = order[i]
  last = steps[ns - 1]
  cbmax = vmax
  picture(last, "trajectory")
  if (frames) for (i = 0; i < ns; i++) picture(steps[i], sprintf("trajectory-step-%08d", steps[i]))
}' "$out/trajectory.csv" > "$out/.pictures" || die "$out/trajectory.csv: cannot turn it into plot data"

while read -r base; do
  (cd "$out" && gnuplot "$base.gp") 2> "$out/.gnuplot.err" || die "gnuplot failed on $out/$base.gp: $(head -c 2000 "$out/.gnuplot.err")"
  [ -s "$out/$base.png" ] || die "gnuplot wrote no $out/$base.png"
done < "$out/.pictures"
n=$(wc -l < "$out/.pictures")
rm -f "$out/.pictures" "$out/.gnuplot.err"
echo "trajectory.sh: $n PNG(s) in $out (trajectory.png = the final checkpoint), data in $out/trajectory.csv"
