import type { Database } from 'better-sqlite3';
import { DriftlineError } from '../../../common/errors.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';
import { ACTIVE_STATES, targetGroup } from '../../rollout/plan.js';
import type { AuditRecord, RolloutRepository, RolloutTransaction, StoredRequest } from '../../rollout/ports.js';
import type { Rollout } from '../../rollout/state-machine.js';

const ACTIVE_SQL = ACTIVE_STATES.map((s) => `'${s}'`).join(', ');

const MIGRATIONS = [
  `CREATE TABLE rollouts (
     id TEXT PRIMARY KEY,
     model TEXT NOT NULL,
     target_group TEXT NOT NULL,
     state TEXT NOT NULL,
     created_at_ms INTEGER NOT NULL,
     updated_at_ms INTEGER NOT NULL,
     body TEXT NOT NULL
   );
   -- One active rollout per model and target group, enforced by the store itself.
   CREATE UNIQUE INDEX rollouts_one_active ON rollouts (model, target_group) WHERE state IN (${ACTIVE_SQL});
   CREATE TABLE rollout_audit (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     rollout_id TEXT NOT NULL,
     at_ms INTEGER NOT NULL,
     actor TEXT NOT NULL,
     client_request_id TEXT NOT NULL,
     action TEXT NOT NULL,
     from_state TEXT NOT NULL,
     to_state TEXT NOT NULL,
     wave INTEGER NOT NULL,
     reason TEXT NOT NULL,
     details TEXT NOT NULL
   );
   CREATE INDEX rollout_audit_rollout ON rollout_audit (rollout_id, seq);
   CREATE TABLE rollout_requests (
     client_request_id TEXT PRIMARY KEY,
     action TEXT NOT NULL,
     fingerprint TEXT NOT NULL,
     rollout_id TEXT NOT NULL,
     at_ms INTEGER NOT NULL
   );`,
];

interface AuditRow {
  seq: number;
  rollout_id: string;
  at_ms: number;
  actor: string;
  client_request_id: string;
  action: string;
  from_state: Rollout['state'];
  to_state: Rollout['state'];
  wave: number;
  reason: string;
  details: string;
}

/** The statements, run synchronously on the connection: by the repository's reads and inside a unit of work. */
class RolloutStatements {
  constructor(private readonly db: Database) {}

