import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';

/** A data folder holds credentials and telemetry: the owner only, whatever the umask or an older install left. */
export const PRIVATE_DIR_MODE = 0o700;
export const PRIVATE_FILE_MODE = 0o600;

/** SQLite's companions of a database file in WAL mode. */
const SQLITE_COMPANIONS = ['', '-wal', '-shm', '-journal'] as const;

/**
 * Creates the folder 0700, or tightens it to 0700 when it already exists (mkdir's mode
 * applies only to a folder it creates, and only through the umask).
 */
export function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  chmodSync(dir, PRIVATE_DIR_MODE);
}

/**
 * Before SQLite opens `file`: creates it 0600 when it is new (SQLite gives the -wal and -shm
 * files it creates the database file's mode) and tightens an existing one and its companions.
 * Call again after opening: a -wal or -shm left by an older install keeps its own mode.
 */
export function tightenDatabaseFiles(file: string): void {
  closeSync(openSync(file, 'a', PRIVATE_FILE_MODE));
  for (const suffix of SQLITE_COMPANIONS) {
    try {
      chmodSync(`${file}${suffix}`, PRIVATE_FILE_MODE);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}
