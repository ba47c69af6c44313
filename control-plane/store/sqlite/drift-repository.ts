import type { Database, Statement } from 'better-sqlite3';
import { DriftSketch, type DriftStatus } from '../../../common/proto/driftline/v1/drift.js';
import { mergeSketches } from '../../../common/drift/sketch.js';
import { parseReference, referenceDigest, type DriftReference } from '../../../common/drift/reference.js';
import { DriftlineError } from '../../../common/errors.js';
import type { Logger } from '../../../common/logger.js';
import { applyMigrations, connectionOf } from './database.js';
import type { RecordRoute } from '../../telemetry/ports.js';
import { DEFAULT_DRIFT_THRESHOLDS, evaluateDrift, type DriftThresholds } from '../../drift/evaluate.js';

export const BUCKET_MINUTE_MS = 60_000;
export const BUCKET_HOUR_MS = 3_600_000;

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

/** What the drift queries need from elsewhere: the model's reference and a device's cohort label. */
export interface DriftLookups {
  /** The reference JSON of a model version, or undefined when it has none. */
  reference(model: string, version: number): string | undefined;
  /** The device's cohort label ("" when it has none). */
  cohort(deviceId: string): string;
}

export interface DriftQueryOptions {
  thresholds: DriftThresholds;
  /** Window used when a request gives no since_ms. */
  defaultWindowMs: number;
  /** Windows up to this long are answered from 1-minute buckets, longer ones from 1-hour buckets. */
  minuteBucketsUpToMs: number;
  /** The windowed test's long window (hour buckets); 0 or absent: off. */
  longWindowMs?: number;
}

/**
 * Drift sketches rolled up per model version, device and time bucket (1 min and 1 h), by
 * merging (adding) each new sketch into its buckets inside the telemetry commit, so a
 * resent record, which the commit skips, is never added twice. Queries merge buckets
 * across devices (and per cohort) and test the sum against the model's reference.
 */
export class SqliteDriftRepository {
  private readonly select: Statement;
  private readonly upsert: Statement;
  private readonly deleteOlder: Statement;
  private readonly references = new Map<string, DriftReference | null>();
  rejectedSketches = 0;

  constructor(
    private readonly db: Database,
    private readonly logger: Logger,
  ) {
    applyMigrations(db, 'drift', MIGRATIONS);
    this.select = db.prepare('SELECT sketch FROM drift_rollups WHERE model = ? AND version = ? AND bucket_ms = ? AND bucket_start = ? AND device_id = ? AND digest = ?');
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
    return connectionOf(this.db).run(() => this.pruneOlderThan(BUCKET_MINUTE_MS, nowMs - retention.minuteMs) + this.pruneOlderThan(BUCKET_HOUR_MS, nowMs - retention.hourMs));
  }

  /** Model versions with sketches in an hour bucket that reaches `sinceMs` or later (a superset of the versions with data since then). */
  versionsSince(sinceMs: number): Array<{ model: string; version: number }> {
    return this.db
      .prepare('SELECT DISTINCT model, version FROM drift_rollups WHERE bucket_ms = ? AND bucket_start >= ? ORDER BY model, version')
      .all(BUCKET_HOUR_MS, Math.floor(sinceMs / BUCKET_HOUR_MS) * BUCKET_HOUR_MS) as Array<{ model: string; version: number }>;
  }

  private referenceOf(lookups: DriftLookups, model: string, version: number): DriftReference | undefined {
    const key = `${model}\u0000${version}`;
    if (!this.references.has(key)) {
      const json = lookups.reference(model, version);
      let parsed: DriftReference | null = null;
      if (json) {
        try {
          parsed = parseReference(json);
        } catch (err) {
          this.logger.warn({ model, version, err }, 'model has an invalid drift reference');
        }
      }
      this.references.set(key, parsed);
    }
    return this.references.get(key) ?? undefined;
  }

