import type { Database, Statement } from 'better-sqlite3';
import { DriftSketch } from '../../../common/proto/driftline/v1/drift.js';
import { mergeSketches } from '../../../common/drift/sketch.js';
import { DriftlineError } from '../../../common/errors.js';
import type { Logger } from '../../../common/logger.js';
import { BUCKET_HOUR_MS, BUCKET_MINUTE_MS, type DriftRollupRepository, type DriftRollupRow } from '../../drift/ports.js';
import type { RecordRoute } from '../../telemetry/ports.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';

const MIGRATIONS = [
  `CREATE TABLE drift_rollups (
     model TEXT NOT NULL,
     version INTEGER NOT NULL,
     device_id TEXT NOT NULL,
     bucket_ms INTEGER NOT NULL,
     bucket_start INTEGER NOT NULL,
     digest TEXT NOT NULL,
     rows INTEGER NOT NULL,
     sketch BLOB NOT NULL,
     PRIMARY KEY (model, version, bucket_ms, bucket_start, device_id, digest)
   ) WITHOUT ROWID;`,
];

/**
 * Drift sketches rolled up per model version, device and time bucket (1 min and 1 h), by
 * merging (adding) each new sketch into its buckets inside the telemetry commit, so a
 * resent record, which the commit skips, is never added twice. The drift status queries
 * (control-plane/drift/status.ts) merge buckets across devices and test them.
 */
export class SqliteDriftRepository implements DriftRollupRepository {
  private readonly select: Statement;
  private readonly upsert: Statement;
  private readonly deleteOlder: Statement;
  private readonly connection: SqliteConnection;
  rejectedSketches = 0;

  constructor(
    db: Database,
    private readonly logger: Logger,
  ) {
    applyMigrations(db, 'drift', MIGRATIONS);
    this.connection = connectionOf(db);
    this.select = db.prepare(
      'SELECT sketch FROM drift_rollups WHERE model = ? AND version = ? AND bucket_ms = ? AND bucket_start = ? AND device_id = ? AND digest = ?',
    );
    this.upsert = db.prepare(
      `INSERT INTO drift_rollups (model, version, device_id, bucket_ms, bucket_start, digest, rows, sketch) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (model, version, bucket_ms, bucket_start, device_id, digest) DO UPDATE SET rows = excluded.rows, sketch = excluded.sketch`,
    );
    this.deleteOlder = db.prepare('DELETE FROM drift_rollups WHERE bucket_ms = ? AND bucket_start < ?');
  }

  /** Adds a sketch to its buckets; runs inside the caller's transaction. `atMs` is already corrected for device clock skew. */
  add(deviceId: string, sketch: DriftSketch, atMs: number): void {
    for (const bucketMs of [BUCKET_MINUTE_MS, BUCKET_HOUR_MS]) {
      const start = Math.floor(atMs / bucketMs) * bucketMs;
      const key = [sketch.model, sketch.version, bucketMs, start, deviceId, sketch.referenceDigest] as const;
      const existing = this.select.get(...key) as { sketch: Buffer } | undefined;
      let merged = sketch;
      if (existing) {
        try {
          merged = mergeSketches(DriftSketch.decode(existing.sketch), sketch);
        } catch (err) {
          if (!(err instanceof DriftlineError)) throw err;
          // Stored, but not rolled up: a malformed sketch must not block the device's batch.
          this.rejectedSketches++;
          this.logger.warn({ deviceId, code: err.code }, 'drift sketch does not merge with its bucket; left out of the rollup');
          return;
        }
      }
      this.upsert.run(sketch.model, sketch.version, deviceId, bucketMs, start, sketch.referenceDigest, merged.rows, DriftSketch.encode(merged).finish());
    }
  }

  /** The telemetry commit's route for drift records: their sketches go into the drift rollups in the same transaction. */
  recordRoute(): RecordRoute {
    return {
      kind: 'drift',
      accept: (deviceId, record, atMs) => {
        if (record.body?.$case === 'drift') this.add(deviceId, record.body.value, atMs);
      },
    };
  }

  /** Drops buckets older than their retention. */
  pruneOlderThan(bucketMs: number, beforeMs: number): number {
    return this.deleteOlder.run(bucketMs, beforeMs).changes;
  }

  /** Retention: minute and hour buckets as long as the telemetry rollups of their size. Resolves to the rows deleted. */
  prune(nowMs: number, retention: { minuteMs: number; hourMs: number }): Promise<number> {
    return this.connection.run(
      () => this.pruneOlderThan(BUCKET_MINUTE_MS, nowMs - retention.minuteMs) + this.pruneOlderThan(BUCKET_HOUR_MS, nowMs - retention.hourMs),
    );
  }

  /** Model versions with sketches in an hour bucket that reaches `sinceMs` or later (a superset of the versions with data since then). */
  versionsSince(sinceMs: number): Promise<Array<{ model: string; version: number }>> {
    return this.connection.run(
      (db) =>
        db
          .prepare('SELECT DISTINCT model, version FROM drift_rollups WHERE bucket_ms = ? AND bucket_start >= ? ORDER BY model, version')
          .all(BUCKET_HOUR_MS, Math.floor(sinceMs / BUCKET_HOUR_MS) * BUCKET_HOUR_MS) as Array<{ model: string; version: number }>,
    );
  }

  rowsSince(model: string, version: number, bucketMs: number, sinceMs: number): Promise<DriftRollupRow[]> {
    return this.connection
      .run(
        (db) =>
          db
            .prepare(
              `SELECT version, device_id, digest, sketch FROM drift_rollups
         WHERE model = ? AND (? = 0 OR version = ?) AND bucket_ms = ? AND bucket_start >= ?
         ORDER BY version, device_id, bucket_start`,
            )
            .all(model, version, version, bucketMs, Math.floor(sinceMs / bucketMs) * bucketMs) as Array<{
            version: number;
            device_id: string;
            digest: string;
            sketch: Buffer;
          }>,
      )
      .then((rows) => rows.map((r) => ({ version: r.version, deviceId: r.device_id, digest: r.digest, sketch: r.sketch })));
  }
}
