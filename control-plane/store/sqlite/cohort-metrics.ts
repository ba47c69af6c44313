import type { Database } from 'better-sqlite3';
import type { CohortStats } from '../../rollout/gates.js';
import type { CohortMetrics, CohortQuery } from '../../rollout/ports.js';
import { connectionOf, type SqliteConnection } from './database.js';

/**
 * Per-version cohort metrics read straight from stored telemetry (telemetry_records carries
 * model, model_version, latency_ms and ok for every inference). Windows use the control
 * plane's receive time, so a device with a skewed clock cannot move its records in or out of
 * a wave. Quantiles are exact over the window (nearest rank); rollups can replace this query
 * without the engine noticing. Labels (kind 'label', ok = the answer was correct) count by the
 * version that answered and by when the label arrived, which is often well after the inference.
 */
export class SqliteCohortMetrics implements CohortMetrics {
  private readonly connection: SqliteConnection;

  constructor(private readonly db: Database) {
    this.connection = connectionOf(db);
  }

  cohort(query: CohortQuery): Promise<CohortStats> {
    return this.connection.run(() => this.cohortNow(query));
  }

  private cohortNow(query: CohortQuery): CohortStats {
    if (query.deviceIds.length === 0) return { devices: 0, devicesWithData: 0, inferences: 0, errors: 0, p95LatencyMs: null };
    const rows = this.db
      .prepare(
        `SELECT device_id, kind, latency_ms, ok FROM telemetry_records
         WHERE device_id IN (SELECT value FROM json_each(?)) AND kind IN ('inference', 'label') AND model = ? AND received_ms >= ?
           AND (? IS NULL OR model_version = ?) AND (? IS NULL OR model_version != ?)`,
      )
      .all(
        JSON.stringify(query.deviceIds),
        query.model,
        query.sinceMs,
        query.version ?? null,
        query.version ?? null,
        query.excludeVersion ?? null,
        query.excludeVersion ?? null,
      ) as Array<{ device_id: string; kind: 'inference' | 'label'; latency_ms: number | null; ok: number | null }>;
    const devices = new Set<string>();
    const latencies: number[] = [];
    let inferences = 0;
    let errors = 0;
    const labeled = { total: 0, correct: 0 };
    for (const row of rows) {
      if (row.kind === 'label') {
        labeled.total++;
        if (row.ok === 1) labeled.correct++;
        continue;
      }
      inferences++;
      devices.add(row.device_id);
      if (row.ok === 0) errors++;
      if (row.latency_ms !== null) latencies.push(row.latency_ms);
    }
    const stats: CohortStats = { devices: query.deviceIds.length, devicesWithData: devices.size, inferences, errors, p95LatencyMs: quantile(latencies, 0.95) };
    return labeled.total > 0 ? { ...stats, labeled } : stats;
  }
}

/** Nearest-rank quantile; null for no values. */
export function quantile(values: number[], q: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}
