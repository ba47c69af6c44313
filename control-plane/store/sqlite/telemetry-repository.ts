import type { Database, Statement } from 'better-sqlite3';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';
import { Outcome, TelemetryRecord, type ReportedState, type SampleTensor } from '../../../common/proto/driftline/v1/device_link.js';
import type { DeviceTelemetry, TelemetrySummary, TelemetrySummaryRequest } from '../../../common/proto/driftline/v1/telemetry.js';
import type { RecordRoute, RefusalCount, TelemetryRepository } from '../../telemetry/ports.js';

const MIGRATIONS = [
  `CREATE TABLE telemetry_records (
     device_id TEXT NOT NULL,
     boot INTEGER NOT NULL,
     seq INTEGER NOT NULL,
     time_ms INTEGER NOT NULL,
     received_ms INTEGER NOT NULL,
     stream INTEGER NOT NULL,
     kind TEXT NOT NULL,
     model TEXT,
     model_version INTEGER,
     latency_ms REAL,
     ok INTEGER,
     record BLOB NOT NULL,
     PRIMARY KEY (device_id, boot, seq)
   ) WITHOUT ROWID;
   CREATE INDEX telemetry_records_device_time ON telemetry_records (device_id, time_ms);
   CREATE TABLE telemetry_device_totals (
     device_id TEXT PRIMARY KEY,
     records INTEGER NOT NULL DEFAULT 0,
     inferences INTEGER NOT NULL DEFAULT 0,
     inference_errors INTEGER NOT NULL DEFAULT 0,
     latency_sum REAL NOT NULL DEFAULT 0,
     latency_max REAL NOT NULL DEFAULT 0,
     events INTEGER NOT NULL DEFAULT 0,
     last_record_ms INTEGER NOT NULL DEFAULT 0,
     buffer_depth INTEGER NOT NULL DEFAULT 0,
     dropped_records INTEGER NOT NULL DEFAULT 0
   );
   CREATE TABLE telemetry_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);`,
  `CREATE TABLE telemetry_rollups (
     bucket_ms INTEGER NOT NULL,
     bucket_start INTEGER NOT NULL,
     device_id TEXT NOT NULL,
     model TEXT NOT NULL,
     model_version INTEGER NOT NULL,
     records INTEGER NOT NULL,
     inferences INTEGER NOT NULL,
     inference_errors INTEGER NOT NULL,
     latency_sum REAL NOT NULL,
     latency_max REAL NOT NULL,
     events INTEGER NOT NULL,
     PRIMARY KEY (bucket_ms, bucket_start, device_id, model, model_version)
   ) WITHOUT ROWID;
   CREATE INDEX telemetry_records_received ON telemetry_records (received_ms);`,
  // Refused device messages per device and error code (ingest limits, rate limit).
  `CREATE TABLE telemetry_device_refusals (
     device_id TEXT NOT NULL,
     code TEXT NOT NULL,
     count INTEGER NOT NULL,
     last_ms INTEGER NOT NULL,
     PRIMARY KEY (device_id, code)
   ) WITHOUT ROWID;`,
];

/** Rows per multi-row INSERT (12 parameters each). */
const INSERT_ROWS = 64;

/**
 * Columns queried without decoding: model and model_version for inference and label records;
 * ok is 1/0 for an inference's outcome and, on a label record, for whether the model's answer
 * was correct (so accuracy is sum(ok) / count(*) over kind = 'label').
 */
function rowParams(deviceId: string, record: TelemetryRecord, receivedAtMs: number): unknown[] {
  const inference = record.body?.$case === 'inference' ? record.body.value : undefined;
  const label = record.body?.$case === 'label' ? record.body.value : undefined;
  return [
    deviceId,
    record.boot,
    record.seq,
    record.timeMs,
    receivedAtMs,
    record.stream,
    record.body?.$case ?? 'empty',
    inference?.model ?? label?.model ?? null,
    inference?.version ?? label?.version ?? null,
    inference?.latencyMs ?? null,
    inference ? (inference.outcome === Outcome.OUTCOME_ERROR ? 0 : 1) : label ? (label.correct ? 1 : 0) : null,
    TelemetryRecord.encode(withoutTensorBytes(record)).finish(),
  ];
}

/**
 * A sample's tensors live in the sample store (its own retention and disk budget); the raw
 * telemetry row keeps the rest of the record, so a sample's bytes are not kept twice, and not
 * outside that budget.
 */
