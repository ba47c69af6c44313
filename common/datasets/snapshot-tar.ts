/**
 * A snapshot as one tar (POSIX ustar): what `datasets export` writes and workers download.
 * Written here from memory, deterministically (sorted paths, mode 0644, mtime 0, no owner), so
 * the same snapshot always gives the same bytes and the same sha256. `tar -x`, Python's tarfile
 * and node-tar read it. Paths are the snapshot's own: short, so ustar's 100-byte name suffices.
 */
import { DriftlineError } from '../errors.js';
import { MANIFEST_FILE, SPLITS, type DatasetManifest } from './snapshot-layout.js';

const BLOCK = 512;

/** Bytes a file of `size` bytes takes in the tar: its header block and its content, padded to a block. */
export const tarEntryBytes = (size: number): number => BLOCK + Math.ceil(size / BLOCK) * BLOCK;

/** The two zero blocks that end a tar. */
export const TAR_END_BYTES = 2 * BLOCK;

/** The data files' paths in the order the tar holds them (sorted). */
export const tarFileOrder = (paths: Iterable<string>): string[] => [...paths].sort();

/** dataset.json first (a reader can stop there), then every data file by path. */
export function snapshotTar(manifest: DatasetManifest, files: ReadonlyMap<string, Uint8Array>): Buffer {
  const paths = tarFileOrder(files.keys());
  const body = Buffer.alloc(paths.reduce((n, path) => n + tarEntryBytes(files.get(path)!.length), 0) + TAR_END_BYTES);
  let offset = 0;
  for (const path of paths) {
    const data = files.get(path)!;
    writeTarFileHeader(body, offset, path, data.length);
    body.set(data, offset + BLOCK);
    offset += tarEntryBytes(data.length);
  }
  return Buffer.concat([snapshotTarHead(manifest), body]);
}

/**
 * What comes before the data files: the split folders and dataset.json. A writer that lays the
 * data files out itself (the snapshot builder) writes this, then its files as snapshotTar would
 * (writeTarFileHeader, the content at offset + 512, tarEntryBytes apart, in tarFileOrder), then
 * TAR_END_BYTES of zeros.
 */
export function snapshotTarHead(manifest: DatasetManifest): Buffer {
  const json = Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`);
  const out = Buffer.alloc(SPLITS.length * BLOCK + tarEntryBytes(json.length));
  let offset = 0;
  for (const split of SPLITS) {
    header(out, offset, `${split}/`, 0, '5');
    offset += BLOCK;
  }
  header(out, offset, MANIFEST_FILE, json.length, '0');
  out.set(json, offset + BLOCK);
  return out;
}

/** A regular file's header block at `at` (its content follows, at at + 512). */
export function writeTarFileHeader(out: Buffer, at: number, path: string, size: number): void {
  header(out, at, path, size, '0');
}

function header(out: Buffer, at: number, path: string, size: number, type: '0' | '5'): void {
  if (Buffer.byteLength(path) > 99) throw new DriftlineError('DATASET_INVALID', `snapshot path ${path} is too long for a tar header`);
  const field = (offset: number, length: number, text: string): void => void out.write(text, at + offset, length, 'ascii');
  const octal = (offset: number, length: number, value: number): void => field(offset, length, `${value.toString(8).padStart(length - 1, '0')}\0`);
  out.write(path, at, 100, 'utf8');
  octal(100, 8, type === '5' ? 0o755 : 0o644);
  octal(108, 8, 0);
  octal(116, 8, 0);
  octal(124, 12, size);
  octal(136, 12, 0);
  field(148, 8, '        ');
  field(156, 1, type);
  field(257, 6, 'ustar\0');
  field(263, 2, '00');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += out[at + i]!;
  field(148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
}

/**
 * The regular files of a tar, by path; at most maxBytes of content in all (a tar that claims
 * more is refused before it is copied). For snapshots read back from the blob store (a replayed
 * parent); readSnapshotFiles then verifies every file against the manifest.
 */
export function untarSnapshot(tar: Uint8Array, maxBytes: number): Map<string, Buffer> {
  const bytes = Buffer.from(tar.buffer, tar.byteOffset, tar.byteLength);
  const files = new Map<string, Buffer>();
  let total = 0;
  for (let at = 0; at + BLOCK <= bytes.length;) {
    const block = bytes.subarray(at, at + BLOCK);
    if (block.every((b) => b === 0)) break;
    const name = block.toString('utf8', 0, 100).replace(/\0.*$/s, '');
    const size = parseInt(block.toString('ascii', 124, 136).replace(/\0.*$/s, '').trim() || '0', 8);
    const type = block.toString('ascii', 156, 157);
    if (!Number.isSafeInteger(size) || size < 0 || at + BLOCK + size > bytes.length)
      throw new DriftlineError('DATASET_INVALID', `tar entry ${name} is truncated`);
    if (type === '0' || type === '\0') {
      total += size;
      if (total > maxBytes) throw new DriftlineError('DATASET_INVALID', `the snapshot tar holds more than ${maxBytes} bytes`);
      files.set(name.replace(/^\.\//, ''), bytes.subarray(at + BLOCK, at + BLOCK + size));
    }
    at += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
  }
  return files;
}
