import type { Database, Statement } from 'better-sqlite3';
import type { TensorSpec } from '../../../common/proto/driftline/v1/models.js';
import type { ModelVersionReads, ModelVersionRepository, ModelVersionTransaction, StoredModelVersion } from '../../registry/ports.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';

/** The registry's tables; the module name ('registry') and scripts are those of every existing control-plane.db. */
const MIGRATIONS = [
  `CREATE TABLE model_versions (
     name TEXT NOT NULL,
     version INTEGER NOT NULL,
     sha256 TEXT NOT NULL,
     size_bytes INTEGER NOT NULL,
     opset INTEGER NOT NULL,
     inputs TEXT NOT NULL,
     outputs TEXT NOT NULL,
     description TEXT NOT NULL,
     metadata TEXT NOT NULL,
     created_at_ms INTEGER NOT NULL,
     PRIMARY KEY (name, version)
   );`,
  // The version an amendment corrects (same bytes, new metadata); 0 for an upload.
  `ALTER TABLE model_versions ADD COLUMN amends_version INTEGER NOT NULL DEFAULT 0;`,
];

interface VersionRow {
  name: string;
  version: number;
  sha256: string;
  size_bytes: number;
  opset: number;
  inputs: string;
  outputs: string;
  description: string;
  metadata: string;
  created_at_ms: number;
  amends_version: number;
}

/** The statements, run synchronously: by the repository through its connection's queue, directly inside a unit of work. */
class ModelVersionStatements {
  private readonly selectLatest: Statement<[string], VersionRow>;
  private readonly selectVersion: Statement<[string, number], VersionRow>;
  private readonly selectVersions: Statement<[string], VersionRow>;
  private readonly selectLatestOfEach: Statement<[], VersionRow>;
  private readonly insertVersion: Statement<[VersionRow]>;

  constructor(db: Database) {
    this.selectLatest = db.prepare('SELECT * FROM model_versions WHERE name = ? ORDER BY version DESC LIMIT 1');
    this.selectVersion = db.prepare('SELECT * FROM model_versions WHERE name = ? AND version = ?');
    this.selectVersions = db.prepare('SELECT * FROM model_versions WHERE name = ? ORDER BY version');
    this.selectLatestOfEach = db.prepare(
      'SELECT * FROM model_versions m WHERE version = (SELECT max(version) FROM model_versions WHERE name = m.name) ORDER BY name',
    );
    this.insertVersion = db.prepare(
      `INSERT INTO model_versions (name, version, sha256, size_bytes, opset, inputs, outputs, description, metadata, created_at_ms, amends_version)
       VALUES (@name, @version, @sha256, @size_bytes, @opset, @inputs, @outputs, @description, @metadata, @created_at_ms, @amends_version)`,
    );
  }

  latest(name: string): StoredModelVersion | undefined {
    const row = this.selectLatest.get(name);
    return row ? toModelVersion(row) : undefined;
  }

  version(name: string, version: number): StoredModelVersion | undefined {
    const row = this.selectVersion.get(name, version);
    return row ? toModelVersion(row) : undefined;
  }

  versions(name: string): StoredModelVersion[] {
    return this.selectVersions.all(name).map(toModelVersion);
  }

  latestOfEach(): StoredModelVersion[] {
    return this.selectLatestOfEach.all().map(toModelVersion);
  }

  insert(version: StoredModelVersion): void {
    this.insertVersion.run(toRow(version));
  }
}

/** The statements as async operations, each run by `runOne` (through the queue, or directly inside a unit of work). */
function operationsOver(s: ModelVersionStatements, runOne: <T>(fn: () => T) => Promise<T>): ModelVersionTransaction {
  return {
    latest: (name) => runOne(() => s.latest(name)),
    version: (name, version) => runOne(() => s.version(name, version)),
    versions: (name) => runOne(() => s.versions(name)),
    latestOfEach: () => runOne(() => s.latestOfEach()),
    insert: (version) => runOne(() => s.insert(version)),
  };
}

/** Model versions in SQLite (table model_versions). */
export class SqliteModelVersionRepository implements ModelVersionRepository {
  private readonly connection: SqliteConnection;
  private readonly outside: ModelVersionReads;
  private readonly inside: ModelVersionTransaction;

  constructor(db: Database) {
    applyMigrations(db, 'registry', MIGRATIONS);
    this.connection = connectionOf(db);
    const statements = new ModelVersionStatements(db);
    this.outside = operationsOver(statements, (fn) => this.connection.run(fn));
    // Inside the unit of work the connection is this work's alone: statements run directly.
    this.inside = operationsOver(statements, async (fn) => fn());
  }

  transaction<T>(work: (tx: ModelVersionTransaction) => Promise<T>): Promise<T> {
    return this.connection.unitOfWork(() => work(this.inside));
  }

  latest(name: string): Promise<StoredModelVersion | undefined> {
    return this.outside.latest(name);
  }
  version(name: string, version: number): Promise<StoredModelVersion | undefined> {
    return this.outside.version(name, version);
  }
  versions(name: string): Promise<StoredModelVersion[]> {
    return this.outside.versions(name);
  }
  latestOfEach(): Promise<StoredModelVersion[]> {
    return this.outside.latestOfEach();
  }
}

function toModelVersion(row: VersionRow): StoredModelVersion {
  return {
    name: row.name,
    version: row.version,
    sha256: row.sha256,
    sizeBytes: row.size_bytes,
    createdAtMs: row.created_at_ms,
    opset: row.opset,
    inputs: JSON.parse(row.inputs) as TensorSpec[],
    outputs: JSON.parse(row.outputs) as TensorSpec[],
    description: row.description,
    metadata: JSON.parse(row.metadata) as Record<string, string>,
    amendsVersion: row.amends_version,
  };
}

function toRow(v: StoredModelVersion): VersionRow {
  return {
    name: v.name,
    version: v.version,
    sha256: v.sha256,
    size_bytes: v.sizeBytes,
    opset: v.opset,
    inputs: JSON.stringify(v.inputs),
    outputs: JSON.stringify(v.outputs),
    description: v.description,
    metadata: JSON.stringify(v.metadata),
    created_at_ms: v.createdAtMs,
    amends_version: v.amendsVersion,
  };
}
