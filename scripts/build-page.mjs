// Bundles the page (www/src/*.ts) with esbuild and lays out a site folder:
//   OUT/index.html, style.css, main.js, worker.js, pkg/ (wasm-bindgen output from www/pkg)
// Usage: node scripts/build-page.mjs OUT [--minify]
import { build } from 'esbuild';
import { cpSync, mkdirSync, rmSync, existsSync, linkSync, copyFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = process.argv[2];
if (!out) {
  console.error('usage: node scripts/build-page.mjs OUT [--minify]');
  process.exit(2);
}
const minify = process.argv.includes('--minify');
const pkg = join(root, 'www', 'pkg');
if (!existsSync(join(pkg, 'layerlab.js'))) {
  console.error('www/pkg/layerlab.js is missing: build the wasm first (scripts/run.sh does).');
  process.exit(1);
}

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

// The wasm-bindgen glue is not bundled: the worker imports pkg/ or pkg-threads/ by URL at
// run time (and only their types at build time), and each glue loads its .wasm beside itself.
await build({
  entryPoints: [join(root, 'www/src/main.ts'), join(root, 'www/src/worker.ts')],
  outdir: out,
  bundle: true,
  format: 'esm',
  target: 'es2022',
  sourcemap: true,
  minify,
  logLevel: 'warning',
});
for (const f of ['index.html', 'style.css']) cpSync(join(root, 'www', f), join(out, f));
cpSync(pkg, join(out, 'pkg'), { recursive: true });
// The threaded build (scripts/setup.sh build_wasm), used where the page is
// cross-origin isolated; without it the page runs the plain build everywhere.
const pkgThreads = join(root, 'www', 'pkg-threads');
if (existsSync(join(pkgThreads, 'layerlab.js'))) {
  cpSync(pkgThreads, join(out, 'pkg-threads'), { recursive: true });
  initWithOneObject(join(out, 'pkg-threads', 'snippets'));
} else {
  console.warn('www/pkg-threads is missing: the page will run the WebAssembly on one thread');
}

/**
 * wasm-bindgen-rayon 1.3's worker helper (no-bundler) starts each thread with
 * `pkg.default(module, memory)`, the init call wasm-bindgen 0.2.130 deprecates: every
 * thread would log "using deprecated parameters for the initialization function; pass a
 * single object instead". The copy in the site passes the single object instead
 * (`{ module_or_path, memory }`, which wasm-bindgen's init reads the same way).
 */
function initWithOneObject(dir) {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir, { recursive: true })) {
    if (!String(name).endsWith('workerHelpers.no-bundler.js')) continue;
    const file = join(dir, String(name));
    const old = readFileSync(file, 'utf8');
    const fixed = old.replace('pkg.default(data.module, data.memory)', 'pkg.default({ module_or_path: data.module, memory: data.memory })');
    if (fixed !== old) writeFileSync(file, fixed);
  }
}

// The built-in model, served beside the page (fetched into the git-ignored cache by
// scripts/setup.sh's ensure_models). Hard-linked where possible: it is 98 MB.
const builtin = join(root, '.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf');
if (existsSync(builtin)) {
  mkdirSync(join(out, 'models'), { recursive: true });
  const dest = join(out, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
  try {
    linkSync(builtin, dest);
  } catch {
    copyFileSync(builtin, dest);
  }
} else {
  console.warn('the built-in model is missing (.cache/models); the page will say so when it opens');
}
console.log(`page built in ${out}`);

// The pruning lab's built-in calibration and evaluation texts: Debian's license texts
// (src/experiment.rs BUILTIN_TEXTS, handed to the page by the worker; the CLI reads the same
// files from /usr/share/common-licenses).
const texts = ['LGPL-2.1', 'GPL-3', 'GPL-2', 'GFDL-1.3', 'MPL-2.0', 'Apache-2.0'];
mkdirSync(join(out, 'texts'), { recursive: true });
for (const t of texts) {
  const from = join('/usr/share/common-licenses', t);
  if (existsSync(from)) copyFileSync(from, join(out, 'texts', t));
  else console.warn(`${from} is missing; the pruning lab's built-in text ${t} will not load`);
}
