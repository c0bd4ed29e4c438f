#!/usr/bin/env bash
# The README's second command (npm test): every test and lint, from a clean clone.
source "$(dirname "$0")/setup.sh"
ensure_wasm_target
ensure_wasm_bindgen
ensure_npm
ensure_test_packages

say "lint: cargo fmt --check"
cargo fmt --check
say "lint: cargo clippy (native)"
cargo clippy --all-targets -- -D warnings
say "lint: cargo clippy (wasm32)"
cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings

ensure_models
ensure_python_reference
ensure_torch_reference

say "Rust tests (CPU twins, and the WGSL kernels on the Vulkan adapter: lavapipe here)"
cargo test

build_wasm wasm-dev
say "lint: TypeScript type check"
node_modules/.bin/tsc --noEmit -p www
node scripts/build-page.mjs target/site-test

say "browser end-to-end tests (Debian's Chromium, with and without WebGPU)"
cargo build --bin layerlab
node --test --test-concurrency=1 tests/e2e/
say "all tests passed"
