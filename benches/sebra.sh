#!/usr/bin/env bash
# Benchmark: training images/s of the bias lab's CNN (the default: 3 x 24 x 24 images, width
# 16 = channels 16/32/64, 4 classes, batch 64, Adam, plain cross-entropy) in the native CLI
# (the ERM phase of `layerlab sebra`, forward + backward + update, timed on its own) against
# PyTorch eager (float32, CPU) with the same network, batch and thread count, in the same run
# (target: at least 1.5x PyTorch).
# Usage: benches/sebra.sh [EPOCHS] [THREADS]   (run on demand; not part of npm test; EPOCHS of
# the default 4000 training images, default 2; THREADS defaults to every core. The CLI then
# also runs one ranking epoch, Stage 2 and the oracle, which the figure does not count.)
source "$(dirname "$0")/../scripts/setup.sh"
EPOCHS=${1:-2}
THREADS=${2:-$(nproc)}
OUT=.cache/bench

ensure_torch_reference
mkdir -p "$OUT"
say "building the release CLI"
cargo build --release --bin layerlab

say "CNN 3x24x24, width 16, batch 64, $EPOCHS epochs, $THREADS threads ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
RAYON_NUM_THREADS=$THREADS target/release/layerlab sebra --epochs "$EPOCHS" --rank-epochs 1 \
  --json "$OUT/sebra-cli.json" >"$OUT/sebra-cli.log" 2>&1 || { tail -20 "$OUT/sebra-cli.log"; exit 1; }
ours=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['timings']['erm_images_per_s'])" "$OUT/sebra-cli.json")
.cache/venv-torch/bin/python benches/sebra_torch.py --threads "$THREADS" --steps $((EPOCHS * 4000 / 64)) \
  >"$OUT/sebra-torch.json" || exit 1
base=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['images_per_s'])" "$OUT/sebra-torch.json")
printf '%-44s %10.0f images/s\n' "layerlab sebra, ERM (native, release, CPU)" "$ours" "PyTorch eager float32 (sebra_torch.py)" "$base"
awk -v a="$ours" -v b="$base" 'BEGIN { printf "speed-up of layerlab over PyTorch eager: %.2fx (target: 1.5x)\n", a / b }'