function withoutTensorBytes(record: TelemetryRecord): TelemetryRecord {
  if (record.body?.$case !== 'sample') return record;
  const strip = (t: SampleTensor): SampleTensor => ({ ...t, data: EMPTY });
  const sample = record.body.value;
  return { ...record, body: { $case: 'sample', value: { ...sample, inputs: sample.inputs.map(strip), outputs: sample.outputs.map(strip) } } };
}
const EMPTY = Buffer.alloc(0);

/** Rollup bucket sizes: 1 minute and 1 hour. */
export const ROLLUP_BUCKETS_MS = [60_000, 3_600_000] as const;

/** How long each rollup bucket size is kept (the telemetry retention configuration). */
export interface RollupRetention {
  minuteMs: number;
  hourMs: number;
}

/** How long rollups of one bucket size are kept: what prune() deletes past and rollup queries never read past. */
export const rollupRetentionMs = (bucketMs: (typeof ROLLUP_BUCKETS_MS)[number], retention: RollupRetention): number =>
  bucketMs === ROLLUP_BUCKETS_MS[0] ? retention.minuteMs : retention.hourMs;

interface TotalsDelta {
  records: number;
  inferences: number;
  errors: number;
  latencySum: number;
  latencyMax: number;
  events: number;
  lastRecordMs: number;
}

/**
 * Telemetry in SQLite: raw records keyed by (device, boot, seq), so a resent record is
 * ignored by the primary key, plus running per-device totals updated in the same
 * transaction from the records that were actually new.
 */
export class SqliteTelemetryRepository implements TelemetryRepository {
  private readonly bumpTotals: Statement;
  private readonly bumpCounter: Statement;
  private readonly setDeviceState: Statement;
  private readonly bumpRefusal: Statement;
  private readonly noteRefusalsTx: (deviceId: string, refusals: readonly RefusalCount[], rejectedBatches: number) => void;
  private readonly bumpRollup: Statement;
  private readonly insertRecords: Statement;
  private readonly selectStored: Statement;
  private readonly commitTx: (
    deviceId: string,
    records: readonly TelemetryRecord[],
    receivedAtMs: number,
    offsetMs: number,
  ) => { stored: number; duplicates: number };
  private readonly connection: SqliteConnection;
  private readonly routes: ReadonlyMap<string, ReadonlyArray<RecordRoute['accept']>>;

