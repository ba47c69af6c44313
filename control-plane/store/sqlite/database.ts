import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3, { type Database } from 'better-sqlite3';
import { DriftlineError } from '../../../common/errors.js';
import { tightenDatabaseFiles } from '../../../common/private-files.js';

export type { Database };

/** How long a writer waits for another connection's lock before SQLITE_BUSY. */
const BUSY_TIMEOUT_MS = 5_000;

/**
 * Opens the control plane's SQLite file. WAL lets readers (the API) run beside the
 * ingest writer; synchronous=FULL because a commit acknowledges telemetry to a device,
 * and an acknowledged record must survive a power cut. The file and its -wal/-shm are
 * the owner's only (0600), also when an older install left them readable.
 */
export function openDatabase(file: string): Database {
  try {
    if (file !== ':memory:') {
      mkdirSync(dirname(file), { recursive: true });
      tightenDatabaseFiles(file);
    }
    const db = new BetterSqlite3(file);
    db.pragma('journal_mode = WAL');
    if (file !== ':memory:') tightenDatabaseFiles(file);
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    return db;
  } catch (err) {
    throw new DriftlineError('STORE_FAILED', `cannot open database ${file}`, { cause: err });
  }
}

/**
 * Brings one module's tables up to date. Each module (fleet, registry, telemetry, ...)
 * owns an append-only list of SQL scripts; version N is the N-th script. Each script runs
 * in its own transaction with its version row, so a crash never leaves half a migration.
 */
export function applyMigrations(db: Database, moduleName: string, migrations: readonly string[]): void {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    module TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (module, version)
  )`);
  const row = db.prepare('SELECT max(version) AS version FROM schema_migrations WHERE module = ?').get(moduleName) as { version: number | null };
  const current = row.version ?? 0;
  if (current > migrations.length) {
    throw new DriftlineError('STORE_FAILED', `the ${moduleName} tables are at version ${current}, newer than this build knows (${migrations.length})`, {
      details: { module: moduleName, version: current, known: migrations.length },
    });
  }
  const record = db.prepare('INSERT INTO schema_migrations (module, version) VALUES (?, ?)');
  for (let version = current + 1; version <= migrations.length; version++) {
    db.transaction(() => {
      db.exec(migrations[version - 1]!);
      record.run(moduleName, version);
    })();
  }
}
