import type { Database } from 'better-sqlite3';
import type { Clock } from '../../../common/clock.js';
import { DriftlineError } from '../../../common/errors.js';
import {
  RollupBucket,
  RollupGroupBy,
  type TelemetryRollup,
  type TelemetryRollups,
  type TelemetryRollupsRequest,
} from '../../../common/proto/driftline/v1/telemetry.js';
import { cohortOf } from '../../fleet/labels.js';
import { connectionOf, type SqliteConnection } from './database.js';
import { ROLLUP_BUCKETS_MS, rollupRetentionMs, type RollupRetention } from './telemetry-repository.js';

/** Rows a rollup query returns when the request names no limit, and the most it may ask for. */
export const DEFAULT_ROLLUP_ROWS = 1000;
export const MAX_ROLLUP_ROWS = 10_000;

/** What rollup queries need of the fleet: devices and their labels (the fleet store). */
type DeviceLabels = { id: string; labels: Record<string, string> };

export interface RollupDevices {
  list(selector: string, options: { includeDecommissioned: boolean }): Promise<DeviceLabels[]> | DeviceLabels[];
}

const [MINUTE_MS, HOUR_MS] = ROLLUP_BUCKETS_MS;

/** How each grouping names its rows and orders them within a bucket. */
const GROUPINGS: Record<'device' | 'modelVersion' | 'cohort' | 'fleet', { key: string; groupBy: string; orderBy: string }> = {
  device: { key: 'r.device_id', groupBy: 'key', orderBy: 'key' },
  modelVersion: {
    key: `CASE WHEN r.model = '' THEN '' ELSE r.model || ' v' || r.model_version END`,
    groupBy: 'r.model, r.model_version',
    orderBy: 'r.model, r.model_version',
  },
  cohort: { key: `coalesce(c.cohort, '')`, groupBy: 'key', orderBy: 'key' },
  fleet: { key: `'fleet'`, groupBy: 'key', orderBy: 'key' },
};

function grouping(groupBy: RollupGroupBy): keyof typeof GROUPINGS {
  switch (groupBy) {
    case RollupGroupBy.ROLLUP_GROUP_BY_DEVICE:
      return 'device';
    case RollupGroupBy.ROLLUP_GROUP_BY_MODEL_VERSION:
      return 'modelVersion';
    case RollupGroupBy.ROLLUP_GROUP_BY_COHORT:
      return 'cohort';
    case RollupGroupBy.ROLLUP_GROUP_BY_UNSPECIFIED:
    case RollupGroupBy.ROLLUP_GROUP_BY_FLEET:
      return 'fleet';
    default:
      throw new DriftlineError('REQUEST_INVALID', `group_by ${String(groupBy)} is not one of DEVICE, MODEL_VERSION, COHORT, FLEET`);
  }
}

function bucketSize(bucket: RollupBucket): (typeof ROLLUP_BUCKETS_MS)[number] {
  switch (bucket) {
    case RollupBucket.ROLLUP_BUCKET_UNSPECIFIED:
    case RollupBucket.ROLLUP_BUCKET_ONE_MINUTE:
      return MINUTE_MS;
    case RollupBucket.ROLLUP_BUCKET_ONE_HOUR:
      return HOUR_MS;
    default:
      throw new DriftlineError('REQUEST_INVALID', `bucket ${String(bucket)} is not one of ONE_MINUTE, ONE_HOUR`);
  }
}

interface Row {
  bucket_start: number;
  key: string;
  model: string;
  version: number;
  records: number;
  inferences: number;
  errors: number;
  latency_sum: number;
  latency_max: number;
  events: number;
}

/**
 * Read side of the telemetry rollups (table telemetry_rollups, written by
 * SqliteTelemetryRepository in the commit's transaction): sums per bucket, grouped by
 * device, model version, cohort (the device label drift status uses) or the whole fleet.
 * Device labels come from the fleet store and travel into SQL as JSON, so the grouping
 * and the limit are done by SQLite. Rows older than their bucket size's retention are never
 * returned, whether or not the retention pass has deleted them yet.
 */
export class SqliteRollupQueries {
  private readonly connection: SqliteConnection;

  constructor(private readonly deps: { db: Database; devices: RollupDevices; retention: RollupRetention; clock: Clock }) {
    this.connection = connectionOf(deps.db);
  }

  async rollups(request: TelemetryRollupsRequest): Promise<TelemetryRollups> {
    const by = grouping(request.groupBy);
    const bucketMs = bucketSize(request.bucket);
    // The limit's range and a version without a model are refused by TelemetryService's request schema.
    const limit = request.limit || DEFAULT_ROLLUP_ROWS;
    const fromMs = Math.max(Math.floor(request.sinceMs / bucketMs) * bucketMs, this.deps.clock.now() - rollupRetentionMs(bucketMs, this.deps.retention));

    // Decommissioned devices keep their telemetry, so they keep their labels here too.
    const selected = request.selector.trim() ? (await this.deps.devices.list(request.selector, { includeDecommissioned: true })).map((d) => d.id) : null;
    const cohorts =
      by === 'cohort' ? Object.fromEntries((await this.deps.devices.list('', { includeDecommissioned: true })).map((d) => [d.id, cohortOf(d.labels)])) : {};
    const { key, groupBy, orderBy } = GROUPINGS[by];

    const rows = await this.connection.run(
      (db) =>
        db
          .prepare(
            `SELECT r.bucket_start AS bucket_start, ${key} AS key, r.model AS model, r.model_version AS version,
                sum(r.records) AS records, sum(r.inferences) AS inferences, sum(r.inference_errors) AS errors,
                sum(r.latency_sum) AS latency_sum, max(r.latency_max) AS latency_max, sum(r.events) AS events
         FROM telemetry_rollups r
         ${by === 'cohort' ? 'LEFT JOIN (SELECT key AS device_id, value AS cohort FROM json_each(@cohorts)) c ON c.device_id = r.device_id' : ''}
         WHERE r.bucket_ms = @bucketMs AND r.bucket_start >= @fromMs
           AND (@model = '' OR r.model = @model) AND (@version = 0 OR r.model_version = @version)
           AND (@deviceId = '' OR r.device_id = @deviceId)
           AND (@selected IS NULL OR r.device_id IN (SELECT value FROM json_each(@selected)))
         GROUP BY r.bucket_start, ${groupBy}
         ORDER BY r.bucket_start DESC, ${orderBy}
         LIMIT @limit`,
          )
          .all({
            bucketMs,
            fromMs,
            model: request.model,
            version: request.version,
            deviceId: request.deviceId,
            selected: selected && JSON.stringify(selected),
            cohorts: JSON.stringify(cohorts),
            limit: limit + 1,
          }) as Row[],
    );

    const truncated = rows.length > limit;
    // The newest rows win the limit; they are returned oldest bucket first (a stable sort keeps the key order).
    const kept = rows.slice(0, limit).sort((a, b) => a.bucket_start - b.bucket_start);
    return {
      truncated,
      rows: kept.map((r): TelemetryRollup => ({
        bucketStartMs: r.bucket_start,
        bucketMs,
        key: r.key,
        model: by === 'modelVersion' ? r.model : request.model,
        version: by === 'modelVersion' ? r.version : request.version,
        records: r.records,
        inferences: r.inferences,
        errors: r.errors,
        errorRate: r.inferences ? r.errors / r.inferences : 0,
        meanLatencyMs: r.inferences ? r.latency_sum / r.inferences : 0,
        maxLatencyMs: r.latency_max,
        events: r.events,
      })),
    };
  }
}
