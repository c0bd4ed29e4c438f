#!/usr/bin/env bash
# The README's first command (npm start): build the lab (release wasm + page) and serve it.
source "$(dirname "$0")/setup.sh"
ensure_wasm_target
ensure_wasm_bindgen
ensure_npm
ensure_models
build_wasm release opt
node scripts/build-page.mjs target/site --minify
exec node scripts/serve.mjs target/site "${PORT:-8080}"
