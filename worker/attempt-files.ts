/**
 * A worker's files: the per-attempt folders under its work directory (downloads, the extracted
 * dataset, the trainer's output), the lock that keeps two workers out of one directory, and
 * the cleanup of what a killed worker left behind (its folders, and a trainer still running
 * in its own process group).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { x as extractTar } from 'tar';
import { DriftlineError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { LeasedArtifact } from './worker-api.js';

export const ATTEMPTS_DIR = 'attempts';
export const LOCK_FILE = 'worker.lock';
/** Where an attempt's trainer pid (its process group) is kept while it runs. */
export const TRAINER_PID_FILE = 'trainer.pid';
/** How long a leftover trainer's group gets to go after SIGKILL. */
const LEFTOVER_EXIT_WAIT_MS = 5_000;

/** A job id and attempt as a folder name: only the id's safe characters. */
export function attemptDirName(jobId: string, attempt: number): string {
  return `${jobId.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 80)}-${attempt}`;
}

/** Whether a process runs: signal 0 reaches it, and (where /proc says) it is not a zombie its new parent has yet to reap. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    // /proc/<pid>/stat: "pid (name) S ...": the state follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** Work directories held by workers of this process (the lock file's pid cannot tell them apart). */
const heldHere = new Set<string>();

/** Takes the work directory: WORKER_DIR_IN_USE while another live worker holds its lock. Returns the release. */
export async function lockWorkDir(workDir: string): Promise<() => Promise<void>> {
  const key = resolve(workDir);
  await mkdir(join(workDir, ATTEMPTS_DIR), { recursive: true, mode: 0o700 });
  const lock = join(workDir, LOCK_FILE);
  const holder = existsSync(lock) ? Number(readFileSync(lock, 'utf8').trim()) : NaN;
  if (heldHere.has(key) || (Number.isInteger(holder) && holder > 0 && holder !== process.pid && processAlive(holder))) {
    const pid = heldHere.has(key) ? process.pid : holder;
    throw new DriftlineError(
      'WORKER_DIR_IN_USE',
      `${workDir} is in use by the worker with pid ${pid}: give each worker its own --work-dir (or delete ${lock} if that process is not a worker)`,
      { details: { workDir, pid } },
    );
  }
  heldHere.add(key);
  await writeFile(lock, `${process.pid}\n`, { mode: 0o600 });
  return async () => {
    heldHere.delete(key);
    const now = await readFile(lock, 'utf8').catch(() => '');
    if (now.trim() === String(process.pid)) await rm(lock, { force: true });
  };
}

/** The trainer a killed worker left running: its pid file names it, and /proc shows it was started for that folder. */
function leftoverTrainer(dir: string): number | undefined {
  const pid = Number((existsSync(join(dir, TRAINER_PID_FILE)) ? readFileSync(join(dir, TRAINER_PID_FILE), 'utf8') : '').trim());
  if (!Number.isInteger(pid) || pid <= 1 || !processAlive(pid)) return undefined;
  // Without /proc (not Linux) the pid cannot be checked against the folder: better leave it than kill a stranger.
  const cmdline = existsSync(`/proc/${pid}/cmdline`) ? readFileSync(`/proc/${pid}/cmdline`, 'utf8') : '';
  return cmdline.includes(dir) ? pid : undefined;
}

/** Removes what earlier runs left in the work directory, stopping their trainers first. Returns the folders removed. */
export async function cleanLeftovers(workDir: string, logger: Logger): Promise<string[]> {
  const root = join(workDir, ATTEMPTS_DIR);
  const removed: string[] = [];
  for (const entry of await readdir(root, { withFileTypes: true }).catch(() => [])) {
    const dir = join(root, entry.name);
    const pid = entry.isDirectory() ? leftoverTrainer(dir) : undefined;
    if (pid !== undefined) {
      logger.warn({ pid, dir }, 'stopping a trainer an earlier worker left running');
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // Gone in the meantime.
      }
      // Gone before its folder goes, so it cannot write into a folder being removed.
      for (let waited = 0; processAlive(pid) && waited < LEFTOVER_EXIT_WAIT_MS; waited += 50) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}

/**
 * Streams an artifact to `path`, hashing as it goes: TRAINING_ARTIFACT_MISMATCH as soon as more
 * bytes than the lease named arrive, and at the end when the size or the sha256 differ. The file
 * is removed on any failure. Aborting the signal stops the download (breaking out of the stream
 * cancels the call).
 */
export async function downloadVerified(
  chunks: AsyncIterable<Uint8Array>,
  expected: LeasedArtifact,
  path: string,
  what: string,
  signal: AbortSignal,
): Promise<void> {
  const hash = createHash('sha256');
  let received = 0;
  const file = await open(path, 'w', 0o600);
  try {
    for await (const chunk of chunks) {
      if (signal.aborted) throw new DriftlineError('TRAINER_CANCELLED', `the download of the ${what} was stopped`);
      received += chunk.byteLength;
      if (received > expected.sizeBytes) {
        throw new DriftlineError('TRAINING_ARTIFACT_MISMATCH', `the ${what} sent more than the ${expected.sizeBytes} bytes its lease names`, {
          details: { what, sha256: expected.sha256, sizeBytes: expected.sizeBytes },
        });
      }
      hash.update(chunk);
      await file.write(chunk);
    }
    const sha256 = hash.digest('hex');
    if (received !== expected.sizeBytes || sha256 !== expected.sha256) {
      throw new DriftlineError(
        'TRAINING_ARTIFACT_MISMATCH',
        `the ${what} arrived as ${received} bytes with sha256 ${sha256}; its lease names ${expected.sizeBytes} bytes with sha256 ${expected.sha256}`,
        { details: { what, expected, received: { sha256, sizeBytes: received } } },
      );
    }
    await file.sync();
  } catch (err) {
    await file.close().catch(() => undefined);
    await rm(path, { force: true });
    throw err;
  }
  await file.close();
}

/** Unpacks a verified snapshot tar: regular files and folders only (no links, devices, or paths out of `dir`). */
export async function extractDataset(tarPath: string, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const refused: string[] = [];
  try {
    await extractTar({
      file: tarPath,
      cwd: dir,
      strict: true,
      preservePaths: false,
      filter: (path, entry) => {
        const type = 'type' in entry ? entry.type : entry.isFile() ? 'File' : 'Directory';
        const ok = type === 'File' || type === 'OldFile' || type === 'Directory';
        if (!ok) refused.push(`${path} (${type})`);
        return ok;
      },
    });
  } catch (cause) {
    throw new DriftlineError('DATASET_INVALID', `the dataset tar cannot be extracted: ${(cause as Error).message}`, { cause });
  }
  if (refused.length > 0) throw new DriftlineError('DATASET_INVALID', `the dataset tar holds entries that are not files: ${refused.slice(0, 5).join(', ')}`);
}

export async function sha256OfFile(path: string): Promise<{ sha256: string; sizeBytes: number }> {
  const hash = createHash('sha256');
  let sizeBytes = 0;
  const file = await open(path, 'r');
  try {
    for await (const chunk of file.createReadStream({ autoClose: false })) {
      hash.update(chunk as Buffer);
      sizeBytes += (chunk as Buffer).length;
    }
  } finally {
    await file.close();
  }
  return { sha256: hash.digest('hex'), sizeBytes };
}
