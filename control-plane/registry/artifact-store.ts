import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, mkdirSync, rmSync } from 'node:fs';
import { open, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { DriftlineError } from '../../common/errors.js';

const SHA256_HEX = /^[0-9a-f]{64}$/;

export const isSha256Hex = (value: string): boolean => SHA256_HEX.test(value);

/** Where an artifact lives below the artifact base URL and below the store's root. */
export const artifactPath = (sha256: string): string => `artifacts/sha256/${sha256}`;

/** An artifact being written: bytes are hashed as they arrive and land under their hash only on commit. */
export interface ArtifactWriter {
  readonly bytesWritten: number;
  write(chunk: Uint8Array): Promise<void>;
  /** The sha256 of everything written so far; ends the writer's hashing. */
  digest(): string;
  /** Everything written, read back from the temporary file. */
  readBack(): Promise<Buffer>;
  /** fsyncs and moves the file under its hash; `created` is false when that content was already stored. */
  commit(): Promise<{ sha256: string; size: number; created: boolean }>;
  /** Drops the temporary file; safe to call after commit or twice. */
  abort(): Promise<void>;
}

/**
 * Content-addressed files under `<dataDir>/artifacts/sha256/<first 2 hex>/<hex>`. A file
 * appears under its name only complete and fsynced (temp file, fsync, rename, fsync of the
 * directory), so a crash leaves either nothing or the whole artifact.
 */
export class ArtifactStore {
  private readonly tmpDir: string;

  constructor(private readonly root: string) {
    this.tmpDir = join(root, 'tmp');
    // Temp files left by a crash belong to uploads that can never finish.
    rmSync(this.tmpDir, { recursive: true, force: true });
    mkdirSync(this.tmpDir, { recursive: true });
  }

  fileOf(sha256: string): string {
    if (!isSha256Hex(sha256)) throw new DriftlineError('ID_INVALID', `${JSON.stringify(sha256)} is not a lowercase hex sha256`);
    return join(this.root, 'sha256', sha256.slice(0, 2), sha256);
  }

  /** Size of a stored artifact, or undefined when it is not stored. */
  async sizeOf(sha256: string): Promise<number | undefined> {
    try {
      return (await stat(this.fileOf(sha256))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Streams an artifact, or the inclusive byte range [start, end] of it. */
  read(sha256: string, range?: { start: number; end: number }): Readable {
    return createReadStream(this.fileOf(sha256), range);
  }

  async remove(sha256: string): Promise<void> {
    await rm(this.fileOf(sha256), { force: true });
  }

  async createWriter(): Promise<ArtifactWriter> {
    const tmpFile = join(this.tmpDir, randomBytes(16).toString('hex'));
    let handle: FileHandle | undefined = await open(tmpFile, 'wx', 0o644);
    const hash = createHash('sha256');
    let bytesWritten = 0;
    let sha256: string | undefined;

    const closeHandle = async (): Promise<void> => {
      const h = handle;
      handle = undefined;
      await h?.close();
    };
    const digest = (): string => (sha256 ??= hash.digest('hex'));

    return {
      get bytesWritten() {
        return bytesWritten;
      },
      async write(chunk) {
        if (!handle || sha256) throw new DriftlineError('INTERNAL', 'artifact writer is closed');
        await handle.write(chunk);
        hash.update(chunk);
        bytesWritten += chunk.length;
      },
      digest,
      readBack: () => readFile(tmpFile),
      commit: async () => {
        const hex = digest();
        await handle?.sync();
        await closeHandle();
        const target = this.fileOf(hex);
        if ((await this.sizeOf(hex)) !== undefined) {
          await rm(tmpFile, { force: true });
          return { sha256: hex, size: bytesWritten, created: false };
        }
        mkdirSync(dirname(target), { recursive: true });
        await rename(tmpFile, target);
        await syncDirectory(dirname(target));
        return { sha256: hex, size: bytesWritten, created: true };
      },
      abort: async () => {
        await closeHandle();
        await rm(tmpFile, { force: true });
      },
    };
  }
}

/** Makes a rename durable: the new directory entry survives a power cut only once the directory is synced. */
async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
