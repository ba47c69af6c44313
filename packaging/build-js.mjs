#!/usr/bin/env node
/**
 * `npm run build` (also run by `npm ci` / `npm install` through `prepare`, and by the test suite's
 * global setup): compiles the operator CLI (with the control plane it serves) and the agent's
 * entry point into ESM JavaScript under dist/js/, so `bin/driftline.js` and `bin/driftline-agent.js`
 * run without tsx. Plain JavaScript on purpose: it runs before any TypeScript tooling is known
 * to be there, and under `npm ci --omit=dev` (no esbuild) it keeps a build made earlier.
 *
 * Dependencies stay in node_modules (not bundled): only what package.json lists under
 * "dependencies" may be imported, which this script checks, so a production install runs.
 * Commands load their heavy modules lazily; code splitting keeps each in its own chunk.
 */
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
// Its own folder: dist/ also holds `npm run package:agent`'s binaries, which a rebuild must leave alone.
const DIST = join(ROOT, 'dist', 'js');
/** What bin/ runs; the build is complete when every entry is there. */
// driftline-trainer: the built-in TypeScript trainer a GPU worker runs as a process (worker/built-in-trainers.ts).
export const ENTRIES = { driftline: 'cli/entry.ts', 'driftline-agent': 'agent/main.ts', 'driftline-trainer': 'trainers/typescript/main.ts' };

const complete = () => Object.keys(ENTRIES).every((name) => existsSync(join(DIST, `${name}.js`)));

/** Newest modification time of the sources the build reads (our TypeScript, the proto-generated code, package.json). */
function newestSource() {
  let newest = statSync(join(ROOT, 'package.json')).mtimeMs;
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(path).mtimeMs);
    }
  };
  for (const dir of ['agent', 'control-plane', 'common', 'cli', 'client', 'worker', 'trainers']) walk(join(ROOT, dir));
  return newest;
}

// --if-stale (the test suite's global setup): build only when dist/js/ is missing or older than a source.
if (process.argv.includes('--if-stale') && complete()) {
  const built = Math.min(...Object.keys(ENTRIES).map((name) => statSync(join(DIST, `${name}.js`)).mtimeMs));
  if (built >= newestSource()) process.exit(0);
}

let esbuild;
try {
  esbuild = await import('esbuild');
} catch {
  if (complete()) {
    console.error('build: esbuild is not installed (production install); keeping the existing dist/js/');
    process.exit(0);
  }
  console.error(
    'build: esbuild is not installed and dist/js/ is missing: run `npm ci` (with dev dependencies) first, then `npm ci --omit=dev` if you want to prune',
  );
  process.exit(1);
}

/**
 * Our modules find resources beside their sources (package.json, proto/, firmware-profiles/)
 * through import.meta.url. In a chunk under dist/js/ that URL would point there, so each
 * module gets the URL its source file has: the chunk's own URL, two folders up, plus its path.
 */
const sourceUrls = {
  name: 'driftline-source-urls',
  setup(build) {
    build.onLoad({ filter: /\.ts$/ }, (args) => {
      if (args.path.includes('node_modules')) return undefined;
      const source = readFileSync(args.path, 'utf8');
      if (!source.includes('import.meta.url')) return undefined;
      const rel = relative(ROOT, args.path).split('\\').join('/');
      return { contents: source.replaceAll('import.meta.url', `new URL(${JSON.stringify(rel)}, new URL('../../', import.meta.url)).href`), loader: 'ts' };
    });
  },
};

const started = Date.now();
const out = join(ROOT, 'dist', `.js-build-${process.pid}`);
rmSync(out, { recursive: true, force: true });
const result = await esbuild.build({
  absWorkingDir: ROOT,
  entryPoints: Object.fromEntries(Object.entries(ENTRIES).map(([name, path]) => [name, join(ROOT, path)])),
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  outdir: out,
  // Chunks stay beside the entries: the source-URL rule above needs every file two levels below the root.
  chunkNames: '[name]-[hash]',
  packages: 'external',
  sourcemap: 'linked',
  logLevel: 'warning',
  metafile: true,
  plugins: [sourceUrls],
});

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
const runtime = new Set(Object.keys(pkg.dependencies ?? {}));
const missing = new Set();
for (const output of Object.values(result.metafile.outputs)) {
  for (const imp of output.imports) {
    if (!imp.external || imp.path.startsWith('node:')) continue;
    const name = imp.path.startsWith('@') ? imp.path.split('/').slice(0, 2).join('/') : imp.path.split('/')[0];
    if (!runtime.has(name)) missing.add(name);
  }
}
if (missing.size) {
  rmSync(out, { recursive: true, force: true });
  console.error(`build: imported at run time but not in package.json dependencies: ${[...missing].join(', ')}`);
  process.exit(1);
}

// Swap the new build in whole, so a CLI started meanwhile never sees half of one.
const old = join(ROOT, 'dist', `.js-old-${process.pid}`);
if (existsSync(DIST)) renameSync(DIST, old);
renameSync(out, DIST);
rmSync(old, { recursive: true, force: true });
if (process.env.DRIFTLINE_BUILD_QUIET !== '1') console.error(`build: dist/js/ in ${Date.now() - started} ms (${pathToFileURL(DIST).pathname})`);
