#!/usr/bin/env bash
# The full side-by-side of karpathy/nanoGPT and our train.py at alpha_0 = 0, one run after the other
# (never at the same time), then the table. Run it from anywhere, on a quiet machine (nothing else
# using the CPUs: check `uptime`). nanoGPT's checkout comes from $NANOGPT, default results/nanogpt/src:
#   git clone https://github.com/karpathy/nanoGPT results/nanogpt/src
#
#   bash results/nanogpt/run_compare.sh        # 2,400 iterations each -> out/nanogpt/, and
#                                              #   results/nanogpt_compare.json (a copy of its compare.json)
#   bash results/nanogpt/run_compare.sh --max_iters=40 --eval_interval=20 --eval_iters=5
#                                              # flags go to both sides; everything under out/nanogpt/short/
#   OUTDIR=/tmp/x bash results/nanogpt/run_compare.sh    # another work folder
#   CODE=/path/to/checkout bash results/nanogpt/run_compare.sh   # our code from elsewhere (default: this repo)
#   WAIT_QUIET=1 bash results/nanogpt/run_compare.sh     # first wait until other processes use < 0.1 cores
# Each run reports how many cores other processes used while it ran (compare.py prints it).
# NANOGPT, OUTDIR and CODE may be relative to the current directory; PYTHON picks the interpreter.
set -euo pipefail
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[ -n "${NANOGPT:-}" ] && NANOGPT=$(abs "$NANOGPT")
[ -n "${OUTDIR:-}" ] && OUTDIR=$(abs "$OUTDIR")
[ -n "${CODE:-}" ] && CODE=$(abs "$CODE")
cd "$(dirname "$0")/../.."                     # the repository root: the defaults below are relative to it
H=results/nanogpt
PY=${PYTHON:-python}
export PYTHONDONTWRITEBYTECODE=1                # no __pycache__ here or in nanoGPT's checkout
export NANOGPT=${NANOGPT:-$H/src}
CODE=${CODE:-.}
if [ $# -gt 0 ]; then D=${OUTDIR:-out/nanogpt/short}; else D=${OUTDIR:-out/nanogpt}; fi
die() { echo "run_compare.sh: $*" >&2; exit 2; }
[ -f "$NANOGPT/train.py" ] || die "no nanoGPT checkout at $NANOGPT: run \`git clone" \
  "https://github.com/karpathy/nanoGPT $H/src\` in the repository, or set NANOGPT=/path/to/it"
[ -f data/python_prose/meta.json ] || die "data/python_prose is missing: run \`python data/prepare.py\` first"
if [ -e "$D/eso_a0/log.jsonl" ]; then
  die "$D/eso_a0/log.jsonl exists (train.py appends to it): move $D away first"
fi
mkdir -p "$D"
# Is the machine quiet? CPU cores busy over 5 s (before our runs start). WAIT_QUIET=1 waits for < 0.1.
busy() {
  $PY -B -c "import sys, time; sys.path.insert(0, '$H'); import run_nanogpt as r
a = r.cpu_busy_s(); time.sleep(5); print(f'{(r.cpu_busy_s() - a) / 5:.2f}')"
}
b=$(busy); echo "cores busy before the runs: $b (load average $(cut -d' ' -f1-3 /proc/loadavg))"
while [ "${WAIT_QUIET:-0}" = 1 ] && $PY -c "import sys; sys.exit(float('$b') < 0.1)"; do
  echo "waiting for a quiet machine ($b cores busy)..."; sleep 25; b=$(busy)
done
$PY $H/run_nanogpt.py "$@" --work="$D" --out_dir="$D/out-nanogpt" --json="$D/nanogpt.json"
$PY $H/run_eso.py "$@" --code="$CODE" --out_dir="$D/eso_a0"
$PY $H/compare.py --nanogpt="$D/nanogpt.json" --eso="$D/eso_a0" --out="$D/compare.json"
if [ $# -eq 0 ]; then
  cp "$D/compare.json" results/nanogpt_compare.json && echo "copied $D/compare.json to results/nanogpt_compare.json"
fi
