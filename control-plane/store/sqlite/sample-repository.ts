import type { Database, Statement } from 'better-sqlite3';
import { DriftlineError, type ErrorCode } from '../../../common/errors.js';
import type { LabelRecord, SampleRecord, SampleTensor } from '../../../common/proto/driftline/v1/device_link.js';
import type { ModelSampleStats, SampleStats } from '../../../common/proto/driftline/v1/datasets.js';
import type { RawCapturePolicies, RawCapturePolicy, SampleQuery, SampleRow, SampleSource } from '../../datasets/ports.js';
import type { RecordRoute } from '../../telemetry/ports.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';

const MIGRATIONS = [
  // AUTOINCREMENT: ids only grow, so "oldest first" is id order even after the newest rows were dropped.
  `CREATE TABLE samples (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     device_id TEXT NOT NULL,
     boot INTEGER NOT NULL,
     seq INTEGER NOT NULL,
     model TEXT NOT NULL,
     version INTEGER NOT NULL,
     request_id TEXT NOT NULL,
     reason TEXT NOT NULL,
     time_ms INTEGER NOT NULL,
     input_name TEXT NOT NULL,
     input_shape TEXT NOT NULL,
     input BLOB NOT NULL,
     classes INTEGER NOT NULL,
     top_class INTEGER,
     label INTEGER,
     bytes INTEGER NOT NULL,
     UNIQUE (device_id, boot, seq)
   );
   CREATE INDEX samples_model ON samples (model, id);
   CREATE INDEX samples_request ON samples (device_id, request_id) WHERE request_id <> '';
   CREATE INDEX samples_time ON samples (time_ms);
   CREATE TABLE sample_pending_labels (
     device_id TEXT NOT NULL,
     request_id TEXT NOT NULL,
     model TEXT NOT NULL,
     label INTEGER NOT NULL,
     time_ms INTEGER NOT NULL,
     PRIMARY KEY (device_id, request_id)
   ) WITHOUT ROWID;
   CREATE INDEX sample_pending_labels_time ON sample_pending_labels (time_ms);
   CREATE TABLE sample_totals (id INTEGER PRIMARY KEY CHECK (id = 1), rows INTEGER NOT NULL, bytes INTEGER NOT NULL);
   INSERT INTO sample_totals (id, rows, bytes) VALUES (1, 0, 0);
   CREATE TABLE sample_counters (model TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (model, name)) WITHOUT ROWID;
   CREATE TABLE sample_capture_policies (model TEXT PRIMARY KEY, raw_capture INTEGER NOT NULL, updated_ms INTEGER NOT NULL);`,
];

/** The `samples` configuration, in bytes and milliseconds. */
export interface SampleLimits {
  maxAgeMs: number;
  maxBytes: number;
  maxTensorBytes: number;
}

/** What a stored row costs besides its input bytes (keys, strings, index entries): so many tiny samples still count. */
const ROW_OVERHEAD_BYTES = 128;
/** Dimensions a captured input may have. */
const MAX_DIMS = 8;
const MAX_NAME_CHARS = 256;
/** Rows per page of a scan: large enough to be fast, small enough not to hold the connection long. */
const SCAN_PAGE_ROWS = 4096;
/** Oldest rows looked at per step when the budget is exceeded. */
const EVICT_STEP_ROWS = 256;

const REFUSED_PREFIX = 'refused:';

/**
 * Captured samples in SQLite, fed by the telemetry commit (RecordRoutes for `sample` and
 * `label`, inside its transaction, so a resent record reaches them exactly once like the record
 * itself). A label joins its sample by (device, request id) whichever arrives first: one that
 * comes before its sample waits in sample_pending_labels. Bad samples never fail the batch: they
 * are refused and counted per model and code, and the batch is acknowledged. Samples have their
 * own retention (maxAge) and disk budget (maxBytes): over it, the oldest are dropped, counted.
 */
