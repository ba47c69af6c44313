import type { Database } from 'better-sqlite3';
import { DriftlineError } from '../../../common/errors.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';
import type {
  FederatedTaskFilter,
  FederatedTaskRepository,
  FederatedTaskTransaction,
  ReportKey,
  StoredFederatedRequest,
  StoredUpdate,
} from '../../federated/ports.js';
import { ENDED_TASK_STATES, type FederatedTask } from '../../federated/task-state-machine.js';

const ENDED_SQL = ENDED_TASK_STATES.map((s) => `'${s}'`).join(', ');

const MIGRATIONS = [
  `CREATE TABLE federated_tasks (
     id TEXT PRIMARY KEY,
     model TEXT NOT NULL,
     state TEXT NOT NULL,
     created_at_ms INTEGER NOT NULL,
     updated_at_ms INTEGER NOT NULL,
     body TEXT NOT NULL
   );
   CREATE INDEX federated_tasks_created ON federated_tasks (created_at_ms DESC, id DESC);
   CREATE TABLE federated_requests (
     client_request_id TEXT PRIMARY KEY,
     fingerprint TEXT NOT NULL,
     task_id TEXT NOT NULL,
     at_ms INTEGER NOT NULL
   );
   -- One row per answer a device gave (task, round, device, kind): a replay finds its row and is counted, not used.
   CREATE TABLE federated_reports (
     task_id TEXT NOT NULL,
     round INTEGER NOT NULL,
     device_id TEXT NOT NULL,
     kind TEXT NOT NULL,
     at_ms INTEGER NOT NULL,
     PRIMARY KEY (task_id, round, device_id, kind)
   );
   -- A round's accepted updates until it aggregates: a restarted control plane resumes the round from them.
   CREATE TABLE federated_updates (
     task_id TEXT NOT NULL,
     round INTEGER NOT NULL,
     device_id TEXT NOT NULL,
     sample_count INTEGER NOT NULL,
     train_loss REAL NOT NULL,
     staleness INTEGER NOT NULL,
     delta BLOB NOT NULL,
     PRIMARY KEY (task_id, round, device_id)
   );`,
];

interface UpdateRow {
  task_id: string;
  round: number;
  device_id: string;
  sample_count: number;
  train_loss: number;
  staleness: number;
  delta: Buffer;
}

function toUpdate(row: UpdateRow): StoredUpdate {
  // A copy aligned for Float32Array (a Buffer from SQLite may sit at any offset of a shared pool).
  const delta = new Float32Array(row.delta.length / 4);
  new Uint8Array(delta.buffer).set(row.delta);
  return {
    taskId: row.task_id,
    round: row.round,
    deviceId: row.device_id,
    sampleCount: row.sample_count,
    trainLoss: row.train_loss,
    staleness: row.staleness,
    delta,
  };
}

class FederatedStatements {
  constructor(private readonly db: Database) {}

  get(id: string): FederatedTask | undefined {
    const row = this.db.prepare('SELECT body FROM federated_tasks WHERE id = ?').get(id) as { body: string } | undefined;
    return row ? (JSON.parse(row.body) as FederatedTask) : undefined;
  }

  insert(task: FederatedTask): void {
    this.db
      .prepare('INSERT INTO federated_tasks (id, model, state, created_at_ms, updated_at_ms, body) VALUES (?, ?, ?, ?, ?, ?)')
      .run(task.id, task.spec.model, task.state, task.createdAtMs, task.updatedAtMs, JSON.stringify(task));
  }

  update(task: FederatedTask): void {
    const changed = this.db
      .prepare('UPDATE federated_tasks SET state = ?, updated_at_ms = ?, body = ? WHERE id = ?')
      .run(task.state, task.updatedAtMs, JSON.stringify(task), task.id).changes;
    if (changed !== 1) throw new DriftlineError('FEDERATED_TASK_NOT_FOUND', `federated task ${task.id} is not stored`);
  }

  list(filter: FederatedTaskFilter): FederatedTask[] {
    const before = filter.before;
    const rows = this.db
      .prepare(
        `SELECT body FROM federated_tasks
         WHERE (? = '' OR model = ?) AND (? = '' OR state = ?)
           AND (? = 0 OR created_at_ms < ? OR (created_at_ms = ? AND id < ?))
         ORDER BY created_at_ms DESC, id DESC LIMIT ?`,
      )
      .all(
        filter.model ?? '',
        filter.model ?? '',
        filter.state ?? '',
        filter.state ?? '',
        before ? 1 : 0,
        before?.createdAtMs ?? 0,
        before?.createdAtMs ?? 0,
        before?.id ?? '',
        filter.limit,
      ) as Array<{ body: string }>;
    return rows.map((r) => JSON.parse(r.body) as FederatedTask);
  }

