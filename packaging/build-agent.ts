/**
 * `npm run package:agent [-- --arch x64|arm64 --node <node binary> --sqlite-addon <file>]`
 *
 * Builds the agent as one executable with Node's single-executable applications (SEA):
 * esbuild bundles agent/main.ts into one CommonJS file, the native addons (better-sqlite3,
 * onnxruntime-node's binding and libonnxruntime.so.1), the firmware profiles and the demo
 * model for `selftest` become SEA assets, and postject injects the blob into a copy of the
 * pinned Node LTS (packaging/node-runtime.ts: from the npm registry's node-linux-<arch>
 * package, with better-sqlite3 compiled for it, both cached). Nothing comes from nodejs.org,
 * so a build works with the npm registry alone, and offline once the cache holds the runtime.
 * (@yao-pkg/pkg would download its patched Node base binaries from GitHub.)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { gzipSync, constants as zlib } from 'node:zlib';
import * as esbuild from 'esbuild';
import { buildDemoModel } from '../demo/model/demo-model.js';
import type { NativeFile, NativeManifest } from '../agent/native-addons.js';
import { NATIVE_ARCHIVE_ASSET } from '../agent/native-addons.js';
import { SELFTEST_MODEL_ASSET } from '../agent/selftest.js';
import { AGENT_NODE, agentBuildInputs, assertElfArch, type Arch } from './node-runtime.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const ARCHES: readonly Arch[] = ['x64', 'arm64'];
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

export interface BuildOptions {
  arch: Arch;
  /** The Node binary to turn into the agent (the pinned runtime: agentBuildInputs). */
  node: string;
  /** A Node of the same version as `node` that runs on this machine: it writes the SEA blob (whose format is per version). Defaults to `node` when that one runs here. */
  hostNode?: string;
  /** better_sqlite3.node for the target arch. */
  sqliteAddon: string;
  out: string;
  strip: boolean;
  log: (line: string) => void;
}

export interface BuildResult {
  out: string;
  bytes: number;
  sha256: string;
  assets: Array<{ key: string; bytes: number; sourceBytes: number }>;
  seconds: number;
}

