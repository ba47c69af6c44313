import Database, { type Database as Db, type Statement } from 'better-sqlite3';
import { splitOf } from '../../../common/datasets/snapshot-layout.js';
import { DriftlineError } from '../../../common/errors.js';
import { FederatedReport, SampleRecord } from '../../../common/proto/driftline/v1/device_link.js';
import type { EmbeddingCache, LocalSample, ReportMemory, SampleSplit, SampleStore, SampleStoreStats } from '../ports.js';

export interface LearnerStoreOptions {
  file: string;
  /** Samples kept, oldest out first. */
  maxSamples: number;
  /** Bytes of sample inputs kept, oldest out first. */
  maxBytes: number;
  /** A sample whose inputs are larger is not kept. */
  maxSampleBytes: number;
  /** Embeddings kept, oldest out first (0: none cached). */
  embeddingCacheRows: number;
  /** Reports remembered for replays, oldest out first. */
  reportMemory: number;
}

/**
 * Migrations by PRAGMA user_version: each entry takes the file from version i to i + 1, in one
 * transaction with the version bump, so a crash mid-migration leaves the old version whole.
 */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE learner_samples (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     id TEXT NOT NULL UNIQUE,
     model TEXT NOT NULL,
     version INTEGER NOT NULL,
     held_out INTEGER NOT NULL,
     label INTEGER,
     bytes INTEGER NOT NULL,
     inputs BLOB NOT NULL
   );
   CREATE INDEX learner_samples_by_model ON learner_samples (model, held_out, label, seq);
   CREATE TABLE learner_embeddings (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     model_sha256 TEXT NOT NULL,
     sample_id TEXT NOT NULL,
     embedding BLOB NOT NULL,
     UNIQUE (model_sha256, sample_id)
   );
   CREATE INDEX learner_embeddings_by_sample ON learner_embeddings (sample_id);
   CREATE TABLE learner_reports (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, report BLOB NOT NULL);`,
];

/**
 * The learner's own SQLite file (learner.db beside the telemetry buffer): labelled samples,
 * cached embeddings and the reports already sent. Its own file, not the buffer's, so the
 * buffer's disk budget and its upload-and-delete cycle never touch what the learner keeps (a
 * model marked no-raw-capture uploads no sample, and still learns from these), and the
 * learner's budget is its own: maxSamples and maxBytes, oldest out first.
 *
 * Samples arrive on the inference path: they are queued in memory and written in one
 * transaction at the end of the event-loop turn (WAL, synchronous NORMAL: no fsync per
 * request). A label flushes the queue first, so it always finds its sample.
 */
export class SqliteLearnerStore implements SampleStore, EmbeddingCache {
  private readonly db: Db;
  private readonly statements: Record<string, Statement>;
  private pending: Array<Omit<LocalSample, 'label'> & { bytes: Buffer }> = [];
  private flushScheduled = false;
  private rows: number;
  private bytes: number;
  private evicted = 0;
  private embeddings: number;
  private reports: number;

  static open(options: LearnerStoreOptions): SqliteLearnerStore {
    let db: Db;
    try {
      db = new Database(options.file);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
    } catch (err) {
      throw new DriftlineError('CONFIG_INVALID', `cannot open the learner's store ${options.file}`, { cause: err });
    }
    migrate(db);
    return new SqliteLearnerStore(db, options);
  }

  private constructor(
    db: Db,
    private readonly options: LearnerStoreOptions,
  ) {
    this.db = db;
    const p = (sql: string) => db.prepare(sql);
    this.statements = {
      insert: p('INSERT OR IGNORE INTO learner_samples (id, model, version, held_out, label, bytes, inputs) VALUES (?, ?, ?, ?, NULL, ?, ?)'),
      label: p('UPDATE learner_samples SET label = ? WHERE id = ? AND model = ?'),
      oldest: p('SELECT seq, id, bytes FROM learner_samples ORDER BY seq LIMIT 1'),
      deleteSample: p('DELETE FROM learner_samples WHERE seq = ?'),
      deleteEmbeddingsOf: p('DELETE FROM learner_embeddings WHERE sample_id = ?'),
      labelled: p('SELECT id, model, version, label, inputs FROM learner_samples WHERE model = ? AND held_out = ? AND label IS NOT NULL ORDER BY seq LIMIT ?'),
      count: p('SELECT COUNT(*) AS n FROM learner_samples WHERE model = ? AND held_out = ? AND label IS NOT NULL'),
      labelledTotal: p('SELECT COUNT(*) AS n FROM learner_samples WHERE label IS NOT NULL'),
      getEmbedding: p('SELECT embedding FROM learner_embeddings WHERE model_sha256 = ? AND sample_id = ?'),
      putEmbedding: p('INSERT OR REPLACE INTO learner_embeddings (model_sha256, sample_id, embedding) VALUES (?, ?, ?)'),
      oldestEmbedding: p('DELETE FROM learner_embeddings WHERE seq = (SELECT MIN(seq) FROM learner_embeddings)'),
      getReport: p('SELECT report FROM learner_reports WHERE key = ?'),
      putReport: p('INSERT OR REPLACE INTO learner_reports (key, report) VALUES (?, ?)'),
      oldestReport: p('DELETE FROM learner_reports WHERE seq = (SELECT MIN(seq) FROM learner_reports)'),
    };
    const totals = db.prepare('SELECT COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b FROM learner_samples').get() as { n: number; b: number };
    this.rows = totals.n;
    this.bytes = totals.b;
    this.embeddings = (db.prepare('SELECT COUNT(*) AS n FROM learner_embeddings').get() as { n: number }).n;
    this.reports = (db.prepare('SELECT COUNT(*) AS n FROM learner_reports').get() as { n: number }).n;
  }

  add(sample: Omit<LocalSample, 'label'>): boolean {
    if (sample.id.length === 0 || sample.id.length > 256) return false;
    const bytes = Buffer.from(
      SampleRecord.encode({
        model: sample.model,
        version: sample.version,
        reason: 'learner',
        inputs: sample.inputs,
        outputs: [],
        errorCode: '',
        requestId: sample.id,
      }).finish(),
    );
    if (bytes.length > this.options.maxSampleBytes || bytes.length > this.options.maxBytes) return false;
    this.pending.push({ ...sample, bytes });
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
    return true;
  }

  /** Writes the queued samples in one transaction, then evicts the oldest past the budget. */
  flush(): void {
    this.flushScheduled = false;
    if (this.pending.length === 0 || !this.db.open) return;
    const batch = this.pending;
    this.pending = [];
    this.db.transaction(() => {
      for (const s of batch) {
        const heldOut = splitOf(s.id) === 'train' ? 0 : 1;
        const info = this.statements.insert!.run(s.id, s.model, s.version, heldOut, s.bytes.length, s.bytes);
        if (info.changes === 1) {
          this.rows++;
          this.bytes += s.bytes.length;
        }
      }
      while (this.rows > this.options.maxSamples || this.bytes > this.options.maxBytes) {
        const oldest = this.statements.oldest!.get() as { seq: number; id: string; bytes: number } | undefined;
        if (!oldest) break;
        this.statements.deleteSample!.run(oldest.seq);
        this.statements.deleteEmbeddingsOf!.run(oldest.id);
        this.rows--;
        this.bytes -= oldest.bytes;
        this.evicted++;
      }
    })();
  }

  label(id: string, model: string, label: number): boolean {
    this.flush();
    return this.statements.label!.run(label, id, model).changes === 1;
  }

  labelled(model: string, split: SampleSplit, limit: number): LocalSample[] {
    this.flush();
    const rows = this.statements.labelled!.all(model, split === 'train' ? 0 : 1, limit) as Array<{
      id: string;
      model: string;
      version: number;
      label: number;
      inputs: Buffer;
    }>;
    return rows.map((r) => ({ id: r.id, model: r.model, version: r.version, label: r.label, inputs: SampleRecord.decode(r.inputs).inputs }));
  }

  count(model: string, split: SampleSplit): number {
    this.flush();
    return (this.statements.count!.get(model, split === 'train' ? 0 : 1) as { n: number }).n;
  }

  stats(): SampleStoreStats {
    this.flush();
    return { rows: this.rows, labelled: (this.statements.labelledTotal!.get() as { n: number }).n, bytes: this.bytes, evicted: this.evicted };
  }

  get(modelSha256: string, sampleId: string): Float32Array | undefined {
    const row = this.statements.getEmbedding!.get(modelSha256, sampleId) as { embedding: Buffer } | undefined;
    if (!row || row.embedding.length % 4 !== 0) return undefined;
    const out = new Float32Array(row.embedding.length / 4);
    new Uint8Array(out.buffer).set(row.embedding);
    return out;
  }

  put(modelSha256: string, sampleId: string, embedding: Float32Array): void {
    if (this.options.embeddingCacheRows === 0) return;
    this.db.transaction(() => {
      const info = this.statements.putEmbedding!.run(modelSha256, sampleId, Buffer.from(embedding.buffer, embedding.byteOffset, embedding.byteLength));
      // INSERT OR REPLACE counts a replaced row as a delete and an insert.
      if (info.changes === 1) this.embeddings++;
      while (this.embeddings > this.options.embeddingCacheRows) {
        this.statements.oldestEmbedding!.run();
        this.embeddings--;
      }
    })();
  }

  private report(key: string): FederatedReport | undefined {
    const row = this.statements.getReport!.get(key) as { report: Buffer } | undefined;
    return row ? FederatedReport.decode(row.report) : undefined;
  }

  private putReport(key: string, report: FederatedReport): void {
    this.db.transaction(() => {
      const info = this.statements.putReport!.run(key, Buffer.from(FederatedReport.encode(report).finish()));
      if (info.changes === 1) this.reports++;
      while (this.reports > this.options.reportMemory) {
        this.statements.oldestReport!.run();
        this.reports--;
      }
    })();
  }

  /** The ReportMemory port over this store. */
  reportMemory(): ReportMemory {
    return { get: (key) => this.report(key), put: (key, report) => this.putReport(key, report) };
  }

  close(): void {
    if (!this.db.open) return;
    this.flush();
    this.db.close();
  }
}

function migrate(db: Db): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > MIGRATIONS.length) {
    throw new DriftlineError('CONFIG_INVALID', `the learner's store is at schema version ${version}, newer than this agent (${MIGRATIONS.length})`);
  }
  for (let v = version; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}
