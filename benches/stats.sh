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


OUT=.cache/bench
source benches/common.sh
say "SmolLM2-135M stats, best of $RUNS runs ($(nproc) cores)"
best_of "layerlab stats (CPU backend)" target/release/layerlab stats "$MODEL" --backend cpu --json /dev/null
ours=$RESULT
best_of "layerlab stats (GPU: lavapipe here)" target/release/layerlab stats "$MODEL" --backend gpu --json /dev/null
best_of "gguf-py + numpy" .cache/venv/bin/python benches/stats_numpy.py "$MODEL"
base=$RESULT
awk -v a="$base" -v b="$ours" 'BEGIN { printf "speed-up of layerlab (CPU) over gguf-py + numpy: %.1fx (target: 20x)\n", a / b }'