  private rowsSince(model: string, version: number, bucketMs: number, sinceMs: number): Array<{ version: number; device_id: string; digest: string; sketch: Buffer }> {
    return this.db
      .prepare(
        `SELECT version, device_id, digest, sketch FROM drift_rollups
         WHERE model = ? AND (? = 0 OR version = ?) AND bucket_ms = ? AND bucket_start >= ?
         ORDER BY version, device_id, bucket_start`,
      )
      .all(model, version, version, bucketMs, Math.floor(sinceMs / bucketMs) * bucketMs) as Array<{ version: number; device_id: string; digest: string; sketch: Buffer }>;
  }

  /** The merged sketch of the fleet ("") and of each cohort, for one version and reference digest. */
  private groups(rows: ReadonlyArray<{ version: number; device_id: string; digest: string; sketch: Buffer }>, version: number, digest: string, lookups: DriftLookups): Map<string, { sketch: DriftSketch; devices: Set<string> }> {
    const groups = new Map<string, { sketch: DriftSketch; devices: Set<string> }>();
    for (const row of rows) {
      if (row.version !== version || row.digest !== digest) continue;
      const sketch = DriftSketch.decode(row.sketch);
      const cohort = lookups.cohort(row.device_id);
      for (const group of cohort ? ['', cohort] : ['']) {
        const g = groups.get(group);
        if (!g) groups.set(group, { sketch, devices: new Set([row.device_id]) });
        else {
          g.sketch = mergeSketches(g.sketch, sketch);
          g.devices.add(row.device_id);
        }
      }
    }
    return groups;
  }

  /**
   * Drift per version of `model` (or one version), for the fleet (cohort "") and per cohort label.
   * For the default window (no since_ms) the same cohort over `longWindowMs` (hour buckets) is
   * tested alongside it: the windowed test that names a small shift the short window cannot.
   */
  status(request: { model: string; version: number; sinceMs: number }, lookups: DriftLookups, options: DriftQueryOptions, nowMs: number): DriftStatus[] {
    const sinceMs = request.sinceMs > 0 ? request.sinceMs : nowMs - options.defaultWindowMs;
    const bucketMs = nowMs - sinceMs <= options.minuteBucketsUpToMs ? BUCKET_MINUTE_MS : BUCKET_HOUR_MS;
    const rows = this.rowsSince(request.model, request.version, bucketMs, sinceMs);
    const longMs = options.longWindowMs ?? 0;
    const longRows = request.sinceMs === 0 && longMs > nowMs - sinceMs ? this.rowsSince(request.model, request.version, BUCKET_HOUR_MS, nowMs - longMs) : undefined;
    const versions = [...new Set(rows.map((r) => r.version))];
    if (request.version > 0 && !versions.includes(request.version)) versions.push(request.version);
    const statuses: DriftStatus[] = [];
    for (const version of versions) {
      const reference = this.referenceOf(lookups, request.model, version);
      const empty = (cohort: string, status: string, reason: string): DriftStatus => ({
        model: request.model, version, cohort, status, devices: 0, rows: 0, driftedShare: 0, features: [], predictions: undefined, confidence: undefined,
        latencyP50Ms: 0, latencyP95Ms: 0, errorRate: 0, windowStartMs: sinceMs, windowEndMs: nowMs, reason, minRows: 0,
      });
      if (!reference) {
        statuses.push(empty('', 'no_reference', 'the model version has no drift reference'));
        continue;
      }
      const digest = referenceDigest(reference);
      const groups = this.groups(rows, version, digest, lookups);
      const long = longRows ? this.groups(longRows, version, digest, lookups) : undefined;
      if (!groups.has('')) statuses.push(empty('', 'no_data', 'no drift sketches in the window'));
      for (const [cohort, g] of [...groups].sort(([a], [b]) => a.localeCompare(b))) {
        statuses.push({ model: request.model, version, cohort, devices: g.devices.size, ...evaluateDrift(reference, g.sketch, options.thresholds, { long: long?.get(cohort)?.sketch }) });
      }
    }
    return statuses;
  }
}

export { DEFAULT_DRIFT_THRESHOLDS };
