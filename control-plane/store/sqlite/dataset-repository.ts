import type { Database } from 'better-sqlite3';
import { datasetManifestSchema } from '../../../common/datasets/snapshot-layout.js';
import type { DatasetPage, DatasetRecord, DatasetRepository } from '../../datasets/ports.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';

const MIGRATIONS = [
  // seq orders the list (newest first) and is its page token; id is the content address.
  `CREATE TABLE datasets (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     id TEXT NOT NULL UNIQUE,
     model TEXT NOT NULL,
     sha256 TEXT NOT NULL,
     size_bytes INTEGER NOT NULL,
     rows INTEGER NOT NULL,
     created_ms INTEGER NOT NULL,
     parent_id TEXT,
     manifest TEXT NOT NULL
   );
   CREATE INDEX datasets_model ON datasets (model, seq);
   CREATE INDEX datasets_sha256 ON datasets (sha256);`,
];

interface Row {
  seq: number;
  id: string;
  model: string;
  sha256: string;
  size_bytes: number;
  rows: number;
  created_ms: number;
  manifest: string;
}

const toRecord = (row: Row): DatasetRecord => ({
  id: row.id,
  model: row.model,
  sha256: row.sha256,
  sizeBytes: row.size_bytes,
  rows: row.rows,
  createdAtMs: row.created_ms,
  manifest: datasetManifestSchema.parse(JSON.parse(row.manifest)),
});

/** Dataset snapshot manifests in SQLite; the tars themselves are content-addressed files (SnapshotBlobs). */
export class SqliteDatasetRepository implements DatasetRepository {
  private readonly connection: SqliteConnection;

  constructor(db: Database) {
    applyMigrations(db, 'datasets', MIGRATIONS);
    this.connection = connectionOf(db);
  }

  get(id: string): Promise<DatasetRecord | undefined> {
    return this.connection.run((db) => {
      const row = db.prepare('SELECT * FROM datasets WHERE id = ?').get(id) as Row | undefined;
      return row && toRecord(row);
    });
  }

  getBySha256(sha256: string): Promise<DatasetRecord | undefined> {
    return this.connection.run((db) => {
      const row = db.prepare('SELECT * FROM datasets WHERE sha256 = ? ORDER BY seq LIMIT 1').get(sha256) as Row | undefined;
      return row && toRecord(row);
    });
  }

  insertIfAbsent(record: DatasetRecord): Promise<DatasetRecord> {
    return this.connection.run((db) =>
      db.transaction(() => {
        db.prepare(`INSERT OR IGNORE INTO datasets (id, model, sha256, size_bytes, rows, created_ms, parent_id, manifest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`).run(
          record.id,
          record.model,
          record.sha256,
          record.sizeBytes,
          record.rows,
          record.createdAtMs,
          record.manifest.parent?.id ?? null,
          JSON.stringify(record.manifest),
        );
        return toRecord(db.prepare('SELECT * FROM datasets WHERE id = ?').get(record.id) as Row);
      })(),
    );
  }

  list(filter: { model?: string | undefined; limit: number; after?: string | undefined }): Promise<DatasetPage> {
    return this.connection.run((db) => {
      const model = filter.model ?? '';
      const before = filter.after ? Number(filter.after) : Number.MAX_SAFE_INTEGER;
      const rows = db
        .prepare(`SELECT * FROM datasets WHERE (? = '' OR model = ?) AND seq < ? ORDER BY seq DESC LIMIT ?`)
        .all(model, model, Number.isSafeInteger(before) ? before : 0, filter.limit + 1) as Row[];
      const page = rows.slice(0, filter.limit);
      return { datasets: page.map(toRecord), next: rows.length > filter.limit ? String(page.at(-1)!.seq) : undefined };
    });
  }
}
