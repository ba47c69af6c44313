import { createHash } from 'node:crypto';
import { chmodSync, closeSync, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import * as sea from 'node:sea';
import { pathToFileURL } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { DriftlineError } from '../common/errors.js';

/**
 * Native addons inside the single executable. The build (packaging/build-agent.ts) embeds
 * better-sqlite3's and onnxruntime-node's binaries as SEA assets with a manifest; on first
 * start they are extracted into a folder named by the manifest's content hash, written to a
 * temporary folder and renamed into place so a crash or a second process never sees half a
 * folder, and loaded from there with process.dlopen. Later starts verify and reuse the folder.
 * The folder mirrors the packages' layout (node_modules/onnxruntime-node/bin/napi-v6/...),
 * so code that resolves a file inside a package from its own location finds it there, and
 * onnxruntime_binding.node finds libonnxruntime.so.1 beside it through its RUNPATH ($ORIGIN).
 *
 * Everything embedded is one SEA asset, NATIVE_ARCHIVE_ASSET: a 4-byte little-endian length,
 * the manifest (JSON), then each file's bytes at the offset its manifest entry gives. Node
 * reads every asset's header at start, and headers of separate assets sit between their
 * contents in the blob: with the 17 MB onnxruntime library between two of them, a start
 * faulted in pages (2 MB folios) in the middle of the blob. One asset keeps what a start
 * touches at the blob's head, beside the code.
 */

export const NATIVE_ARCHIVE_ASSET = 'driftline/archive';
/** Overrides where the addons are extracted (the systemd unit points it at the cache directory). */
export const NATIVE_DIR_ENV = 'DRIFTLINE_AGENT_NATIVE_DIR';
const COMPLETE_MARKER = '.complete';

export interface NativeFile {
  /** Path inside the extraction folder, e.g. libonnxruntime.so.1 or firmware-profiles/generic-x86_64-cpu.yaml. */
  name: string;
  /** Where its gzip-compressed bytes are in the archive asset (from the archive's start) and how many. */
  offset: number;
  bytes: number;
  /** sha256 and size of the uncompressed file. */
  sha256: string;
  size: number;
}

export interface NativeManifest {
  format: 1;
  platform: string;
  arch: string;
  /** sha256 over the files' names and hashes: the extraction folder's name. */
  key: string;
  files: NativeFile[];
  /** Other embedded resources (the selftest's demo model), stored as they are, by key. */
  resources: Record<string, { offset: number; bytes: number }>;
}

export interface NativeAddonsInfo {
  dir: string;
  /** True when this call extracted the folder, false when it reused a verified one. */
  extracted: boolean;
  files: NativeFile[];
}

/** True when running as the packaged single executable (not under Node with node_modules). */
export function isSingleExecutable(): boolean {
  try {
    return sea.isSea();
  } catch {
    return false;
  }
}

/** Where extracted addons live: $DRIFTLINE_AGENT_NATIVE_DIR, else the XDG cache, else ~/.cache, else the temp folder. */
export function nativeCacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env[NATIVE_DIR_ENV]) return env[NATIVE_DIR_ENV];
  if (env.XDG_CACHE_HOME) return join(env.XDG_CACHE_HOME, 'driftline-agent');
  const home = env.HOME ?? safeHomedir();
  if (home) return join(home, '.cache', 'driftline-agent');
  return join(tmpdir(), `driftline-agent-${process.getuid?.() ?? 'user'}`);
}

function safeHomedir(): string | undefined {
  try {
    return homedir() || undefined;
  } catch {
    return undefined;
  }
}

let manifestCache: NativeManifest | undefined;
let prepared: NativeAddonsInfo | undefined;
const loaded = new Map<string, unknown>();

/** The manifest the build embedded; throws NATIVE_ADDON_FAILED outside a single executable. */
export function embeddedNativeManifest(): NativeManifest {
  if (manifestCache) return manifestCache;
  if (!isSingleExecutable()) throw new DriftlineError('NATIVE_ADDON_FAILED', 'embedded native addons exist only in the packaged driftline-agent binary');
  let manifest: NativeManifest;
  try {
    const head = archiveBytes(0, 4);
    manifest = JSON.parse(Buffer.from(archiveBytes(4, new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true))).toString('utf8')) as NativeManifest;
  } catch (err) {
    throw new DriftlineError('NATIVE_ADDON_FAILED', 'the binary holds no native addon manifest; rebuild it with npm run package:agent', { cause: err });
  }
  if (manifest.platform !== process.platform || manifest.arch !== process.arch) {
    throw new DriftlineError(
      'NATIVE_ADDON_FAILED',
      `this binary embeds addons for ${manifest.platform}-${manifest.arch}, not ${process.platform}-${process.arch}`,
    );
  }
  manifestCache = manifest;
  return manifest;
}

