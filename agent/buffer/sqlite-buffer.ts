import Database from 'better-sqlite3';
import type { Database as Db, Statement } from 'better-sqlite3';
import type { Clock } from '../../common/clock.js';
import { systemClock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { tightenDatabaseFiles } from '../../common/private-files.js';
import type { SeqRange } from '../../common/proto/driftline/v1/device_link.js';
import { enforceLimits, expiryCutoff, makeRoom, runPlan, type Freed, type OwnerUsage, type RetentionLimits } from './retention.js';
import { encodedRecordModel } from './record-owner.js';
import { SqliteAgentState } from './sqlite-agent-state.js';
import {
  STREAM_PRIORITY,
  type AgentStateStore,
  type BufferedRecord,
  type DropCounts,
  type DropReason,
  type ModelDropCounts,
  type NewRecord,
  type TelemetryBuffer,
} from './ports.js';

/** The retention policy's limits: the budget counts body bytes plus ROW_OVERHEAD_BYTES per record; the TTL goes by the device clock, in maintain(). */
export type BufferLimits = RetentionLimits;

export interface SqliteBufferOptions {
  file: string;
  /** FULL survives power loss; NORMAL (WAL) may lose the last commits on power loss, never on a process crash. */
  synchronous: 'FULL' | 'NORMAL';
  limits?: Partial<BufferLimits>;
  clock?: Clock;
  /**
   * A hard ceiling for the database file (PRAGMA max_page_count); 0 or absent: the disk's
   * size. SQLite refuses to grow the file past it with SQLITE_FULL, exactly as on a full
   * disk, and the buffer handles both the same way (see flush()).
   */
  maxFileBytes?: number;
  /**
   * How long an enqueued record may wait for company before its group commit (0: the end of
   * the current event-loop turn), and so the least time between two commits. No caller waits
   * on the commit to answer anyone (inference telemetry is acknowledged to nobody), so a few
   * milliseconds turn one fsync per request into one per window. A window that opens this
   * long or longer after the last commit closes at the end of the turn instead: under light
   * load the commit (and its fsync, which blocks the event loop) happens right after the
   * answer that made the record, in the idle time before the next request, not in the middle
   * of it; under load the windows follow each other and group as before, at the same most
   * commits per second. The uplink only ever reads committed rows, so what it sends is
   * durable whatever the delay; close() commits what is still waiting.
   */
  commitDelayMs?: number;
  /** Schedules the delayed commit; tests swap it to decide when the window closes. */
  scheduleCommit?: CommitScheduler;
}

/** Runs `commit` after `delayMs`; the returned function cancels it. */
export type CommitScheduler = (commit: () => void, delayMs: number) => () => void;

const realCommitScheduler: CommitScheduler = (commit, delayMs) => {
  if (delayMs <= 0) {
    const immediate = setImmediate(commit);
    return () => clearImmediate(immediate);
  }
  const timer = setTimeout(commit, delayMs);
  return () => clearTimeout(timer);
};

/** Group commits so far: how many write transactions the buffer made, and the records they held. */
export interface BufferCommitStats {
  /** Every write transaction (each one fsync'd at synchronous=FULL): inserts, sent marks and ack deletes share them. */
  commits: number;
  recordsCommitted: number;
  /** Records enqueued and not committed yet (waiting for their window to close). */
  waiting: number;
}

/** What a row costs besides its body (key, columns, b-tree slack): an estimate for the budget. */
export const ROW_OVERHEAD_BYTES = 40;

/** Pages a full disk's eviction frees at least (see makeRoom). */
const ROOM_PAGES = 8;

/** Rows per multi-row INSERT (5 parameters each, well under SQLite's limit of 32766). */
const MULTI_ROW = 64;

interface Pending {
  record: NewRecord;
  resolve(): void;
  reject(err: unknown): void;
}

const REASONS: readonly DropReason[] = ['quota', 'budget', 'ttl', 'disk_full'];
const emptyDrops = (): DropCounts => Object.fromEntries(STREAM_PRIORITY.map((s) => [s, { quota: 0, budget: 0, ttl: 0 }]));

/** Records and bytes of one stream, and of each model in it ("" for records of no model), kept in step with the table. */
interface StreamCounts extends OwnerUsage {
  models: Map<string, OwnerUsage>;
}

/** Streams whose records carry a model (inference, labels and drift sketches; captured samples): the ones a migration reads it from. */
const MODEL_STREAMS = [2, 4];

/**
 * The outbox in SQLite (WAL). Sequence numbers are the table's AUTOINCREMENT rowid, so
 * they never repeat, even after records are deleted or the agent restarts; the boot
 * counter is persisted and bumped on every open. Enqueues in the same event-loop turn
 * share one transaction (group commit), which keeps fsyncs off the per-record path.
 *
 * Bounded: after each commit, a stream over its quota loses records, and while the whole
 * buffer is over its byte budget the lowest-priority stream that has any loses records;
 * within a stream, the oldest records of the model that holds the most go first, so one busy
 * model cannot starve another's records (column `model`, "" for records of no model; see
 * retention.ts). Drops are counted per stream, model and reason in the same
 * transaction as the deletes, so the counts survive kill -9 exactly. A disk that fills up
 * before the budget does (SQLITE_FULL) gets the same policy; see flush(). The policy itself
 * (which stream, how many, why) is pure, in retention.ts; this class runs its steps as deletes.
 *
 * Records handed to the uplink and not acknowledged yet (markSent) are never dropped by
 * policy: the control plane may have stored them already, and a record must be either
 * stored or counted as dropped, never both. The mark is persisted (column `sent`) before
 * the batch is published (markSent resolves then), so it holds across kill -9 until the ack
 * deletes the record.
 *
 * Marks and ack deletes ride in a group commit instead of paying a transaction, and an fsync,
 * each: ack deletes wait in the current window; a mark closes it at the end of the turn (the
 * next batch waits on it), taking the records and deletes waiting there. Under inference load
 * one commit holds the new records, the marks of the batch about to go and the deletes of
 * the batches acknowledged. An acknowledged record leaves the counts, the peeks and the policy at once;
 * its row goes with that commit. A kill -9 before it leaves the row behind, marked sent: it is
 * sent again after the restart and the control plane, which de-duplicates, acknowledges it again.
 */
export class SqliteBuffer implements TelemetryBuffer {
  readonly boot: number;
  /** The agent's key-value state, in this database (see SqliteAgentState). */
  readonly state: AgentStateStore;
  private readonly db: Db;
  private readonly limits: BufferLimits;
  private readonly clock: Clock;
  private readonly insert: Statement;
  private readonly insertMany: Statement;
  private readonly selectAfter: Statement;
  private readonly selectStream: Statement;
  private readonly selectNewest: Statement;
  private readonly evictOldest: Statement;
  private readonly expire: Statement;
  private readonly saveDropsStatement: Statement;
  private readonly saveSent: Statement;
  private readonly deleteSeqs: Statement;
  private readonly selectRange: Statement;
  private readonly pageSize: number;
  /** Records and bytes per stream and model, kept in step with the table. */
  private readonly counts = new Map<number, StreamCounts>();
  private drops: DropCounts = emptyDrops();
  private modelDrops: ModelDropCounts = {};
  /** Seqs handed to the uplink and not acknowledged yet: policy drops skip them. */
  private readonly sent = new Set<number>();
  /** Sent marks not committed yet, and the markSent callers waiting for that commit. */
  private readonly unsavedMarks = new Set<number>();
  private markWaiters: Array<{ resolve(): void; reject(err: unknown): void }> = [];
  /** Acknowledged seqs whose rows the next commit deletes: already out of the counts and the peeks. */
  private readonly acked = new Set<number>();
  /** Drop counts changed by a commit that failed: saved with the next one that succeeds. */
  private dropsUnsaved = false;
  private pending: Pending[] = [];
  private cancelFlush: (() => void) | undefined;
  /** Whether the open window closes at the end of the turn (a sent mark waits on it). */
  private windowImmediate = false;
  private closed = false;
  private readonly commitDelayMs: number;
  private readonly scheduleCommit: CommitScheduler;
  private readonly commitCounts = { commits: 0, recordsCommitted: 0 };
  /** When the last window closed (the clock's time), for the spacing of the next one. */
  private lastCommitAt = -Infinity;

  static open(options: SqliteBufferOptions): SqliteBuffer {
    let db: Db;
    try {
      // Telemetry and captured samples are the owner's only (0600), also when an older install left them readable.
      if (options.file !== ':memory:') tightenDatabaseFiles(options.file);
      db = new Database(options.file);
      // Only takes effect on a new file; lets maintain() hand freed pages back to the disk.
      db.pragma('auto_vacuum = INCREMENTAL');
      db.pragma('journal_mode = WAL');
      if (options.file !== ':memory:') tightenDatabaseFiles(options.file);
      db.pragma(`synchronous = ${options.synchronous}`);
      if (options.maxFileBytes)
        db.pragma(`max_page_count = ${Math.max(1, Math.floor(options.maxFileBytes / (db.pragma('page_size', { simple: true }) as number)))}`);
    } catch (err) {
      throw new DriftlineError('STORE_FAILED', `cannot open the agent buffer at ${options.file}`, { cause: err });
    }
    return new SqliteBuffer(db, { maxBytes: 0, maxRecords: {}, ttlMs: 0, ...options.limits }, options);
  }

  private constructor(db: Db, limits: BufferLimits, options: SqliteBufferOptions) {
    this.db = db;
    this.limits = limits;
    this.clock = options.clock ?? systemClock;
    this.commitDelayMs = Math.max(0, options.commitDelayMs ?? 0);
    this.scheduleCommit = options.scheduleCommit ?? realCommitScheduler;
    db.exec(`
      CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        boot INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        body BLOB NOT NULL,
        sent INTEGER NOT NULL DEFAULT 0,
        model TEXT NOT NULL DEFAULT ''
      );
      CREATE INDEX IF NOT EXISTS outbox_stream ON outbox (stream);
    `);
    this.state = new SqliteAgentState(db);
    migrateOutbox(db);
    for (const { seq } of db.prepare('SELECT seq FROM outbox WHERE sent = 1').all() as Array<{ seq: number }>) this.sent.add(seq);
    this.boot = db.transaction(() => {
      const saved = this.state.getState('boot');
      const next = (saved ? Number(saved) : 0) + 1;
      this.state.setState('boot', String(next));
      return next;
    })();
    for (const s of STREAM_PRIORITY) this.counts.set(s, { records: 0, bytes: 0, models: new Map() });
    const rows = db.prepare('SELECT stream, model, count(*) AS n, coalesce(sum(length(body)), 0) AS b FROM outbox GROUP BY stream, model').all() as Array<{
      stream: number;
      model: string;
      n: number;
      b: number;
    }>;
    for (const r of rows) this.count(r.stream, r.model, r.n, r.b + r.n * ROW_OVERHEAD_BYTES);
    const saved = this.state.getState('buffer.drops');
    if (saved) this.drops = { ...emptyDrops(), ...(JSON.parse(saved) as DropCounts) };
    const savedByModel = this.state.getState('buffer.drops.models');
    if (savedByModel) this.modelDrops = JSON.parse(savedByModel) as ModelDropCounts;
    this.insert = db.prepare('INSERT INTO outbox (boot, stream, time_ms, body, model) VALUES (?, ?, ?, ?, ?)');
    this.insertMany = db.prepare(
      `INSERT INTO outbox (boot, stream, time_ms, body, model) VALUES ${Array.from({ length: MULTI_ROW }, () => '(?, ?, ?, ?, ?)').join(', ')}`,
    );
    this.selectAfter = db.prepare('SELECT seq, boot, stream, time_ms AS timeMs, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?');
    this.selectStream = db.prepare('SELECT seq, boot, stream, time_ms AS timeMs, body FROM outbox WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?');
    this.selectNewest = db.prepare('SELECT seq, boot, stream, time_ms AS timeMs, body FROM outbox WHERE seq > ? ORDER BY seq DESC LIMIT ?');
    this.evictOldest = db.prepare(
      'DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE stream = ? AND model = ? AND seq NOT IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT ?) RETURNING length(body) AS bytes',
    );
    this.expire = db.prepare(
      'DELETE FROM outbox WHERE time_ms < ? AND seq NOT IN (SELECT value FROM json_each(?)) RETURNING stream, model, length(body) AS bytes',
    );
    this.pageSize = db.pragma('page_size', { simple: true }) as number;
    this.saveSent = db.prepare('UPDATE outbox SET sent = 1 WHERE seq IN (SELECT value FROM json_each(?)) AND sent = 0');
    this.deleteSeqs = db.prepare('DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))');
    this.selectRange = db.prepare('SELECT seq, stream, model, length(body) AS bytes FROM outbox WHERE boot = ? AND seq BETWEEN ? AND ?');
    this.saveDropsStatement = db.prepare(`INSERT INTO agent_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`);
  }

  enqueue(record: NewRecord): Promise<void> {
    if (this.closed) return Promise.reject(new DriftlineError('SHUTTING_DOWN', 'the buffer is closed'));
    return new Promise((resolve, reject) => {
      this.pending.push({ record, resolve, reject });
      this.openWindow();
    });
  }

  /**
   * The first write of a window opens it; the others (records, marks, deletes) ride along in
   * its commit. `now`: a sent mark, which the uplink's next batch waits on (a backlog drains
   * one round trip per batch in flight), closes the window at the end of the turn, taking
   * whatever records and deletes wait in it.
   */
  private openWindow(now = false): void {
    if (this.cancelFlush && (this.windowImmediate || !now)) return;
    this.cancelFlush?.();
    // A clock stepped either way only shortens or lengthens this window within [0, commitDelayMs].
    const delay = now ? 0 : Math.min(this.commitDelayMs, Math.max(0, this.lastCommitAt + this.commitDelayMs - this.clock.now()));
    this.windowImmediate = delay === 0;
    this.cancelFlush = this.scheduleCommit(() => this.flush(), delay);
  }

  commitStats(): BufferCommitStats {
    return { ...this.commitCounts, waiting: this.pending.length };
  }

  private flush(): void {
    this.cancelFlush?.();
    this.cancelFlush = undefined;
    const batch = this.pending;
    this.pending = [];
    const marks = [...this.unsavedMarks].filter((seq) => !this.acked.has(seq));
    const deletes = [...this.acked];
    const waiters = this.markWaiters;
    this.unsavedMarks.clear();
    this.markWaiters = [];
    if (batch.length === 0 && marks.length === 0 && deletes.length === 0) {
      for (const w of waiters) w.resolve();
      return;
    }
    this.lastCommitAt = this.clock.now();
    this.commitCounts.commits++;
    this.commitCounts.recordsCommitted += batch.length;
    const before = this.snapshot();
    try {
      this.db.transaction(() => {
        // The deletes first: their pages are free for the inserts, and the policy never sees the rows.
        this.saveBookkeeping(marks, deletes);
        if (batch.length > 0) this.insertBatch(batch);
      })();
      this.bookkeepingSaved(deletes, waiters);
      for (const p of batch) p.resolve();
      return;
    } catch (err) {
      this.restore(before);
      if (!isDiskFull(err)) {
        this.bookkeepingFailed(marks, waiters, err);
        return rejectAll(batch, err);
      }
    }
    // A full disk: the marks and deletes alone first (deletes free pages, marks change no
    // row's size). A mark that still does not fit holds in memory for this run, as before.
    if (marks.length > 0 || deletes.length > 0) {
      try {
        this.commitCounts.commits++;
        this.db.transaction(() => this.saveBookkeeping(marks, deletes))();
        this.bookkeepingSaved(deletes, waiters);
      } catch (err) {
        if (isDiskFull(err)) for (const w of waiters) w.resolve();
        else this.bookkeepingFailed(marks, waiters, err);
      }
    } else for (const w of waiters) w.resolve();
    if (batch.length === 0) return;
    // The disk (or maxFileBytes) filled up before the byte budget did. Same policy as the
    // budget: the oldest records of the lowest-priority stream make room (never a stream more
    // important than any in the batch), committed on their own so their pages are free for
    // the batch, which is tried once more.
    let roomMade = before;
    try {
      this.db.transaction(() => this.makeRoom(batch))();
      roomMade = this.snapshot();
    } catch {
      // Not even the deletes fit: nothing was evicted.
      this.restore(before);
    }
    try {
      this.db.transaction(() => this.insertBatch(batch))();
    } catch (err) {
      this.restore(roomMade);
      if (!isDiskFull(err)) return rejectAll(batch, err);
      // Still no room: the batch itself is dropped and counted, like any policy drop. The
      // count is saved now if the disk allows, else with the next commit that succeeds.
      for (const { record } of batch) this.countDrops(record.stream, record.model ?? '', 'disk_full', 1);
      this.dropsUnsaved = true;
      try {
        this.saveDrops();
        this.dropsUnsaved = false;
      } catch {
        // The disk is full; the counts stay in memory until the next commit.
      }
    }
    for (const p of batch) p.resolve();
  }

  /** Runs inside a transaction: the window's sent marks and ack deletes. */
  private saveBookkeeping(marks: readonly number[], deletes: readonly number[]): void {
    if (deletes.length > 0) this.deleteSeqs.run(JSON.stringify(deletes));
    if (marks.length > 0) this.saveSent.run(JSON.stringify(marks));
  }

  private bookkeepingSaved(deletes: readonly number[], waiters: ReadonlyArray<{ resolve(): void }>): void {
    for (const seq of deletes) this.acked.delete(seq);
    for (const w of waiters) w.resolve();
  }

  /** Not committed: the deletes stay pending for the next commit; the marks' callers do not publish. */
  private bookkeepingFailed(marks: readonly number[], waiters: ReadonlyArray<{ reject(err: unknown): void }>, cause: unknown): void {
    for (const seq of marks) this.sent.delete(seq);
    const error = new DriftlineError('STORE_FAILED', 'cannot mark records as sent', { cause });
    for (const w of waiters) w.reject(error);
  }

  /** Rows the policy must leave alone: in flight (possibly stored), or acknowledged and about to be deleted. */
  private protectedSeqs(): string {
    return JSON.stringify(this.acked.size === 0 ? [...this.sent] : [...this.sent, ...this.acked]);
  }

  /** Runs inside a transaction: inserts the batch, then applies quotas and the budget. */
  private insertBatch(batch: readonly Pending[]): void {
    // Multi-row INSERTs: one statement step per MULTI_ROW records instead of one per record.
    let i = 0;
    for (; i + MULTI_ROW <= batch.length; i += MULTI_ROW) {
      const args: unknown[] = [];
      for (let j = i; j < i + MULTI_ROW; j++) {
        const r = batch[j]!.record;
        args.push(this.boot, r.stream, r.timeMs, r.body, r.model ?? '');
      }
      this.insertMany.run(args);
    }
    for (; i < batch.length; i++) {
      const r = batch[i]!.record;
      this.insert.run(this.boot, r.stream, r.timeMs, r.body, r.model ?? '');
    }
    for (const { record } of batch) this.count(record.stream, record.model ?? '', 1, record.body.length + ROW_OVERHEAD_BYTES);
    this.enforceLimits();
  }

  /**
   * Runs inside a transaction: the retention policy's makeRoom, until twice the batch's bytes
   * are free (freed pages are reused by the insert that follows; the slack keeps the next
   * commits from failing at once). Counted as disk_full drops.
   */
  private makeRoom(batch: readonly Pending[]): void {
    // Rows append at the right edge of the table, so only whole pages freed at the old end
    // make room: ask for at least a few pages, not just the batch's bytes.
    const needed = Math.max(2 * batch.reduce((sum, p) => sum + p.record.body.length + ROW_OVERHEAD_BYTES, 0), ROOM_PAGES * this.pageSize);
    const floor = batch.reduce((min, p) => Math.min(min, p.record.stream), Infinity);
    runPlan(makeRoom(this.counts, needed, floor), (step) => this.evict(step.stream, step.model, step.count, step.reason));
    this.saveDrops();
    this.dropsUnsaved = false;
  }

  /** Adds `records` and `bytes` (negative: removes them) to the stream's and the model's counts. */
  private count(stream: number, model: string, records: number, bytes: number): void {
    let c = this.counts.get(stream);
    if (!c) this.counts.set(stream, (c = { records: 0, bytes: 0, models: new Map() }));
    c.records += records;
    c.bytes += bytes;
    const m = c.models.get(model);
    if (m) {
      m.records += records;
      m.bytes += bytes;
      // A model with nothing left leaves the map: fair shares count the models with records.
      if (m.records <= 0) c.models.delete(model);
    } else if (records > 0) c.models.set(model, { records, bytes });
  }

  private snapshot(): { counts: Array<[number, StreamCounts]>; drops: string; dropsUnsaved: boolean } {
    return { counts: copyCounts(this.counts), drops: JSON.stringify([this.drops, this.modelDrops]), dropsUnsaved: this.dropsUnsaved };
  }

  private restore(s: ReturnType<SqliteBuffer['snapshot']>): void {
    this.counts.clear();
    // Copies: a snapshot may be restored twice (after each failed attempt of one flush), and
    // the counts restored the first time are mutated by the second attempt.
    for (const [k, v] of copyCounts(s.counts)) this.counts.set(k, v);
    [this.drops, this.modelDrops] = JSON.parse(s.drops) as [DropCounts, ModelDropCounts];
    this.dropsUnsaved = s.dropsUnsaved;
  }

  /** Runs inside a transaction: the drop counts, per stream and per model. */
  private saveDrops(): void {
    this.saveDropsStatement.run('buffer.drops', JSON.stringify(this.drops));
    this.saveDropsStatement.run('buffer.drops.models', JSON.stringify(this.modelDrops));
  }

  private countDrops(stream: number, model: string, reason: DropReason, n: number): void {
    if (n <= 0) return;
    const d = (this.drops[stream] ??= { quota: 0, budget: 0, ttl: 0 });
    d[reason] = (d[reason] ?? 0) + n;
    const m = ((this.modelDrops[stream] ??= {})[model] ??= {});
    m[reason] = (m[reason] ?? 0) + n;
  }

  /** Runs inside the commit's transaction: the retention policy's quotas and budget (retention.ts). */
  private enforceLimits(): void {
    let dropped = false;
    runPlan(enforceLimits(this.counts, this.limits), (step) => {
      const freed = this.evict(step.stream, step.model, step.count, step.reason);
      if (step.reason === 'quota' || freed.records > 0) dropped = true;
      return freed;
    });
    if (dropped || this.dropsUnsaved) {
      this.saveDrops();
      this.dropsUnsaved = false;
    }
  }

  /** Deletes the n oldest records of the model in the stream that are not in flight, counted as dropped for the reason; returns what that freed. */
  private evict(stream: number, model: string, n: number, reason: DropReason): Freed {
    const rows = this.evictOldest.all(stream, model, this.protectedSeqs(), n) as Array<{ bytes: number }>;
    const freed = rows.reduce((sum, r) => sum + r.bytes + ROW_OVERHEAD_BYTES, 0);
    this.count(stream, model, -rows.length, -freed);
    this.countDrops(stream, model, reason, rows.length);
    return { records: rows.length, bytes: freed };
  }

  private totalBytes(): number {
    let total = 0;
    for (const c of this.counts.values()) total += c.bytes;
    return total;
  }

  /**
   * Drops records past their TTL (counted), then hands free pages back to the disk and
   * truncates the WAL. Meant for a periodic task, not the enqueue path.
   */
  maintain(): { expired: number } {
    // What waits for its window goes first: the expiry then sees the rows as they are.
    this.flush();
    let expired = 0;
    const cutoff = expiryCutoff(this.clock.now(), this.limits);
    if (cutoff !== undefined) {
      const before = this.snapshot();
      try {
        this.db.transaction(() => {
          const rows = this.expire.all(cutoff, this.protectedSeqs()) as Array<{ stream: number; model: string; bytes: number }>;
          for (const r of rows) {
            this.count(r.stream, r.model, -1, -(r.bytes + ROW_OVERHEAD_BYTES));
            this.countDrops(r.stream, r.model, 'ttl', 1);
          }
          expired = rows.length;
          if (expired > 0) this.saveDrops();
        })();
      } catch (err) {
        this.restore(before);
        throw new DriftlineError('STORE_FAILED', 'cannot expire old records', { cause: err });
      }
    }
    this.db.pragma('incremental_vacuum');
    this.db.pragma('wal_checkpoint(TRUNCATE)');
    return { expired };
  }

  peek(limit: number, afterSeq: number): BufferedRecord[] {
    return this.ascending((after, n) => this.selectAfter.all(after, n) as BufferedRecord[], afterSeq, limit);
  }

  peekStream(stream: number, afterSeq: number, limit: number): BufferedRecord[] {
    return this.ascending((after, n) => this.selectStream.all(stream, after, n) as BufferedRecord[], afterSeq, limit);
  }

  /** Acknowledged rows still in the table (their delete waits for the window) are skipped. */
  peekNewest(aboveSeq: number, limit: number): BufferedRecord[] {
    const rows = this.selectNewest.all(aboveSeq, limit) as BufferedRecord[];
    return this.acked.size === 0 ? rows : rows.filter((r) => !this.acked.has(r.seq));
  }

  /** Up to `limit` rows after `afterSeq` in seq order, without the acknowledged rows whose delete waits for the window. */
  private ascending(select: (afterSeq: number, limit: number) => BufferedRecord[], afterSeq: number, limit: number): BufferedRecord[] {
    let rows = select(afterSeq, limit);
    if (this.acked.size === 0) return rows;
    const out: BufferedRecord[] = [];
    for (;;) {
      for (const r of rows) if (!this.acked.has(r.seq) && out.length < limit) out.push(r);
      if (rows.length < limit || out.length >= limit) return out;
      rows = select(rows[rows.length - 1]!.seq, limit);
    }
  }

  /**
   * The mark goes into the current window's commit, which it closes at the end of the turn;
   * the promise resolves once it is durable (publish then), or at once when every record's
   * mark already is. A disk too full even for
   * the mark leaves it in memory for this run and resolves too.
   */
  markSent(records: readonly BufferedRecord[]): Promise<void> {
    if (this.closed) return Promise.reject(new DriftlineError('SHUTTING_DOWN', 'the buffer is closed'));
    let waits = false;
    for (const r of records) {
      if (this.acked.has(r.seq)) continue;
      if (!this.sent.has(r.seq)) {
        this.sent.add(r.seq);
        this.unsavedMarks.add(r.seq);
      }
      if (this.unsavedMarks.has(r.seq)) waits = true;
    }
    if (!waits) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.markWaiters.push({ resolve, reject });
      this.openWindow(true);
    });
  }

  /**
   * Acknowledged records leave the counts, the peeks and the policy now; their rows are deleted
   * by the current window's commit. Returns how many of them were still buffered.
   */
  acknowledge(ranges: readonly SeqRange[]): number {
    type Row = { seq: number; stream: number; model: string; bytes: number };
    let rows: Row[];
    try {
      rows = ranges.flatMap((r) => this.selectRange.all(r.boot, r.first, r.last) as Row[]);
    } catch (err) {
      // Nothing was counted; the records stay until the ack comes again after a resend.
      throw new DriftlineError('STORE_FAILED', 'cannot find acknowledged records', { cause: err });
    }
    let n = 0;
    for (const row of rows) {
      if (this.acked.has(row.seq)) continue;
      n++;
      this.acked.add(row.seq);
      this.sent.delete(row.seq);
      this.unsavedMarks.delete(row.seq);
      this.count(row.stream, row.model, -1, -(row.bytes + ROW_OVERHEAD_BYTES));
    }
    if (n > 0) this.openWindow();
    return n;
  }

  depth(): number {
    let n = this.pending.length;
    for (const c of this.counts.values()) n += c.records;
    return n;
  }

  depthByStream(): Record<number, number> {
    return Object.fromEntries([...this.counts].map(([s, c]) => [s, c.records]));
  }

  /** Bytes the budget counts now. */
  usedBytes(): number {
    return this.totalBytes();
  }

  dropped(): DropCounts {
    return JSON.parse(JSON.stringify(this.drops)) as DropCounts;
  }

  droppedByModel(): ModelDropCounts {
    return JSON.parse(JSON.stringify(this.modelDrops)) as ModelDropCounts;
  }

  /** Records and bytes each model holds in each stream ("" for records of no model). */
  depthByModel(): Record<number, Record<string, OwnerUsage>> {
    return Object.fromEntries([...this.counts].map(([s, c]) => [s, Object.fromEntries([...c.models].map(([m, u]) => [m, { ...u }]))]));
  }

  droppedTotal(): number {
    let n = 0;
    for (const d of Object.values(this.drops)) for (const r of REASONS) n += d[r] ?? 0;
    return n;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.db.close();
  }
}