  insert(rollout: Rollout): void {
    try {
      this.db
        .prepare('INSERT INTO rollouts (id, model, target_group, state, created_at_ms, updated_at_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(
          rollout.id,
          rollout.plan.model,
          targetGroup(rollout.plan.target),
          rollout.state,
          rollout.createdAtMs,
          rollout.updatedAtMs,
          JSON.stringify(rollout),
        );
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') {
        throw new DriftlineError('ROLLOUT_ACTIVE_EXISTS', `another rollout of ${rollout.plan.model} to this target group is active`, { cause: err });
      }
      throw new DriftlineError('STORE_FAILED', 'cannot store the rollout', { cause: err });
    }
  }

  update(rollout: Rollout): void {
    this.db
      .prepare('UPDATE rollouts SET state = ?, updated_at_ms = ?, body = ? WHERE id = ?')
      .run(rollout.state, rollout.updatedAtMs, JSON.stringify(rollout), rollout.id);
  }

  get(id: string): Rollout | undefined {
    const row = this.db.prepare('SELECT body FROM rollouts WHERE id = ?').get(id) as { body: string } | undefined;
    return row ? (JSON.parse(row.body) as Rollout) : undefined;
  }

  list(options: { activeOnly?: boolean; model?: string; limit?: number } = {}): Rollout[] {
    const rows = this.db
      .prepare(
        `SELECT body FROM rollouts WHERE (? = 0 OR state IN (${ACTIVE_SQL})) AND (? = '' OR model = ?)
         ORDER BY created_at_ms DESC, id LIMIT ?`,
      )
      .all(options.activeOnly ? 1 : 0, options.model ?? '', options.model ?? '', options.limit ?? 1000) as Array<{ body: string }>;
    return rows.map((r) => JSON.parse(r.body) as Rollout);
  }

  findActive(model: string, group: string): Rollout | undefined {
    const row = this.db.prepare(`SELECT body FROM rollouts WHERE model = ? AND target_group = ? AND state IN (${ACTIVE_SQL})`).get(model, group) as
      { body: string } | undefined;
    return row ? (JSON.parse(row.body) as Rollout) : undefined;
  }

  appendAudit(r: Omit<AuditRecord, 'seq'>): void {
    this.db
      .prepare(
        `INSERT INTO rollout_audit (rollout_id, at_ms, actor, client_request_id, action, from_state, to_state, wave, reason, details)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(r.rolloutId, r.atMs, r.actor, r.clientRequestId, r.action, r.fromState, r.toState, r.wave, r.reason, JSON.stringify(r.details));
  }

  audit(rolloutId: string): AuditRecord[] {
    const rows = this.db.prepare('SELECT * FROM rollout_audit WHERE rollout_id = ? ORDER BY seq').all(rolloutId) as AuditRow[];
    return rows.map((r) => ({
      seq: r.seq,
      rolloutId: r.rollout_id,
      atMs: r.at_ms,
      actor: r.actor,
      clientRequestId: r.client_request_id,
      action: r.action,
      fromState: r.from_state,
      toState: r.to_state,
      wave: r.wave,
      reason: r.reason,
      details: JSON.parse(r.details) as Record<string, unknown>,
    }));
  }

  findRequest(clientRequestId: string): StoredRequest | undefined {
    const row = this.db
      .prepare('SELECT client_request_id, action, fingerprint, rollout_id FROM rollout_requests WHERE client_request_id = ?')
      .get(clientRequestId) as { client_request_id: string; action: string; fingerprint: string; rollout_id: string } | undefined;
    return row ? { clientRequestId: row.client_request_id, action: row.action, fingerprint: row.fingerprint, rolloutId: row.rollout_id } : undefined;
  }

  saveRequest(request: StoredRequest, atMs: number): void {
    this.db
      .prepare('INSERT INTO rollout_requests (client_request_id, action, fingerprint, rollout_id, at_ms) VALUES (?, ?, ?, ?, ?)')
      .run(request.clientRequestId, request.action, request.fingerprint, request.rolloutId, atMs);
  }
}

/** Rollouts, their audit log and the idempotency keys of operator commands, in SQLite. */
export class SqliteRolloutRepository implements RolloutRepository {
  private readonly connection: SqliteConnection;
  private readonly statements: RolloutStatements;

  constructor(db: Database) {
    applyMigrations(db, 'rollout', MIGRATIONS);
    this.connection = connectionOf(db);
    this.statements = new RolloutStatements(db);
  }

  transaction<T>(work: (tx: RolloutTransaction) => Promise<T>): Promise<T> {
    const s = this.statements;
    // Inside the unit of work the connection is this work's alone: statements run directly.
    const tx: RolloutTransaction = {
      get: async (id) => s.get(id),
      list: async (options) => s.list(options),
      findActive: async (model, group) => s.findActive(model, group),
      audit: async (rolloutId) => s.audit(rolloutId),
      findRequest: async (id) => s.findRequest(id),
      insert: async (rollout) => s.insert(rollout),
      update: async (rollout) => s.update(rollout),
      appendAudit: async (record) => s.appendAudit(record),
      saveRequest: async (request, atMs) => s.saveRequest(request, atMs),
    };
    return this.connection.unitOfWork(() => work(tx));
  }

  get(id: string): Promise<Rollout | undefined> {
    return this.connection.run(() => this.statements.get(id));
  }

  list(options: { activeOnly?: boolean; model?: string; limit?: number } = {}): Promise<Rollout[]> {
    return this.connection.run(() => this.statements.list(options));
  }

  findActive(model: string, group: string): Promise<Rollout | undefined> {
    return this.connection.run(() => this.statements.findActive(model, group));
  }

  audit(rolloutId: string): Promise<AuditRecord[]> {
    return this.connection.run(() => this.statements.audit(rolloutId));
  }

  findRequest(clientRequestId: string): Promise<StoredRequest | undefined> {
    return this.connection.run(() => this.statements.findRequest(clientRequestId));
  }
}
