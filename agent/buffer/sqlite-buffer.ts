import Database from 'better-sqlite3';
import type { Database as Db, Statement } from 'better-sqlite3';
import { DriftlineError } from '../../common/errors.js';
import type { SeqRange } from '../../common/proto/driftline/v1/device_link.js';
import type { BufferedRecord, NewRecord, TelemetryBuffer } from './ports.js';

export interface SqliteBufferOptions {
  file: string;
  /** FULL survives power loss; NORMAL (WAL) may lose the last commits on power loss, never on a process crash. */
  synchronous: 'FULL' | 'NORMAL';
}

interface Pending {
  record: NewRecord;
  resolve(): void;
  reject(err: unknown): void;
}

/**
 * The outbox in SQLite (WAL). Sequence numbers are the table's AUTOINCREMENT rowid, so
 * they never repeat, even after records are deleted or the agent restarts; the boot
 * counter is persisted and bumped on every open. Enqueues in the same event-loop turn
 * share one transaction (group commit), which keeps fsyncs off the per-record path.
 */
export class SqliteBuffer implements TelemetryBuffer {
  readonly boot: number;
  private readonly db: Db;
  private readonly insert: Statement;
  private readonly selectAfter: Statement;
  private readonly deleteRange: Statement;
  private readonly countAll: Statement;
  private pending: Pending[] = [];
  private flushScheduled = false;
  private closed = false;

  static open(options: SqliteBufferOptions): SqliteBuffer {
    let db: Db;
    try {
      db = new Database(options.file);
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${options.synchronous}`);
    } catch (err) {
      throw new DriftlineError('STORE_FAILED', `cannot open the agent buffer at ${options.file}`, { cause: err });
    }
    return new SqliteBuffer(db);
  }

  private constructor(db: Db) {
    this.db = db;
    db.exec(`
      CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        boot INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        body BLOB NOT NULL
      );
      CREATE TABLE IF NOT EXISTS agent_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    `);
    this.boot = db.transaction(() => {
      const row = db.prepare(`SELECT value FROM agent_state WHERE key = 'boot'`).get() as { value: string } | undefined;
      const next = (row ? Number(row.value) : 0) + 1;
      db.prepare(`INSERT INTO agent_state (key, value) VALUES ('boot', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(String(next));
      return next;
    })();
    this.insert = db.prepare('INSERT INTO outbox (boot, stream, time_ms, body) VALUES (?, ?, ?, ?)');
    this.selectAfter = db.prepare('SELECT seq, boot, stream, time_ms AS timeMs, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?');
    this.deleteRange = db.prepare('DELETE FROM outbox WHERE boot = ? AND seq BETWEEN ? AND ?');
    this.countAll = db.prepare('SELECT count(*) AS n FROM outbox');
  }

  enqueue(record: NewRecord): Promise<void> {
    if (this.closed) return Promise.reject(new DriftlineError('SHUTTING_DOWN', 'the buffer is closed'));
    return new Promise((resolve, reject) => {
      this.pending.push({ record, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushScheduled = false;
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return;
    try {
      this.db.transaction(() => {
        for (const { record } of batch) this.insert.run(this.boot, record.stream, record.timeMs, record.body);
      })();
      for (const p of batch) p.resolve();
    } catch (err) {
      const error = new DriftlineError('BUFFER_FULL', 'cannot write to the agent buffer', { cause: err });
      for (const p of batch) p.reject(error);
    }
  }

  peek(limit: number, afterSeq: number): BufferedRecord[] {
    return this.selectAfter.all(afterSeq, limit) as BufferedRecord[];
  }

  acknowledge(ranges: readonly SeqRange[]): number {
    return this.db.transaction(() => ranges.reduce((n, r) => n + this.deleteRange.run(r.boot, r.first, r.last).changes, 0))();
  }

  depth(): number {
    return (this.countAll.get() as { n: number }).n + this.pending.length;
  }

  getState(key: string): string | undefined {
    return (this.db.prepare('SELECT value FROM agent_state WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  }

  setState(key: string, value: string): void {
    this.db.prepare('INSERT INTO agent_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.db.close();
  }
}
