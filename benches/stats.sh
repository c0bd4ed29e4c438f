#!/usr/bin/env bash
# Benchmark: `layerlab stats` on SmolLM2-135M (GGUF Q4_1, 98 MB) against gguf-py + numpy
# computing the same statistics (benches/stats_numpy.py), measured in the same run.
# Reports wall time (best of N runs) and peak memory for each, and the speed ratio.
# Usage: benches/stats.sh [RUNS]      (run on demand; not part of npm test)
source "$(dirname "$0")/../scripts/setup.sh"
ensure_models
ensure_python_reference
RUNS=${1:-3}
MODEL=.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
say "building the release CLI"
cargo build --release --bin layerlab

# best_of NAME CMD...: best wall time and peak RSS over RUNS runs (GNU time).
best_of() {
  local name=$1 best="" rss=""
  shift
  for _ in $(seq "$RUNS"); do
    local out t m
    /usr/bin/time -o /tmp/layerlab-bench-time -f "%e %M" "$@" >/dev/null 2>&1
    out=$(tail -1 /tmp/layerlab-bench-time)
    t=${out% *}
    m=${out#* }
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; rss=$m; fi
  done
  printf '%-34s %8.2f s %8.0f MB\n' "$name" "$best" "$((rss / 1024))"
  RESULT=$best
}

[ -x /usr/bin/time ] || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q time >/dev/null
say "SmolLM2-135M stats, best of $RUNS runs ($(nproc) cores)"
best_of "layerlab stats (CPU backend)" target/release/layerlab stats "$MODEL" --backend cpu --json /dev/null
ours=$RESULT
best_of "layerlab stats (GPU: lavapipe here)" target/release/layerlab stats "$MODEL" --backend gpu --json /dev/null
best_of "gguf-py + numpy" .cache/venv/bin/python benches/stats_numpy.py "$MODEL"
base=$RESULT
awk -v a="$base" -v b="$ours" 'BEGIN { printf "speed-up of layerlab (CPU) over gguf-py + numpy: %.1fx (target: 20x)\n", a / b }'