  /** @param routes where new records of a kind also go, inside the commit (they must write to this same database) */
  constructor(
    private readonly db: Database,
    routes: readonly RecordRoute[] = [],
  ) {
    applyMigrations(db, 'telemetry', MIGRATIONS);
    this.connection = connectionOf(db);
    const byKind = new Map<string, Array<RecordRoute['accept']>>();
    for (const route of routes) byKind.set(route.kind, [...(byKind.get(route.kind) ?? []), route.accept]);
    this.routes = byKind;
    this.insertRecords = this.insertRows(INSERT_ROWS);
    this.selectStored = db.prepare('SELECT seq FROM telemetry_records WHERE device_id = ? AND boot = ? AND seq BETWEEN ? AND ?');
    this.bumpRollup = db.prepare(
      `INSERT INTO telemetry_rollups (bucket_ms, bucket_start, device_id, model, model_version, records, inferences, inference_errors, latency_sum, latency_max, events)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (bucket_ms, bucket_start, device_id, model, model_version) DO UPDATE SET
         records = records + excluded.records,
         inferences = inferences + excluded.inferences,
         inference_errors = inference_errors + excluded.inference_errors,
         latency_sum = latency_sum + excluded.latency_sum,
         latency_max = max(latency_max, excluded.latency_max),
         events = events + excluded.events`,
    );
    this.bumpTotals = db.prepare(
      `INSERT INTO telemetry_device_totals (device_id, records, inferences, inference_errors, latency_sum, latency_max, events, last_record_ms)
       VALUES (@deviceId, @records, @inferences, @errors, @latencySum, @latencyMax, @events, @lastRecordMs)
       ON CONFLICT (device_id) DO UPDATE SET
         records = records + excluded.records,
         inferences = inferences + excluded.inferences,
         inference_errors = inference_errors + excluded.inference_errors,
         latency_sum = latency_sum + excluded.latency_sum,
         latency_max = max(latency_max, excluded.latency_max),
         events = events + excluded.events,
         last_record_ms = max(last_record_ms, excluded.last_record_ms)`,
    );
    this.bumpCounter = db.prepare(`INSERT INTO telemetry_counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value`);
    this.bumpRefusal = db.prepare(
      `INSERT INTO telemetry_device_refusals (device_id, code, count, last_ms) VALUES (?, ?, ?, ?)
       ON CONFLICT (device_id, code) DO UPDATE SET count = count + excluded.count, last_ms = max(last_ms, excluded.last_ms)`,
    );
    this.noteRefusalsTx = db.transaction((deviceId: string, refusals: readonly RefusalCount[], rejectedBatches: number) => {
      for (const r of refusals) this.bumpRefusal.run(deviceId, r.code, r.count, r.lastMs);
      if (rejectedBatches > 0) this.bumpCounter.run('rejected_batches', rejectedBatches);
    });
    this.setDeviceState = db.prepare(
      `INSERT INTO telemetry_device_totals (device_id, buffer_depth, dropped_records) VALUES (?, ?, ?)
       ON CONFLICT (device_id) DO UPDATE SET buffer_depth = excluded.buffer_depth, dropped_records = excluded.dropped_records`,
    );
    this.commitTx = db.transaction((deviceId: string, records: readonly TelemetryRecord[], receivedAtMs: number, offsetMs: number) => {
      const delta: TotalsDelta = { records: 0, inferences: 0, errors: 0, latencySum: 0, latencyMax: 0, events: 0, lastRecordMs: 0 };
      // Rollup deltas are summed per bucket first, so a batch costs one upsert per bucket, not per record.
      const rollups = new Map<
        string,
        {
          bucketMs: number;
          start: number;
          model: string;
          version: number;
          records: number;
          inferences: number;
          errors: number;
          latencySum: number;
          latencyMax: number;
          events: number;
        }
      >();
      // Records already stored (a resend) are found by key range first, so the new ones go in with multi-row INSERTs.
      const fresh = this.freshRecords(deviceId, records);
      for (let i = 0; i < fresh.length; i += INSERT_ROWS) {
        const chunk = fresh.slice(i, i + INSERT_ROWS);
        const params = chunk.flatMap((record) => rowParams(deviceId, record, receivedAtMs));
        (chunk.length === INSERT_ROWS ? this.insertRecords : this.insertRows(chunk.length)).run(params);
      }
      for (const record of fresh) {
        const inference = record.body?.$case === 'inference' ? record.body.value : undefined;
        // Buckets use the device's time corrected by its clock offset, never a time in the future.
        const corrected = Math.min(receivedAtMs, record.timeMs + offsetMs);
        for (const bucketMs of ROLLUP_BUCKETS_MS) {
          const start = Math.floor(corrected / bucketMs) * bucketMs;
          const key = `${bucketMs}\u0000${start}\u0000${inference?.model ?? ''}\u0000${inference?.version ?? 0}`;
          let r = rollups.get(key);
          if (!r)
            rollups.set(
              key,
              (r = {
                bucketMs,
                start,
                model: inference?.model ?? '',
                version: inference?.version ?? 0,
                records: 0,
                inferences: 0,
                errors: 0,
                latencySum: 0,
                latencyMax: 0,
                events: 0,
              }),
            );
          r.records++;
          if (inference) {
            r.inferences++;
            if (inference.outcome === Outcome.OUTCOME_ERROR) r.errors++;
            r.latencySum += inference.latencyMs;
            r.latencyMax = Math.max(r.latencyMax, inference.latencyMs);
          } else if (record.body?.$case === 'event') r.events++;
        }
        const kind = record.body?.$case;
        if (kind) for (const accept of this.routes.get(kind) ?? []) accept(deviceId, record, corrected);
        delta.records++;
        delta.lastRecordMs = Math.max(delta.lastRecordMs, record.timeMs);
        if (inference) {
          delta.inferences++;
          if (inference.outcome === Outcome.OUTCOME_ERROR) delta.errors++;
          delta.latencySum += inference.latencyMs;
          delta.latencyMax = Math.max(delta.latencyMax, inference.latencyMs);
        } else if (record.body?.$case === 'event') {
          delta.events++;
        }
      }
      for (const r of rollups.values()) {
        this.bumpRollup.run(r.bucketMs, r.start, deviceId, r.model, r.version, r.records, r.inferences, r.errors, r.latencySum, r.latencyMax, r.events);
      }
      const duplicates = records.length - delta.records;
      if (delta.records > 0) this.bumpTotals.run({ deviceId, ...delta });
      this.bumpCounter.run('records_stored', delta.records);
      if (duplicates > 0) this.bumpCounter.run('duplicates_dropped', duplicates);
      return { stored: delta.records, duplicates };
    });
  }

  private readonly insertStatements = new Map<number, Statement>();

  private insertRows(n: number): Statement {
    let statement = this.insertStatements.get(n);
    if (!statement) {
      statement = this.db.prepare(
        `INSERT OR IGNORE INTO telemetry_records (device_id, boot, seq, time_ms, received_ms, stream, kind, model, model_version, latency_ms, ok, record)
         VALUES ${Array.from({ length: n }, () => '(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').join(', ')}`,
      );
      this.insertStatements.set(n, statement);
    }
    return statement;
  }

