import type { Database, Statement } from 'better-sqlite3';
import type { DriftEventFilter, DriftEventRecord, DriftEventStore, DriftLevel, DriftStatusKey, NewDriftEvent } from '../../drift/ports.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';

const MIGRATIONS = [
  // AUTOINCREMENT: an id is never reused, even after retention deletes every row, so a
  // watcher resuming after an id never misses or repeats an event.
  `CREATE TABLE drift_events (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     at_ms INTEGER NOT NULL,
     model TEXT NOT NULL,
     version INTEGER NOT NULL,
     cohort TEXT NOT NULL,
     previous_status TEXT NOT NULL,
     status TEXT NOT NULL,
     drifted_share REAL NOT NULL,
     drifted_features TEXT NOT NULL,
     max_psi REAL NOT NULL,
     rows INTEGER NOT NULL,
     devices INTEGER NOT NULL
   );
   CREATE INDEX drift_events_model ON drift_events (model, version, id);
   CREATE INDEX drift_events_at ON drift_events (at_ms);
   -- The last recorded status per key, kept apart from the events so retention never forgets it.
   -- A key whose status is no_data has no row.
   CREATE TABLE drift_status_current (
     model TEXT NOT NULL,
     version INTEGER NOT NULL,
     cohort TEXT NOT NULL,
     status TEXT NOT NULL,
     event_id INTEGER NOT NULL,
     PRIMARY KEY (model, version, cohort)
   ) WITHOUT ROWID;`,
];

interface EventRow {
  id: number;
  at_ms: number;
  model: string;
  version: number;
  cohort: string;
  previous_status: string;
  status: string;
  drifted_share: number;
  drifted_features: string;
  max_psi: number;
  rows: number;
  devices: number;
}

const fromRow = (r: EventRow): DriftEventRecord => ({
  id: r.id,
  atMs: r.at_ms,
  model: r.model,
  version: r.version,
  cohort: r.cohort,
  previousStatus: r.previous_status as DriftLevel,
  status: r.status as DriftLevel,
  driftedShare: r.drifted_share,
  driftedFeatures: JSON.parse(r.drifted_features) as string[],
  maxPsi: r.max_psi,
  rows: r.rows,
  devices: r.devices,
});

/** Drift events and the last recorded status per model version and cohort, in the control plane's SQLite file. */
export class SqliteDriftEvents implements DriftEventStore {
  private readonly insert: Statement;
  private readonly setCurrent: Statement;
  private readonly clearCurrent: Statement;
  private readonly prune: Statement;
  private readonly selectCurrent: Statement;
  private readonly selectEvents: Statement;

  private readonly connection: SqliteConnection;

  constructor(private readonly db: Database) {
    applyMigrations(db, 'drift_events', MIGRATIONS);
    this.connection = connectionOf(db);
    this.insert = db.prepare(
      `INSERT INTO drift_events (at_ms, model, version, cohort, previous_status, status, drifted_share, drifted_features, max_psi, rows, devices)
       VALUES (@atMs, @model, @version, @cohort, @previousStatus, @status, @driftedShare, @driftedFeatures, @maxPsi, @rows, @devices)`,
    );
    this.setCurrent = db.prepare(
      `INSERT INTO drift_status_current (model, version, cohort, status, event_id) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (model, version, cohort) DO UPDATE SET status = excluded.status, event_id = excluded.event_id`,
    );
    this.clearCurrent = db.prepare('DELETE FROM drift_status_current WHERE model = ? AND version = ? AND cohort = ?');
    this.prune = db.prepare('DELETE FROM drift_events WHERE at_ms < ?');
    this.selectCurrent = db.prepare('SELECT model, version, cohort, status FROM drift_status_current ORDER BY model, version, cohort');
    this.selectEvents = db.prepare(
      `SELECT * FROM drift_events
       WHERE (@model = '' OR model = @model) AND (@version = 0 OR version = @version) AND (@anyCohort = 1 OR cohort = @cohort)
         AND at_ms >= @sinceMs AND id > @afterId
       ORDER BY id LIMIT @limit`,
    );
  }

  current(): Promise<Array<DriftStatusKey & { status: DriftLevel }>> {
    return this.connection.run(() => this.selectCurrent.all() as Array<DriftStatusKey & { status: DriftLevel }>);
  }

  record(events: NewDriftEvent[]): Promise<DriftEventRecord[]> {
    return this.connection.run(() => this.recordNow(events));
  }

  private recordNow(events: NewDriftEvent[]): DriftEventRecord[] {
    return this.db.transaction(() =>
      events.map((e) => {
        const id = Number(this.insert.run({ ...e, driftedFeatures: JSON.stringify(e.driftedFeatures) }).lastInsertRowid);
        if (e.status === 'no_data') this.clearCurrent.run(e.model, e.version, e.cohort);
        else this.setCurrent.run(e.model, e.version, e.cohort, e.status, id);
        return { ...e, id };
      }),
    )();
  }

  list(filter: DriftEventFilter, limit: number): Promise<DriftEventRecord[]> {
    return this.connection.run(() => this.listNow(filter, limit));
  }

  private listNow(filter: DriftEventFilter, limit: number): DriftEventRecord[] {
    const rows = this.selectEvents.all({
      model: filter.model ?? '',
      version: filter.version ?? 0,
      anyCohort: filter.cohort === undefined ? 1 : 0,
      cohort: filter.cohort ?? '',
      sinceMs: filter.sinceMs ?? 0,
      afterId: filter.afterId ?? 0,
      limit,
    }) as EventRow[];
    return rows.map(fromRow);
  }

  pruneOlderThan(beforeMs: number): Promise<number> {
    return this.connection.run(() => this.prune.run(beforeMs).changes);
  }
}