export async function buildAgentBinary(options: BuildOptions): Promise<BuildResult> {
  const started = Date.now();
  const { arch, log } = options;
  // Intermediate files live beside the output, so builds into different folders never collide.
  const work = join(dirname(options.out), `.build-${basename(options.out)}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  mkdirSync(dirname(options.out), { recursive: true });
  const native = arch === process.arch;
  const hostNode = options.hostNode ?? (native ? options.node : undefined);
  if (!hostNode) throw new Error(`a ${arch} build on ${process.arch} needs hostNode: a ${process.arch} Node of the same version as ${options.node}`);
  const nodeMajor = Number(execFileSync(hostNode, ['-p', 'process.versions.node'], { encoding: 'utf8' }).split('.')[0]);

  // 1. One CommonJS file (SEA runs CommonJS mains only).
  const bundle = join(work, 'agent.cjs');
  const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  const result = await esbuild.build({
    entryPoints: [join(ROOT, 'packaging', 'sea-entry.ts')],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: `node${nodeMajor}`,
    outfile: bundle,
    minify: true,
    keepNames: true,
    legalComments: 'none',
    logLevel: 'error',
    metafile: true,
    // Dependencies' import.meta.url (node-cron computes a path with it at load) becomes the executable's own URL.
    banner: { js: 'var __driftlineExecUrl = require("node:url").pathToFileURL(process.execPath).href;' },
    define: { 'import.meta.url': '__driftlineExecUrl', 'import.meta.filename': 'process.execPath', 'import.meta.dirname': '__dirname' },
    plugins: [seaPlugin(version)],
  });
  for (const w of result.warnings) log(`  esbuild: ${w.text}${w.location ? ` (${w.location.file})` : ''}`);
  // What went into the bundle, per input file (esbuild's analyzer reads it): beside the bundle.
  writeFileSync(join(work, 'agent.meta.json'), JSON.stringify(result.metafile));
  const unwanted = Object.keys(result.metafile.inputs).filter((f) => /node_modules[\\/](ws|socks)[\\/]/.test(f));
  if (unwanted.length > 0)
    throw new Error(
      `the bundle holds mqtt.js transports the agent refuses (${unwanted[0]}, ...): mqtt.js loads them another way now; update the stand-in in build-agent.ts`,
    );

  // 2. Assets: the native files (extracted in the packages' own layout), firmware profiles, the selftest model.
  const ortDir = join(ROOT, 'node_modules', 'onnxruntime-node', 'bin', 'napi-v6', 'linux', arch);
  const nativeSources: Array<{ name: string; path: string; elf: boolean }> = [
    { name: 'node_modules/better-sqlite3/build/Release/better_sqlite3.node', path: options.sqliteAddon, elf: true },
    { name: `node_modules/onnxruntime-node/bin/napi-v6/linux/${arch}/onnxruntime_binding.node`, path: join(ortDir, 'onnxruntime_binding.node'), elf: true },
    { name: `node_modules/onnxruntime-node/bin/napi-v6/linux/${arch}/libonnxruntime.so.1`, path: join(ortDir, 'libonnxruntime.so.1'), elf: true },
    ...readdirSync(join(ROOT, 'firmware-profiles'))
      .filter((f) => /\.ya?ml$/.test(f))
      .sort()
      .map((f) => ({ name: `firmware-profiles/${f}`, path: join(ROOT, 'firmware-profiles', f), elf: false })),
  ];
  // One asset holds them all (agent/native-addons.ts: a start then touches only the blob's head).
  const summary: BuildResult['assets'] = [{ key: 'agent.cjs (bundled JavaScript)', bytes: statSync(bundle).size, sourceBytes: statSync(bundle).size }];
  const contents: Array<{ bytes: Uint8Array; file?: Omit<NativeFile, 'offset' | 'bytes'>; resource?: string }> = [];
  for (const source of nativeSources) {
    if (!existsSync(source.path)) throw new Error(`missing ${source.path}`);
    if (source.elf) assertElfArch(source.path, arch);
    const bytes = readFileSync(source.path);
    const gz = gzipSync(bytes, { level: 9, memLevel: 9, strategy: zlib.Z_DEFAULT_STRATEGY });
    contents.push({ bytes: gz, file: { name: source.name, sha256: sha256(bytes), size: bytes.length } });
    summary.push({ key: `${source.name}.gz`, bytes: gz.length, sourceBytes: bytes.length });
  }
  const model = buildDemoModel();
  contents.push({ bytes: model.bytes, resource: SELFTEST_MODEL_ASSET });
  summary.push({ key: SELFTEST_MODEL_ASSET, bytes: model.bytes.length, sourceBytes: model.bytes.length });
  const archive = nativeArchive(arch, contents);
  const archiveFile = join(work, 'archive.bin');
  writeFileSync(archiveFile, archive);
  const assets: Record<string, string> = { [NATIVE_ARCHIVE_ASSET]: archiveFile };

  // 3. The SEA blob. V8's code cache is only valid for the Node that made it: native builds only.
  const blob = join(work, 'sea-prep.blob');
  const seaConfig = { main: bundle, output: blob, disableExperimentalSEAWarning: true, useSnapshot: false, useCodeCache: native, assets };
  writeFileSync(join(work, 'sea-config.json'), JSON.stringify(seaConfig, null, 2));
  execFileSync(hostNode, ['--experimental-sea-config', join(work, 'sea-config.json')], { stdio: 'pipe' });

  // 4. A copy of Node, stripped of debug symbols, with the blob injected.
  assertElfArch(options.node, arch);
  if (!readFileSync(options.node).includes(SEA_FUSE))
    throw new Error(`${options.node} has no SEA fuse: it is not a Node build that supports single executables`);
  const tmp = `${options.out}.tmp-${process.pid}`;
  copyFileSync(options.node, tmp);
  chmodSync(tmp, 0o755);
  if (options.strip) {
    const stripTool = native ? 'strip' : 'aarch64-linux-gnu-strip';
    const stripped = spawnSync(stripTool, ['--strip-all', tmp], { stdio: 'pipe' });
    if (stripped.status !== 0) log(`  note: ${stripTool} unavailable or failed; the Node binary keeps its symbols`);
  }
  // postject (LIEF) chatters on stdout and stderr; its output is shown only when it fails.
  const postject = spawnSync(process.execPath, [require.resolve('postject/dist/cli.js'), tmp, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE], {
    encoding: 'utf8',
  });
  if (postject.status !== 0) {
    rmSync(tmp, { force: true });
    throw new Error(`postject failed:\n${postject.stdout}${postject.stderr}`);
  }
  renameSync(tmp, options.out);
  const bytes = statSync(options.out).size;
  return { out: options.out, bytes, sha256: fileSha256(options.out), assets: summary, seconds: (Date.now() - started) / 1000 };
}

/** Bundling fixes for the single executable; each fails the build loudly if its target moved. */
function seaPlugin(version: string): esbuild.Plugin {
  const nativeAddons = join(ROOT, 'agent', 'native-addons.ts');
  return {
    name: 'driftline-sea',
    setup(build) {
      // better-sqlite3 finds its addon through `bindings`, which walks the file system.
      build.onResolve({ filter: /^bindings$/ }, () => ({ path: join(ROOT, 'packaging', 'shims', 'bindings.cjs') }));
      // mqtt.js's WebSocket and SOCKS transports (with ws, socks, ip-address) would be evaluated at
      // every start; the agent only speaks mqtt:// and mqtts://: a stand-in that refuses them.
      build.onResolve({ filter: /^\.\/(ws|socks)$/ }, (args) => {
        if (!/[\\/]mqtt[\\/]build[\\/]lib[\\/]connect$/.test(args.resolveDir)) return undefined;
        if (!existsSync(join(args.resolveDir, `${args.path}.js`)))
          throw new Error(`mqtt.js no longer has ${args.path}.js in ${args.resolveDir}: check the transport stand-in in build-agent.ts`);
        return { path: join(ROOT, 'packaging', 'shims', 'mqtt-transport-unsupported.cjs') };
      });
      // zod's z.locales namespace holds every translation of its messages (a quarter of a megabyte
      // of the bundle, parsed and held at every start); the agent uses none but the English
      // default, which zod's schemas import themselves.
      build.onLoad({ filter: /[\\/]zod[\\/]v4[\\/]locales[\\/]index\.js$/ }, (args) => {
        const english = 'export { default as en } from "./en.js";';
        if (!readFileSync(args.path, 'utf8').includes(english))
          throw new Error(`${args.path} no longer exports its English locale the way build-agent.ts expects`);
        return { contents: english, loader: 'js', resolveDir: dirname(args.path) };
      });
      // The generated gRPC client constructors are built when their module loads, which evaluates
      // all of grpc-js (and node:http2): device_link.ts imports drift.ts for DriftSketch, so every
      // start did. Marked pure, the ones the agent never uses are left out, and with them grpc-js
      // until enrolling imports fleet.ts (agent.ts imports it dynamically).
      build.onResolve({ filter: /^@grpc\/grpc-js$/ }, async (args) => {
        if (args.pluginData === 'driftline-sea' || args.importer.includes('node_modules')) return undefined;
        const resolved = await build.resolve(args.path, { kind: args.kind, importer: args.importer, resolveDir: args.resolveDir, pluginData: 'driftline-sea' });
        if (resolved.errors.length > 0) return { errors: resolved.errors };
        // Our modules that import it (generated ones for their client constructors) evaluate it only if they use it.
        return { path: resolved.path, sideEffects: false };
      });
      build.onLoad({ filter: /[\\/]common[\\/]proto[\\/]driftline[\\/]v1[\\/][^\\/]+\.ts$/ }, (args) => {
        const source = readFileSync(args.path, 'utf8');
        if (!source.includes('@grpc/grpc-js')) return undefined;
        const marked = source.replaceAll(/= makeGenericClientConstructor\(/g, '= /* @__PURE__ */ makeGenericClientConstructor(');
        if (marked === source) throw new Error(`${args.path} imports grpc-js but builds no client with makeGenericClientConstructor: check build-agent.ts`);
        return { contents: marked, loader: 'ts' };
      });
      // onnxruntime-node requires its binding by a path relative to node_modules.
      build.onLoad({ filter: /onnxruntime-node[\\/]dist[\\/]binding\.js$/ }, (args) => {
        const source = readFileSync(args.path, 'utf8');
        const pattern = /require\(`\.\.\/bin\/napi-v6\/\$\{process\.platform\}\/\$\{process\.arch\}\/onnxruntime_binding\.node`\)/;
        if (!pattern.test(source)) throw new Error(`${args.path} no longer loads its binding the way build-agent.ts expects`);
        return {
          contents: source.replace(
            pattern,
            `require(${JSON.stringify(nativeAddons)}).loadNativeAddon(\`node_modules/onnxruntime-node/bin/napi-v6/\${process.platform}/\${process.arch}/onnxruntime_binding.node\`)`,
          ),
          loader: 'js',
        };
      });
      // The version is read from package.json at run time in development; here it is fixed at build time.
      build.onLoad({ filter: /[\\/]common[\\/]version\.ts$/ }, () => ({
        contents: `export const DRIFTLINE_VERSION: string = ${JSON.stringify(version)};`,
        loader: 'ts',
      }));
      // Our modules that locate resources through import.meta.url get a URL in the extraction folder.
      build.onLoad({ filter: /\.ts$/ }, (args) => {
        if (args.path.includes('node_modules')) return undefined;
        const source = readFileSync(args.path, 'utf8');
        if (!/import\.meta\.(url|dirname|filename)/.test(source)) return undefined;
        const rel = relative(ROOT, args.path).split('\\').join('/');
        const url = `globalThis.__driftlineModuleUrl(${JSON.stringify(rel)})`;
        const file = `require("node:url").fileURLToPath(${url})`;
        return {
          contents: source
            .replaceAll('import.meta.url', url)
            .replaceAll('import.meta.filename', file)
            .replaceAll('import.meta.dirname', `require("node:path").dirname(${file})`),
          loader: 'ts',
        };
      });
    },
  };
}