  /** The records of a batch not stored yet, each once. */
  private freshRecords(deviceId: string, records: readonly TelemetryRecord[]): TelemetryRecord[] {
    const spans = new Map<number, { first: number; last: number }>();
    for (const r of records) {
      const span = spans.get(r.boot);
      if (!span) spans.set(r.boot, { first: r.seq, last: r.seq });
      else {
        span.first = Math.min(span.first, r.seq);
        span.last = Math.max(span.last, r.seq);
      }
    }
    const seen = new Set<string>();
    for (const [boot, { first, last }] of spans) {
      for (const { seq } of this.selectStored.all(deviceId, boot, first, last) as Array<{ seq: number }>) seen.add(`${boot}:${seq}`);
    }
    const fresh: TelemetryRecord[] = [];
    for (const r of records) {
      const key = `${r.boot}:${r.seq}`;
      if (seen.has(key)) continue;
      seen.add(key);
      fresh.push(r);
    }
    return fresh;
  }

  commit(
    deviceId: string,
    records: readonly TelemetryRecord[],
    receivedAtMs: number,
    deviceClockOffsetMs = 0,
  ): Promise<{ stored: number; duplicates: number }> {
    return this.connection.run(() => this.commitTx(deviceId, records, receivedAtMs, deviceClockOffsetMs));
  }

  /** Retention: raw records by arrival time, rollups by bucket start. Resolves to the rows deleted. */
  prune(nowMs: number, retention: RollupRetention & { rawMs: number }): Promise<number> {
    return this.connection.run(() => this.pruneNow(nowMs, retention));
  }

  private pruneNow(nowMs: number, retention: RollupRetention & { rawMs: number }): number {
    let n = this.db.prepare('DELETE FROM telemetry_records WHERE received_ms < ?').run(nowMs - retention.rawMs).changes;
    const del = this.db.prepare('DELETE FROM telemetry_rollups WHERE bucket_ms = ? AND bucket_start < ?');
    for (const bucketMs of ROLLUP_BUCKETS_MS) n += del.run(bucketMs, nowMs - rollupRetentionMs(bucketMs, retention)).changes;
    return n;
  }

  /** Rollup rows (per device, model version, bucket) from sinceMs on. */
  rollups(
    bucketMs: number,
    sinceMs: number,
    deviceId = '',
  ): Array<{
    bucketStart: number;
    deviceId: string;
    model: string;
    version: number;
    records: number;
    inferences: number;
    errors: number;
    latencyMeanMs: number;
    latencyMaxMs: number;
    events: number;
  }> {
    const rows = this.db
      .prepare(
        `SELECT bucket_start, device_id, model, model_version, records, inferences, inference_errors, latency_sum, latency_max, events FROM telemetry_rollups
         WHERE bucket_ms = ? AND bucket_start >= ? AND (? = '' OR device_id = ?) ORDER BY bucket_start, device_id, model, model_version`,
      )
      .all(bucketMs, Math.floor(sinceMs / bucketMs) * bucketMs, deviceId, deviceId) as Array<Record<string, number> & { device_id: string; model: string }>;
    return rows.map((r) => ({
      bucketStart: r.bucket_start!,
      deviceId: r.device_id,
      model: r.model,
      version: r.model_version!,
      records: r.records!,
      inferences: r.inferences!,
      errors: r.inference_errors!,
      latencyMeanMs: r.inferences ? r.latency_sum! / r.inferences : 0,
      latencyMaxMs: r.latency_max!,
      events: r.events!,
    }));
  }

  counter(name: string): number {
    return (this.db.prepare('SELECT value FROM telemetry_counters WHERE name = ?').get(name) as { value: number } | undefined)?.value ?? 0;
  }

  noteRefusals(deviceId: string, refusals: readonly RefusalCount[], rejectedBatches: number): Promise<void> {
    return this.connection.run(() => this.noteRefusalsTx(deviceId, refusals, rejectedBatches));
  }

