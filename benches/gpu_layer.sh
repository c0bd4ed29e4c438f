#!/usr/bin/env bash
# Benchmark: the GPU tensor layer (one recorder, a buffer pool, parameters in a uniform arena)
# against a build from before it, on whatever GPU wgpu finds (lavapipe here): the statistics
# (`layerlab stats --backend gpu`) and a small pruning run (`layerlab prune --backend gpu`:
# OWL-Wanda 70%, 4 x 64 calibration tokens, 4 evaluation windows of 64), the two binaries
# alternating in one run so that the machine's load hits both alike. Reports each one's best
# wall time and the ratio (old / new; target: at least 1, no slower), and checks that both
# print the same numbers.
# Usage: benches/gpu_layer.sh OLD_BINARY [RUNS]
#   OLD_BINARY: a release `layerlab` built from the commit before the layer (e.g. main's);
#   the new one is target/release/layerlab (built here). RUNS defaults to 3.
source "$(dirname "$0")/../scripts/setup.sh"
OLD=${1:?usage: benches/gpu_layer.sh OLD_BINARY [RUNS]}
RUNS=${2:-3}
MODEL=.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
CALIB=/usr/share/common-licenses/LGPL-2.1
EVAL=/usr/share/common-licenses/GPL-3
OUT=.cache/bench/gpu_layer
ensure_models
ensure_test_packages
say "building the release CLI"
cargo build --release --bin layerlab
NEW=target/release/layerlab
mkdir -p "$OUT"

# secs NAME CMD...: wall seconds of one run; output to $OUT/NAME.log. Timed in the shell, as
# CMD may be one of the functions below (GNU time runs only programs).
secs() {
  local name=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  "$@" >"$OUT/$name.log" 2>&1 || { echo "error: $name failed:" >&2; tail -20 "$OUT/$name.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a < b) ? a : b }'; }

stats() { "$1" stats "$MODEL" --backend gpu --json "$OUT/stats-$2.json"; }
prune() {
  "$1" prune "$MODEL" --method wanda --owl --sparsity 0.7 --nsamples 4 --seqlen 64 \
    --calib "$CALIB" --eval "$EVAL" --max-eval-windows 4 --backend gpu --json "$OUT/prune-$2.json"
}

say "old vs new, alternating, $RUNS runs each ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
for task in stats prune; do
  best_old="" best_new=""
  for r in $(seq "$RUNS"); do
    t_old=$(secs "$task-old-$r" $task "$OLD" old); best_old=$(min "$t_old" "$best_old")
    t_new=$(secs "$task-new-$r" $task "$NEW" new); best_new=$(min "$t_new" "$best_new")
    echo "  $task run $r: old $t_old s, new $t_new s"
  done
  awk -v o="$best_old" -v n="$best_new" -v t="$task" \
    'BEGIN { printf "%s: old %.2f s, new %.2f s (best of runs), old / new = %.2fx (target: >= 1)\n", t, o, n, o / n }'
done
# The same numbers from both: the reports without their timings, backend notes and the
# experiment envelope (version 2 since the new frame; its content is checked by tests/cli.rs).
strip() { .cache/venv/bin/python -c 'import json,sys
d = json.load(open(sys.argv[1]))
def clean(x):
    if isinstance(x, dict): return {k: clean(v) for k, v in x.items() if "time" not in k and k not in ("backend", "elapsed_s", "timings", "experiment")}
    if isinstance(x, list): return [clean(v) for v in x]
    return x
print(json.dumps(clean(d), sort_keys=True))' "$1"; }
for task in stats prune; do
  if [ "$(strip "$OUT/$task-old.json")" = "$(strip "$OUT/$task-new.json")" ]; then
    echo "$task: the two reports agree (timings aside)"
  else
    echo "$task: the reports DIFFER (timings aside): compare $OUT/$task-old.json and $OUT/$task-new.json"
  fi
done
