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

/**
 * The one write path of a connection. better-sqlite3 is synchronous and a connection has a
 * single transaction, so a unit of work that awaits between its statements would otherwise
 * let any other statement on the connection (an ingest commit, a second unit of work) run
 * inside its transaction: committed or rolled back with it, and seeing its uncommitted rows.
 * Units of work therefore queue here one after another, and so does every statement issued
 * while one is open. When none is open a statement runs at once, with no queue hop: the
 * telemetry group commit stays as fast as a direct call.
 */
export class SqliteConnection {
  private tail: Promise<unknown> = Promise.resolve();
  /** Units of work and statements queued or running behind one. */
  private queued = 0;

  constructor(readonly db: Database) {}

  /** Runs fn (one statement or a synchronous transaction) now, or after the open unit of work. */
  run<T>(fn: (db: Database) => T): Promise<T> {
    if (this.queued === 0) {
      try {
        return Promise.resolve(fn(this.db));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.enqueue(async () => fn(this.db));
  }

  /**
   * Runs work in one transaction (BEGIN IMMEDIATE, so a second process waits for the write lock
   * up front instead of failing at its first write); commits when it resolves, rolls back when
   * it throws. The work must issue its statements through the handle it is given (which runs them
   * directly), not through run(), which would wait for this very unit of work.
   */
  unitOfWork<T>(work: () => Promise<T>): Promise<T> {
    return this.enqueue(async () => {
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const result = await work();
        this.db.exec('COMMIT');
        return result;
      } catch (err) {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
        throw err;
      }
    });
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    this.queued++;
    const run = this.tail.then(fn).finally(() => {
      this.queued--;
    });
    this.tail = run.catch(() => undefined);
    return run;
  }
}

const connections = new WeakMap<Database, SqliteConnection>();

/** The one SqliteConnection of a database handle, shared by every repository over it (one queue per connection). */
export function connectionOf(db: Database): SqliteConnection {
  let connection = connections.get(db);
  if (!connection) {
    connection = new SqliteConnection(db);
    connections.set(db, connection);
  }
  return connection;
}