  /** Refusal counts per device, attached to the summary's rows; a device with refusals but no records gets a row of its own. */
  private withRefusals(rows: DeviceTelemetry[], deviceId: string, addMissing: boolean): DeviceTelemetry[] {
    const refusals = this.db
      .prepare(`SELECT device_id, code, count, last_ms FROM telemetry_device_refusals WHERE (? = '' OR device_id = ?) ORDER BY device_id, code`)
      .all(deviceId, deviceId) as Array<{ device_id: string; code: string; count: number; last_ms: number }>;
    if (refusals.length === 0) return rows;
    const byDevice = new Map(rows.map((row) => [row.deviceId, row]));
    for (const r of refusals) {
      let row = byDevice.get(r.device_id);
      if (!row) {
        if (!addMissing) continue;
        row = {
          deviceId: r.device_id,
          records: 0,
          inferences: 0,
          inferenceErrors: 0,
          latencyMeanMs: 0,
          latencyMaxMs: 0,
          events: 0,
          lastRecordMs: 0,
          bufferDepth: 0,
          droppedRecords: 0,
          refusals: [],
        };
        byDevice.set(r.device_id, row);
      }
      row.refusals.push({ code: r.code, count: r.count, lastMs: r.last_ms });
    }
    return [...byDevice.values()].sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));
  }

  noteDeviceState(deviceId: string, state: ReportedState): Promise<void> {
    return this.connection.run(() => {
      this.setDeviceState.run(deviceId, state.bufferDepth, state.droppedRecords);
    });
  }

  summary(request: TelemetrySummaryRequest): Promise<TelemetrySummary> {
    return this.connection.run(() => this.summaryNow(request));
  }

  private summaryNow(request: TelemetrySummaryRequest): TelemetrySummary {
    const windowed = request.sinceMs > 0;
    const devices = this.withRefusals(windowed ? this.windowedTotals(request) : this.runningTotals(request.deviceId), request.deviceId, !windowed);
    const counter = (name: string): number =>
      (this.db.prepare('SELECT value FROM telemetry_counters WHERE name = ?').get(name) as { value: number } | undefined)?.value ?? 0;
    return {
      devices,
      recordsStored: counter('records_stored'),
      duplicatesDropped: counter('duplicates_dropped'),
      rejectedBatches: counter('rejected_batches'),
    };
  }

  private runningTotals(deviceId: string): DeviceTelemetry[] {
    const rows = this.db
      .prepare(
        `SELECT device_id, records, inferences, inference_errors, latency_sum, latency_max, events, last_record_ms, buffer_depth, dropped_records
         FROM telemetry_device_totals WHERE (? = '' OR device_id = ?) ORDER BY device_id`,
      )
      .all(deviceId, deviceId) as Array<Record<string, number> & { device_id: string }>;
    return rows.map((r) => ({
      deviceId: r.device_id,
      records: r.records!,
      inferences: r.inferences!,
      inferenceErrors: r.inference_errors!,
      latencyMeanMs: r.inferences ? r.latency_sum! / r.inferences : 0,
      latencyMaxMs: r.latency_max!,
      events: r.events!,
      lastRecordMs: r.last_record_ms!,
      bufferDepth: r.buffer_depth!,
      droppedRecords: r.dropped_records!,
      refusals: [],
    }));
  }

  /**
   * Totals over records received since sinceMs: the window is on the control plane's clock
   * (like rollups and cohort metrics), so a device whose clock is hours off is neither left
   * out of nor pulled into it. time_ms keeps the device's own time.
   */
  private windowedTotals({ deviceId, sinceMs }: TelemetrySummaryRequest): DeviceTelemetry[] {
    const rows = this.db
      .prepare(
        `SELECT r.device_id AS device_id, count(*) AS records,
                sum(r.kind = 'inference') AS inferences, sum(r.ok = 0) AS errors,
                avg(r.latency_ms) AS latency_mean, coalesce(max(r.latency_ms), 0) AS latency_max,
                sum(r.kind = 'event') AS events, max(r.time_ms) AS last_record_ms,
                coalesce(t.buffer_depth, 0) AS buffer_depth, coalesce(t.dropped_records, 0) AS dropped_records
         FROM telemetry_records r LEFT JOIN telemetry_device_totals t ON t.device_id = r.device_id
         WHERE r.received_ms >= ? AND (? = '' OR r.device_id = ?)
         GROUP BY r.device_id ORDER BY r.device_id`,
      )
      .all(sinceMs, deviceId, deviceId) as Array<Record<string, number | null> & { device_id: string }>;
    return rows.map((r) => ({
      deviceId: r.device_id,
      records: r.records ?? 0,
      inferences: r.inferences ?? 0,
      inferenceErrors: r.errors ?? 0,
      latencyMeanMs: r.latency_mean ?? 0,
      latencyMaxMs: r.latency_max ?? 0,
      events: r.events ?? 0,
      lastRecordMs: r.last_record_ms ?? 0,
      bufferDepth: r.buffer_depth ?? 0,
      droppedRecords: r.dropped_records ?? 0,
      refusals: [],
    }));
  }
}