  active(): FederatedTask[] {
    const rows = this.db.prepare(`SELECT body FROM federated_tasks WHERE state NOT IN (${ENDED_SQL}) ORDER BY created_at_ms, id`).all() as Array<{
      body: string;
    }>;
    return rows.map((r) => JSON.parse(r.body) as FederatedTask);
  }

  findRequest(clientRequestId: string): StoredFederatedRequest | undefined {
    const row = this.db.prepare('SELECT fingerprint, task_id FROM federated_requests WHERE client_request_id = ?').get(clientRequestId) as
      { fingerprint: string; task_id: string } | undefined;
    return row ? { clientRequestId, fingerprint: row.fingerprint, taskId: row.task_id } : undefined;
  }

  saveRequest(request: StoredFederatedRequest, atMs: number): void {
    this.db
      .prepare('INSERT INTO federated_requests (client_request_id, fingerprint, task_id, at_ms) VALUES (?, ?, ?, ?)')
      .run(request.clientRequestId, request.fingerprint, request.taskId, atMs);
  }

  recordReport(key: ReportKey, atMs: number): boolean {
    const result = this.db
      .prepare('INSERT OR IGNORE INTO federated_reports (task_id, round, device_id, kind, at_ms) VALUES (?, ?, ?, ?, ?)')
      .run(key.taskId, key.round, key.deviceId, key.kind, atMs);
    return result.changes === 1;
  }

  saveUpdate(u: StoredUpdate): void {
    this.db
      .prepare('INSERT INTO federated_updates (task_id, round, device_id, sample_count, train_loss, staleness, delta) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(u.taskId, u.round, u.deviceId, u.sampleCount, u.trainLoss, u.staleness, Buffer.from(u.delta.buffer, u.delta.byteOffset, u.delta.byteLength));
  }

  dropUpdates(taskId: string, round: number): void {
    this.db.prepare('DELETE FROM federated_updates WHERE task_id = ? AND round = ?').run(taskId, round);
  }

  /** The round's device ids in a stable order (the cursor the update iterator pages by). */
  updateAfter(taskId: string, round: number, afterDevice: string): UpdateRow | undefined {
    return this.db
      .prepare('SELECT * FROM federated_updates WHERE task_id = ? AND round = ? AND device_id > ? ORDER BY device_id LIMIT 1')
      .get(taskId, round, afterDevice) as UpdateRow | undefined;
  }
}

/** Federated tasks, their idempotency keys, the answers devices gave and the updates of open rounds, in SQLite. */
export class SqliteFederatedTaskRepository implements FederatedTaskRepository {
  private readonly connection: SqliteConnection;
  private readonly statements: FederatedStatements;

  constructor(db: Database) {
    applyMigrations(db, 'federated', MIGRATIONS);
    this.connection = connectionOf(db);
    this.statements = new FederatedStatements(db);
  }

  transaction<T>(work: (tx: FederatedTaskTransaction) => Promise<T>): Promise<T> {
    const s = this.statements;
    const tx: FederatedTaskTransaction = {
      get: async (id) => s.get(id),
      insert: async (task) => s.insert(task),
      update: async (task) => s.update(task),
      saveRequest: async (request, atMs) => s.saveRequest(request, atMs),
      recordReport: async (key, atMs) => s.recordReport(key, atMs),
      saveUpdate: async (update) => s.saveUpdate(update),
      dropUpdates: async (taskId, round) => s.dropUpdates(taskId, round),
    };
    return this.connection.unitOfWork(() => work(tx));
  }

  get(id: string): Promise<FederatedTask | undefined> {
    return this.connection.run(() => this.statements.get(id));
  }

  list(filter: FederatedTaskFilter): Promise<FederatedTask[]> {
    return this.connection.run(() => this.statements.list(filter));
  }

  active(): Promise<FederatedTask[]> {
    return this.connection.run(() => this.statements.active());
  }

  findRequest(clientRequestId: string): Promise<StoredFederatedRequest | undefined> {
    return this.connection.run(() => this.statements.findRequest(clientRequestId));
  }

  /** One row at a time by device id: memory holds one update, whatever the round's size. */
  async *updates(taskId: string, round: number): AsyncIterable<StoredUpdate> {
    let after = '';
    for (;;) {
      const row = await this.connection.run(() => this.statements.updateAfter(taskId, round, after));
      if (!row) return;
      after = row.device_id;
      yield toUpdate(row);
    }
  }
}