/** Extracts the embedded addons once (or verifies the folder a previous start extracted) and says where they are. */
export function prepareNativeAddons(root: string = nativeCacheRoot()): NativeAddonsInfo {
  if (prepared) return prepared;
  const manifest = embeddedNativeManifest();
  const dir = join(root, manifest.key);
  try {
    mkdirSync(root, { recursive: true, mode: 0o700 });
    if (existsSync(join(dir, COMPLETE_MARKER))) {
      if (verifyFolder(dir, manifest.files)) return (prepared = { dir, extracted: false, files: manifest.files });
      // Tampered or damaged: move it aside and extract afresh.
      const aside = `${dir}.damaged-${process.pid}`;
      renameSync(dir, aside);
      rmSync(aside, { recursive: true, force: true });
    }
    const tmp = mkdtempSync(join(root, `.tmp-${manifest.key.slice(0, 12)}-`));
    try {
      for (const file of manifest.files) writeAsset(tmp, file);
      writeFileSync(join(tmp, COMPLETE_MARKER), `${manifest.key}\n`);
      try {
        renameSync(tmp, dir);
      } catch (err) {
        // Another process renamed its copy first: use that one.
        const code = (err as NodeJS.ErrnoException).code;
        if ((code !== 'ENOTEMPTY' && code !== 'EEXIST') || !verifyFolder(dir, manifest.files)) throw err;
        rmSync(tmp, { recursive: true, force: true });
        return (prepared = { dir, extracted: false, files: manifest.files });
      }
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
    return (prepared = { dir, extracted: true, files: manifest.files });
  } catch (err) {
    if (err instanceof DriftlineError) throw err;
    throw new DriftlineError(
      'NATIVE_ADDON_FAILED',
      `cannot extract the native addons into ${dir}: ${(err as Error).message} (set ${NATIVE_DIR_ENV} to a writable folder that allows executables)`,
      { cause: err },
    );
  }
}

/**
 * The file URL a bundled module would have if the repository's layout were unpacked in the
 * extraction folder: modules that find resources beside themselves through import.meta.url
 * (common/firmware-profile.ts and its firmware-profiles/ folder) find the extracted copies.
 */
export function extractedModuleUrl(repoRelativePath: string): string {
  return pathToFileURL(join(prepareNativeAddons().dir, repoRelativePath)).href;
}

/** Loads one embedded addon from the extraction folder, by its path there or its file name (better_sqlite3.node). */
export function loadNativeAddon(name: string): unknown {
  const cached = loaded.get(name);
  if (cached) return cached;
  const info = prepareNativeAddons();
  const file = info.files.find((f) => f.name === name) ?? info.files.find((f) => f.name.endsWith(`/${name}`));
  if (!file) throw new DriftlineError('NATIVE_ADDON_FAILED', `the binary embeds no native addon named ${name}`);
  const module = { exports: {} as unknown };
  try {
    process.dlopen(module, join(info.dir, file.name));
  } catch (err) {
    throw new DriftlineError('NATIVE_ADDON_FAILED', `cannot load ${name} from ${info.dir}: ${(err as Error).message}`, { cause: err });
  }
  loaded.set(name, module.exports);
  return module.exports;
}

/**
 * `length` bytes at `offset` of the archive asset, a view of the executable's own mapping
 * (getRawAsset copies nothing, so only the pages read are faulted in).
 */
function archiveBytes(offset: number, length: number): Uint8Array {
  const raw = sea.getRawAsset(NATIVE_ARCHIVE_ASSET) as ArrayBuffer;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > raw.byteLength) {
    throw new DriftlineError('NATIVE_ADDON_FAILED', `the embedded archive has no bytes ${offset}..${offset + length} (it holds ${raw.byteLength})`);
  }
  return new Uint8Array(raw, offset, length);
}

function writeAsset(dir: string, file: NativeFile): void {
  const bytes = gunzipSync(archiveBytes(file.offset, file.bytes));
  if (bytes.length !== file.size || sha256(bytes) !== file.sha256) {
    throw new DriftlineError('NATIVE_ADDON_FAILED', `embedded file ${file.name} does not match its manifest entry`);
  }
  const path = join(dir, file.name);
  // Shared objects must be executable; resources (firmware profiles) are plain files.
  const mode = /\.(node|so)(\.\d+)*$/.test(file.name) ? 0o755 : 0o644;
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  const fd = openSync(path, 'w', mode);
  try {
    writeFileSync(fd, bytes);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  chmodSync(path, mode);
}

function verifyFolder(dir: string, files: readonly NativeFile[]): boolean {
  try {
    return files.every((f) => statSync(join(dir, f.name)).size === f.size && fileSha256(join(dir, f.name)) === f.sha256);
  } catch {
    return false;
  }
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/** Hashes in chunks so verifying a 45 MB library does not grow the heap by 45 MB. */
function fileSha256(path: string): string {
  const hash = createHash('sha256');
  const chunk = Buffer.allocUnsafe(1 << 20);
  const fd = openSync(path, 'r');
  try {
    for (let n = readSync(fd, chunk); n > 0; n = readSync(fd, chunk)) hash.update(chunk.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

/** Reads an embedded asset other than the addons (e.g. the selftest's demo model); undefined outside the binary. */
export function readEmbeddedAsset(key: string): Buffer | undefined {
  if (!isSingleExecutable()) return undefined;
  try {
    const resource = embeddedNativeManifest().resources[key];
    return resource ? Buffer.from(archiveBytes(resource.offset, resource.bytes)) : undefined;
  } catch {
    return undefined;
  }
}
