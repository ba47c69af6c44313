import type { Database, Statement } from 'better-sqlite3';
import { DriftlineError } from '../../../common/errors.js';
import type { ReleaseReads, ReleaseRepository, ReleaseTransaction, StoredRelease, StoredReleaseDraft } from '../../registry/ports.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';

/** The releases' tables; the module name ('releases') and the first script are those of every existing control-plane.db. */
const MIGRATIONS = [
  `CREATE TABLE releases (
     name TEXT NOT NULL,
     version INTEGER NOT NULL,
     sha256 TEXT NOT NULL,
     size_bytes INTEGER NOT NULL,
     key_ids TEXT NOT NULL,
     envelope BLOB NOT NULL,
     published_at_ms INTEGER NOT NULL,
     PRIMARY KEY (name, version)
   );`,
  `CREATE TABLE release_drafts (
     name TEXT NOT NULL,
     version INTEGER NOT NULL,
     manifest BLOB NOT NULL,
     recorded_at_ms INTEGER NOT NULL,
     reason TEXT NOT NULL,
     PRIMARY KEY (name, version)
   );`,
];

interface DraftRow {
  name: string;
  version: number;
  manifest: Buffer;
  recorded_at_ms: number;
  reason: string;
}

interface ReleaseRow {
  name: string;
  version: number;
  sha256: string;
  size_bytes: number;
  key_ids: string;
  envelope: Buffer;
  published_at_ms: number;
}

/** The statements, run synchronously: by the repository through its connection's queue, directly inside a unit of work. */
class ReleaseStatements {
  private readonly selectRelease: Statement<[string, number], ReleaseRow>;
  private readonly selectLatest: Statement<[string], ReleaseRow>;
  private readonly insertRelease: Statement<[ReleaseRow]>;
  private readonly replaceRelease: Statement<[ReleaseRow]>;
  private readonly selectDraft: Statement<[string, number], DraftRow>;
  private readonly upsertDraft: Statement<[DraftRow]>;

  constructor(db: Database) {
    this.selectRelease = db.prepare('SELECT * FROM releases WHERE name = ? AND version = ?');
    this.selectLatest = db.prepare('SELECT * FROM releases WHERE name = ? ORDER BY version DESC LIMIT 1');
    this.insertRelease = db.prepare(
      'INSERT INTO releases (name, version, sha256, size_bytes, key_ids, envelope, published_at_ms) VALUES (@name, @version, @sha256, @size_bytes, @key_ids, @envelope, @published_at_ms)',
    );
    this.replaceRelease = db.prepare(
      'UPDATE releases SET sha256 = @sha256, size_bytes = @size_bytes, key_ids = @key_ids, envelope = @envelope, published_at_ms = @published_at_ms WHERE name = @name AND version = @version',
    );
    this.selectDraft = db.prepare('SELECT * FROM release_drafts WHERE name = ? AND version = ?');
    this.upsertDraft = db.prepare(
      'INSERT INTO release_drafts (name, version, manifest, recorded_at_ms, reason) VALUES (@name, @version, @manifest, @recorded_at_ms, @reason) ' +
        'ON CONFLICT (name, version) DO UPDATE SET manifest = excluded.manifest, recorded_at_ms = excluded.recorded_at_ms, reason = excluded.reason',
    );
  }

  draft(name: string, version: number): StoredReleaseDraft | undefined {
    const row = this.selectDraft.get(name, version);
    return row ? { name: row.name, version: row.version, manifest: row.manifest, recordedAtMs: row.recorded_at_ms, reason: row.reason } : undefined;
  }

  putDraft(d: StoredReleaseDraft): void {
    this.upsertDraft.run({ name: d.name, version: d.version, manifest: d.manifest, recorded_at_ms: d.recordedAtMs, reason: d.reason });
  }

  replace(r: StoredRelease): void {
    const { changes } = this.replaceRelease.run(rowOf(r));
    if (changes === 0) throw new DriftlineError('MODEL_NOT_FOUND', `${r.name} v${r.version} has no release to replace`);
  }

  release(name: string, version: number): StoredRelease | undefined {
    const row = this.selectRelease.get(name, version);
    return row ? toRelease(row) : undefined;
  }

  latestRelease(name: string): StoredRelease | undefined {
    const row = this.selectLatest.get(name);
    return row ? toRelease(row) : undefined;
  }

  insert(r: StoredRelease): void {
    this.insertRelease.run(rowOf(r));
  }
}

/** The statements as async operations, each run by `runOne` (through the queue, or directly inside a unit of work). */
function operationsOver(s: ReleaseStatements, runOne: <T>(fn: () => T) => Promise<T>): ReleaseTransaction {
  return {
    release: (name, version) => runOne(() => s.release(name, version)),
    latestRelease: (name) => runOne(() => s.latestRelease(name)),
    draft: (name, version) => runOne(() => s.draft(name, version)),
    insert: (release) => runOne(() => s.insert(release)),
    replace: (release) => runOne(() => s.replace(release)),
    putDraft: (draft) => runOne(() => s.putDraft(draft)),
  };
}

/** Signed releases in SQLite (table releases). */
export class SqliteReleaseRepository implements ReleaseRepository {
  private readonly connection: SqliteConnection;
  private readonly outside: ReleaseReads;
  private readonly inside: ReleaseTransaction;

  constructor(db: Database) {
    applyMigrations(db, 'releases', MIGRATIONS);
    this.connection = connectionOf(db);
    const statements = new ReleaseStatements(db);
    this.outside = operationsOver(statements, (fn) => this.connection.run(fn));
    // Inside the unit of work the connection is this work's alone: statements run directly.
    this.inside = operationsOver(statements, async (fn) => fn());
  }

  transaction<T>(work: (tx: ReleaseTransaction) => Promise<T>): Promise<T> {
    return this.connection.unitOfWork(() => work(this.inside));
  }

  release(name: string, version: number): Promise<StoredRelease | undefined> {
    return this.outside.release(name, version);
  }
  latestRelease(name: string): Promise<StoredRelease | undefined> {
    return this.outside.latestRelease(name);
  }
  draft(name: string, version: number): Promise<StoredReleaseDraft | undefined> {
    return this.outside.draft(name, version);
  }
}

const rowOf = (r: StoredRelease): ReleaseRow => ({
  name: r.name,
  version: r.version,
  sha256: r.sha256,
  size_bytes: r.sizeBytes,
  key_ids: JSON.stringify(r.keyIds),
  envelope: r.envelope,
  published_at_ms: r.publishedAtMs,
});

function toRelease(row: ReleaseRow): StoredRelease {
  return {
    name: row.name,
    version: row.version,
    sha256: row.sha256,
    sizeBytes: row.size_bytes,
    keyIds: JSON.parse(row.key_ids) as string[],
    envelope: row.envelope,
    publishedAtMs: row.published_at_ms,
  };
}