/**
 * The archive asset: a 4-byte little-endian manifest length, the manifest, then the contents
 * at the offsets (from the archive's start) the manifest names. Offsets depend on the
 * manifest's length, which depends on them: laid out again until the length holds.
 */
function nativeArchive(arch: Arch, contents: ReadonlyArray<{ bytes: Uint8Array; file?: Omit<NativeFile, 'offset' | 'bytes'>; resource?: string }>): Buffer {
  const key = sha256(Buffer.from(JSON.stringify({ arch, files: contents.flatMap((c) => (c.file ? [[c.file.name, c.file.sha256]] : [])) }))).slice(0, 32);
  let headerBytes = 4;
  for (;;) {
    let offset = headerBytes;
    const files: NativeFile[] = [];
    const resources: NativeManifest['resources'] = {};
    for (const c of contents) {
      if (c.file) files.push({ ...c.file, offset, bytes: c.bytes.length });
      if (c.resource) resources[c.resource] = { offset, bytes: c.bytes.length };
      offset += c.bytes.length;
    }
    const manifest: NativeManifest = { format: 1, platform: 'linux', arch, key, files, resources };
    const json = Buffer.from(JSON.stringify(manifest), 'utf8');
    if (4 + json.length !== headerBytes) {
      headerBytes = 4 + json.length;
      continue;
    }
    const length = Buffer.alloc(4);
    length.writeUInt32LE(json.length);
    return Buffer.concat([length, json, ...contents.map((c) => c.bytes)]);
  }
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');
const fileSha256 = (path: string): string => sha256(readFileSync(path));
const mb = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MB`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      arch: { type: 'string', default: process.arch },
      node: { type: 'string' },
      'host-node': { type: 'string' },
      'sqlite-addon': { type: 'string' },
      out: { type: 'string' },
      'no-strip': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      [
        'usage: npm run package:agent -- [--arch x64|arm64] [--node <node binary> --host-node <same version, runs here>] [--sqlite-addon <better_sqlite3.node>] [--out <file>] [--no-strip]',
        '',
        `Builds dist/driftline-agent-linux-<arch>, a single executable on Node ${AGENT_NODE.version} with the native addons embedded.`,
        'The runtime comes from the npm registry (node-linux-<arch>, cached in .cache/node-runtimes); better-sqlite3 is',
        'compiled for it with node-gyp (for arm64 with aarch64-linux-gnu-g++), cached in .cache/better-sqlite3.',
        '',
      ].join('\n'),
    );
    return;
  }
  const arch = values.arch as Arch;
  if (!ARCHES.includes(arch)) throw new Error(`--arch must be x64 or arm64, not ${values.arch}`);
  if (process.platform !== 'linux') throw new Error('the agent binary is built on linux');
  if (values.node && arch !== process.arch && !values['host-node'])
    throw new Error(`--node for a ${arch} build on ${process.arch} needs --host-node (a ${process.arch} Node of the same version)`);
  const log = (line: string): void => void process.stdout.write(`${line}\n`);
  // The pinned runtime and its better-sqlite3 unless both are given.
  const inputs = values.node && values['sqlite-addon'] ? undefined : agentBuildInputs(arch, log);
  const options: BuildOptions = {
    arch,
    node: resolve(values.node ?? inputs!.runtime.node),
    hostNode: values.node ? (values['host-node'] && resolve(values['host-node'])) || undefined : inputs!.hostNode,
    sqliteAddon: resolve(values['sqlite-addon'] ?? inputs!.sqliteAddon),
    out: resolve(values.out ?? join(ROOT, 'dist', `driftline-agent-linux-${arch}`)),
    strip: !values['no-strip'],
    log,
  };
  process.stdout.write(`building driftline-agent for linux-${arch} from ${options.node}${values.node ? '' : ` (node ${AGENT_NODE.version})`}\n`);
  const built = await buildAgentBinary(options);
  const width = Math.max(...built.assets.map((a) => a.key.length));
  process.stdout.write(`embedded (gzip; extracted on first start into a folder named by their hash):\n`);
  for (const a of built.assets)
    process.stdout.write(`  ${a.key.padEnd(width)} ${mb(a.bytes).padStart(8)}${a.bytes !== a.sourceBytes ? `  (${mb(a.sourceBytes)} unpacked)` : ''}\n`);
  process.stdout.write(
    `${relative(process.cwd(), built.out) || built.out}: ${mb(built.bytes)}, sha256 ${built.sha256}, built in ${built.seconds.toFixed(1)} s\n`,
  );
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`package:agent: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
