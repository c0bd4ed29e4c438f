#!/usr/bin/env bash
# Benchmark: training tokens/s of the training lab's 12 x 128 preset (Mix-LN 0.25, ctx 128,
# batch 16, char-level GPL-3) in the native CLI against PyTorch eager (float32, CPU) with the
# same model, batch and thread count, in the same run (target: at least 1.5x PyTorch).
# Usage: benches/train.sh [STEPS] [THREADS]   (run on demand; not part of npm test; STEPS
# defaults to 20, THREADS to every core; both sides skip nothing: the CLI's tokens/s counts
# every optimizer step and excludes its evaluations, PyTorch's counts STEPS steps after 2
# untimed warm-up steps)
source "$(dirname "$0")/../scripts/setup.sh"
STEPS=${1:-20}
THREADS=${2:-$(nproc)}
TEXT=/usr/share/common-licenses/GPL-3
OUT=.cache/bench
PRESET=(--layers 12 --width 128 --heads 4 --kv-heads 4 --ffn 344 --ctx 128 --batch 16)

ensure_torch_reference
mkdir -p "$OUT"
say "building the release CLI"
cargo build --release --bin layerlab

say "12 x 128 Mix-LN, $STEPS steps, $THREADS threads ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
RAYON_NUM_THREADS=$THREADS target/release/layerlab train --norm mix --alpha 0.25 "${PRESET[@]}" \
  --steps "$STEPS" --eval-every 1000000 --text "$TEXT" --json "$OUT/train-cli.json" >"$OUT/train-cli.log" 2>&1 \
  || { tail -20 "$OUT/train-cli.log"; exit 1; }
read -r ours vocab post < <(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['runs'][0]; \
  print(r['tokens_per_s'], r['vocab_size'], int(r['options']['alpha'] * r['options']['layers']))" "$OUT/train-cli.json")
.cache/venv-torch/bin/python benches/train_torch.py "${PRESET[@]}" --vocab "$vocab" --post-blocks "$post" \
  --steps "$STEPS" --threads "$THREADS" >"$OUT/train-torch.json" || exit 1
base=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tokens_per_s'])" "$OUT/train-torch.json")
printf '%-44s %10.0f tokens/s\n' "layerlab train (native, release, CPU)" "$ours" "PyTorch eager float32 (train_torch.py)" "$base"
awk -v a="$ours" -v b="$base" 'BEGIN { printf "speed-up of layerlab over PyTorch eager: %.2fx (target: 1.5x)\n", a / b }'