export class SqliteSampleRepository implements SampleSource, RawCapturePolicies {
  private readonly connection: SqliteConnection;
  private readonly insert: Statement;
  private readonly policyOf: Statement;
  private readonly takePending: Statement;
  private readonly dropPending: Statement;
  private readonly labelSample: Statement;
  private readonly putPending: Statement;
  private readonly bump: Statement;
  private readonly totals: Statement;
  private readonly addTotals: Statement;
  private readonly oldest: Statement;
  private readonly deleteUpTo: Statement;
  private readonly shapes = new Map<string, number[]>();

  constructor(
    private readonly db: Database,
    private readonly limits: Readonly<SampleLimits>,
  ) {
    if (limits.maxTensorBytes > limits.maxBytes) throw new DriftlineError('CONFIG_INVALID', 'samples.maxTensorBytes must not exceed samples.maxBytes');
    applyMigrations(db, 'samples', MIGRATIONS);
    this.connection = connectionOf(db);
    this.insert = db.prepare(
      `INSERT OR IGNORE INTO samples (device_id, boot, seq, model, version, request_id, reason, time_ms, input_name, input_shape, input, classes, top_class, label, bytes)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.policyOf = db.prepare('SELECT raw_capture, updated_ms FROM sample_capture_policies WHERE model = ?');
    this.takePending = db.prepare('SELECT label FROM sample_pending_labels WHERE device_id = ? AND request_id = ? AND model = ?');
    this.dropPending = db.prepare('DELETE FROM sample_pending_labels WHERE device_id = ? AND request_id = ?');
    this.labelSample = db.prepare(`UPDATE samples SET label = ? WHERE device_id = ? AND request_id = ? AND request_id <> '' AND model = ?`);
    this.putPending = db.prepare(
      `INSERT INTO sample_pending_labels (device_id, request_id, model, label, time_ms) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (device_id, request_id) DO UPDATE SET model = excluded.model, label = excluded.label, time_ms = excluded.time_ms`,
    );
    this.bump = db.prepare(
      `INSERT INTO sample_counters (model, name, value) VALUES (?, ?, ?) ON CONFLICT (model, name) DO UPDATE SET value = value + excluded.value`,
    );
    this.totals = db.prepare('SELECT rows, bytes FROM sample_totals WHERE id = 1');
    this.addTotals = db.prepare('UPDATE sample_totals SET rows = rows + ?, bytes = bytes + ? WHERE id = 1');
    this.oldest = db.prepare('SELECT id, bytes FROM samples ORDER BY id LIMIT ?');
    this.deleteUpTo = db.prepare('DELETE FROM samples WHERE id <= ? RETURNING model, bytes');
  }

  /** The telemetry commit's routes: samples into the sample table, labels joined to them. */
  recordRoutes(): RecordRoute[] {
    return [
      {
        kind: 'sample',
        accept: (deviceId, record, atMs) => {
          if (record.body?.$case === 'sample') this.acceptSample(deviceId, record.boot, record.seq, record.body.value, atMs);
        },
      },
      {
        kind: 'label',
        accept: (deviceId, record, atMs) => {
          if (record.body?.$case === 'label') this.acceptLabel(deviceId, record.body.value, atMs);
        },
      },
    ];
  }

  /** Runs inside the telemetry commit; never throws for what the device sent (that would refuse its whole batch). */
  private acceptSample(deviceId: string, boot: number, seq: number, sample: SampleRecord, atMs: number): void {
    const model = sample.model.slice(0, MAX_NAME_CHARS);
    const refusal = this.refusalOf(sample);
    if (refusal) {
      this.bump.run(model, REFUSED_PREFIX + refusal, 1);
      return;
    }
    const input = sample.inputs[0]!;
    const output = sample.outputs[0];
    const answer = output ? classesOf(output) : { classes: 0, topClass: null };
    const bytes = input.data.length + ROW_OVERHEAD_BYTES + sample.requestId.length + input.name.length;
    let label: number | null = null;
    if (sample.requestId !== '') {
      const pending = this.takePending.get(deviceId, sample.requestId, model) as { label: number } | undefined;
      if (pending) label = pending.label;
    }
    const inserted = this.insert.run(
      deviceId,
      boot,
      seq,
      model,
      sample.version,
      sample.requestId,
      sample.reason.slice(0, MAX_NAME_CHARS),
      atMs,
      input.name,
      JSON.stringify(input.shape),
      input.data,
      answer.classes,
      answer.topClass,
      label,
      bytes,
    ).changes;
    if (inserted === 0) return;
    if (label !== null) this.dropPending.run(deviceId, sample.requestId);
    this.addTotals.run(1, bytes);
    this.bump.run(model, 'stored', 1);
    this.evictOverBudget();
  }

  private refusalOf(sample: SampleRecord): ErrorCode | undefined {
    const { maxTensorBytes } = this.limits;
    if ([...sample.inputs, ...sample.outputs].some((t) => t.data.length > maxTensorBytes)) return 'SAMPLE_TOO_LARGE';
    const policy = this.policyOf.get(sample.model) as { raw_capture: number } | undefined;
    if (policy?.raw_capture === 0) return 'SAMPLE_RAW_CAPTURE_OFF';
    const input = sample.inputs[0];
    if (
      sample.model === '' ||
      sample.model.length > MAX_NAME_CHARS ||
      sample.requestId.length > MAX_NAME_CHARS ||
      !input ||
      input.name.length > MAX_NAME_CHARS ||
      input.datatype !== 'FP32' ||
      !validShape(input.shape) ||
      input.shape.reduce((n, d) => n * d, 4) !== input.data.length ||
      !Number.isSafeInteger(sample.version) ||
      sample.version < 1
    )
      return 'SAMPLE_INVALID';
    return undefined;
  }

  /** Drops the oldest samples until the kept ones fit samples.maxBytes, counted per model. */
  private evictOverBudget(): void {
    let { bytes } = this.totals.get() as { rows: number; bytes: number };
    while (bytes > this.limits.maxBytes) {
      let cutoff: number | undefined;
      for (const row of this.oldest.all(EVICT_STEP_ROWS) as Array<{ id: number; bytes: number }>) {
        cutoff = row.id;
        bytes -= row.bytes;
        if (bytes <= this.limits.maxBytes) break;
      }
      if (cutoff === undefined) break;
      this.dropRows(this.deleteUpTo.all(cutoff) as Array<{ model: string; bytes: number }>, 'dropped_budget');
      bytes = (this.totals.get() as { bytes: number }).bytes;
    }
  }

  private dropRows(rows: ReadonlyArray<{ model: string; bytes: number }>, counter: string): void {
    const byModel = new Map<string, number>();
    let bytes = 0;
    for (const row of rows) {
      byModel.set(row.model, (byModel.get(row.model) ?? 0) + 1);
      bytes += row.bytes;
    }
    for (const [model, n] of byModel) this.bump.run(model, counter, n);
    if (rows.length > 0) this.addTotals.run(-rows.length, -bytes);
  }

  private acceptLabel(deviceId: string, label: LabelRecord, atMs: number): void {
    // Old agents' samples carry no request id; a label without one can never find its sample.
    if (label.requestId === '' || label.requestId.length > MAX_NAME_CHARS || label.model.length > MAX_NAME_CHARS) return;
    if (this.labelSample.run(label.label, deviceId, label.requestId, label.model).changes > 0) return;
    // Samples travel on the lowest-priority stream, so their label often comes first.
    this.putPending.run(deviceId, label.requestId, label.model, label.label, atMs);
  }

  /** Retention: samples and waiting labels older than samples.maxAge go, counted per model. Resolves to the rows deleted. */
  prune(nowMs: number): Promise<number> {
    return this.connection.run((db) =>
      db.transaction(() => {
        const before = nowMs - this.limits.maxAgeMs;
        const rows = db.prepare('DELETE FROM samples WHERE time_ms < ? RETURNING model, bytes').all(before) as Array<{ model: string; bytes: number }>;
        this.dropRows(rows, 'dropped_retention');
        return rows.length + db.prepare('DELETE FROM sample_pending_labels WHERE time_ms < ?').run(before).changes;
      })(),
    );
  }

  async *scan(query: SampleQuery): AsyncIterable<SampleRow[]> {
    // Raw rows (arrays, not objects) of the columns a sample row needs; the input's bytes are handed on as SQLite gave them.
    // A row's input name and shape come back NULL when they are the previous page's last (nearly always): no string is
    // made for them, and the shape's array is the one already parsed.
    const page = this.db
      .prepare(
        `SELECT id, device_id, boot, seq, version,
                CASE WHEN input_name = ? THEN NULL ELSE input_name END,
                CASE WHEN input_shape = ? THEN NULL ELSE input_shape END,
                input, classes, label FROM samples
         WHERE model = ? AND id > ? AND (? = 0 OR version = ?) AND time_ms >= ? AND (? = 0 OR label IS NOT NULL)
         ORDER BY model, id LIMIT ?`,
      )
      .raw();
    type Raw = [number, string, number, number, number, string | null, string | null, Buffer, number, number | null];
    let after = 0;
    // input_name and input_shape are NOT NULL: a NULL is only ever "the same as these".
    let lastName = '';
    let lastShapeText = '';
    let lastShape: number[] = [];
    for (;;) {
      const rows = await this.connection.run(
        () =>
          page.all(
            lastName,
            lastShapeText,
            query.model,
            after,
            query.version,
            query.version,
            query.sinceMs,
            query.labelledOnly ? 1 : 0,
            SCAN_PAGE_ROWS,
          ) as Raw[],
      );
      if (rows.length === 0) return;
      after = rows[rows.length - 1]![0];
      const sameName = lastName;
      const sameShape = lastShape;
      const out = new Array<SampleRow>(rows.length);
      for (let i = 0; i < rows.length; i++) {
        const r = rows[i]!;
        const shapeText = r[6];
        const name = r[5] ?? sameName;
        const shape = shapeText === null ? sameShape : this.shapeOf(shapeText);
        out[i] = {
          id: `${r[1]}/${r[2]}/${r[3]}`,
          deviceId: r[1],
          version: r[4],
          inputName: name,
          shape,
          input: r[7],
          classes: r[8],
          label: r[9] ?? undefined,
        };
        if (i === rows.length - 1) {
          lastName = name;
          if (shapeText !== null) lastShapeText = shapeText;
          lastShape = shape;
        }
      }
      yield out;
      if (rows.length < SCAN_PAGE_ROWS) return;
    }
  }

  private shapeOf(text: string): number[] {
    let shape = this.shapes.get(text);
    if (!shape) {
      shape = JSON.parse(text) as number[];
      if (this.shapes.size < 1024) this.shapes.set(text, shape);
    }
    return shape;
  }

  /**
   * Labelled samples of a model captured at or after sinceMs, of the given devices when a set
   * is given: what a retraining policy's "new labelled samples" trigger and its minimum dataset
   * count. Counted per device in SQL, so the work is bounded by the fleet's size, not the rows'.
   */
  countLabelled(model: string, sinceMs: number, deviceIds?: ReadonlySet<string>): Promise<number> {
    return this.connection.run(() => {
      const perDevice = this.db
        .prepare('SELECT device_id, count(*) AS n FROM samples WHERE model = ? AND time_ms >= ? AND label IS NOT NULL GROUP BY device_id')
        .all(model, sinceMs) as Array<{ device_id: string; n: number }>;
      return perDevice.reduce((total, row) => (deviceIds === undefined || deviceIds.has(row.device_id) ? total + row.n : total), 0);
    });
  }

  rawCaptureOf(model: string): Promise<RawCapturePolicy> {
    return this.connection.run(() => {
      const row = this.policyOf.get(model) as { raw_capture: number; updated_ms: number } | undefined;
      return { model, rawCapture: row ? row.raw_capture === 1 : true, updatedAtMs: row?.updated_ms ?? 0 };
    });
  }

  setRawCapture(model: string, rawCapture: boolean, atMs: number): Promise<RawCapturePolicy> {
    return this.connection.run((db) => {
      db.prepare(
        `INSERT INTO sample_capture_policies (model, raw_capture, updated_ms) VALUES (?, ?, ?)
         ON CONFLICT (model) DO UPDATE SET raw_capture = excluded.raw_capture, updated_ms = excluded.updated_ms`,
      ).run(model, rawCapture ? 1 : 0, atMs);
      return { model, rawCapture, updatedAtMs: atMs };
    });
  }

  /** Kept, labelled, bytes, dropped and refused, per model and in total. */
  stats(model = ''): Promise<SampleStats> {
    return this.connection.run((db) => {
      const byModel = new Map<string, ModelSampleStats>();
      const entry = (name: string): ModelSampleStats => {
        let s = byModel.get(name);
        if (!s) {
          s = { model: name, rows: 0, labelled: 0, bytes: 0, droppedRetention: 0, droppedBudget: 0, refused: {}, rawCapture: true };
          byModel.set(name, s);
        }
        return s;
      };
      const kept = db
        .prepare(`SELECT model, count(*) AS rows, count(label) AS labelled, sum(bytes) AS bytes FROM samples WHERE (? = '' OR model = ?) GROUP BY model`)
        .all(model, model) as Array<{ model: string; rows: number; labelled: number; bytes: number }>;
      for (const k of kept) Object.assign(entry(k.model), { rows: k.rows, labelled: k.labelled, bytes: k.bytes });
      const counters = db.prepare(`SELECT model, name, value FROM sample_counters WHERE (? = '' OR model = ?)`).all(model, model) as Array<{
        model: string;
        name: string;
        value: number;
      }>;
      for (const c of counters) {
        const s = entry(c.model);
        if (c.name === 'dropped_retention') s.droppedRetention = c.value;
        else if (c.name === 'dropped_budget') s.droppedBudget = c.value;
        else if (c.name.startsWith(REFUSED_PREFIX)) s.refused[c.name.slice(REFUSED_PREFIX.length)] = c.value;
      }
      const policies = db.prepare(`SELECT model, raw_capture FROM sample_capture_policies WHERE (? = '' OR model = ?)`).all(model, model) as Array<{
        model: string;
        raw_capture: number;
      }>;
      for (const p of policies) entry(p.model).rawCapture = p.raw_capture === 1;
      const models = [...byModel.values()].sort((a, b) => (a.model < b.model ? -1 : a.model > b.model ? 1 : 0));
      const sum = (f: (s: ModelSampleStats) => number): number => models.reduce((n, s) => n + f(s), 0);
      const pending = db.prepare(`SELECT count(*) AS n FROM sample_pending_labels WHERE (? = '' OR model = ?)`).get(model, model) as { n: number };
      return {
        models,
        rows: sum((s) => s.rows),
        labelled: sum((s) => s.labelled),
        bytes: sum((s) => s.bytes),
        droppedRetention: sum((s) => s.droppedRetention),
        droppedBudget: sum((s) => s.droppedBudget),
        refused: sum((s) => Object.values(s.refused).reduce((a, b) => a + b, 0)),
        pendingLabels: pending.n,
        budgetBytes: this.limits.maxBytes,
      };
    });
  }
}

function validShape(shape: readonly number[]): boolean {
  return shape.length >= 1 && shape.length <= MAX_DIMS && shape.every((d) => Number.isSafeInteger(d) && d >= 1);
}

/** The class count and top class of an FP32 output (its first row); none for other outputs. */
function classesOf(output: SampleTensor): { classes: number; topClass: number | null } {
  const classes = output.shape.at(-1) ?? 0;
  if (output.datatype !== 'FP32' || !validShape(output.shape) || classes < 1 || output.data.length < classes * 4) return { classes: 0, topClass: null };
  const view = new DataView(output.data.buffer, output.data.byteOffset, classes * 4);
  let top = 0;
  for (let i = 1; i < classes; i++) if (view.getFloat32(i * 4, true) > view.getFloat32(top * 4, true)) top = i;
  return { classes: Number.isSafeInteger(classes) ? classes : 0, topClass: top };
}