/**
 * Brings a buffer written by an older agent to today's table, keeping its records: the sent
 * mark (added when marks were persisted) and the model of each record (added with the
 * fair shares between models), read from the bodies of the streams that carry one, in one
 * transaction, so a crash midway leaves the old table for the next open to migrate again.
 */
function migrateOutbox(db: Db): void {
  const columns = new Set((db.pragma('table_info(outbox)') as Array<{ name: string }>).map((c) => c.name));
  db.transaction(() => {
    if (!columns.has('sent')) db.exec('ALTER TABLE outbox ADD COLUMN sent INTEGER NOT NULL DEFAULT 0');
    if (!columns.has('model')) {
      db.exec("ALTER TABLE outbox ADD COLUMN model TEXT NOT NULL DEFAULT ''");
      db.function('driftline_record_model', { deterministic: true }, (body: unknown) => (body instanceof Uint8Array ? encodedRecordModel(body) : ''));
      db.exec(`UPDATE outbox SET model = driftline_record_model(body) WHERE stream IN (${MODEL_STREAMS.join(', ')})`);
    }
    db.exec('CREATE INDEX IF NOT EXISTS outbox_owner ON outbox (stream, model)');
  })();
}

function copyCounts(counts: Iterable<[number, StreamCounts]>): Array<[number, StreamCounts]> {
  return [...counts].map(([s, c]) => [s, { records: c.records, bytes: c.bytes, models: new Map([...c.models].map(([m, u]) => [m, { ...u }])) }]);
}

/** A batch that could not be written for another reason than a full disk: its callers get the error. */
function rejectAll(batch: readonly Pending[], cause: unknown): void {
  const error = new DriftlineError('BUFFER_FULL', 'cannot write to the agent buffer', { cause });
  for (const p of batch) p.reject(error);
}

/** SQLITE_FULL: the disk, or the file's max_page_count, has no room for the write. */
function isDiskFull(err: unknown): boolean {
  return (err as { code?: unknown }).code === 'SQLITE_FULL';
}
