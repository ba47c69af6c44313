import type { Database, Statement } from 'better-sqlite3';
import { DriftlineError } from '../../../common/errors.js';
import { retrainingPolicySchema, type RetrainingPolicy, type StoredRetrainingPolicy } from '../../training/retraining-policy.js';
import type {
  NewTriggerDecision,
  RetrainingPolicyStore,
  TriggerDecisionFilter,
  TriggerDecisionRecord,
  TriggerReason,
} from '../../training/retraining-ports.js';
import type { TriggerKind } from '../../training/retraining-policy.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';

const MIGRATIONS = [
  `-- Every version of every model's policy; the current one is the highest version.
   CREATE TABLE retraining_policies (
     model TEXT NOT NULL,
     version INTEGER NOT NULL,
     policy TEXT NOT NULL,
     updated_at_ms INTEGER NOT NULL,
     updated_by TEXT NOT NULL,
     PRIMARY KEY (model, version)
   ) WITHOUT ROWID;
   -- AUTOINCREMENT: a decision id is never reused, so a page token stays meaningful after retention.
   CREATE TABLE retraining_decisions (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     model TEXT NOT NULL,
     at_ms INTEGER NOT NULL,
     trigger_kind TEXT NOT NULL,
     trigger_key TEXT NOT NULL,
     fired INTEGER NOT NULL,
     reason TEXT NOT NULL,
     details TEXT NOT NULL,
     job_id TEXT NOT NULL,
     client_request_id TEXT NOT NULL,
     policy_version INTEGER NOT NULL
   );
   CREATE INDEX retraining_decisions_model ON retraining_decisions (model, id);
   CREATE INDEX retraining_decisions_key ON retraining_decisions (model, trigger_key, id);
   CREATE INDEX retraining_decisions_fired ON retraining_decisions (model, fired, id);
   CREATE INDEX retraining_decisions_at ON retraining_decisions (at_ms);
   -- One trigger starts at most one job, enforced by the store itself.
   CREATE UNIQUE INDEX retraining_decisions_fired_once ON retraining_decisions (model, trigger_key) WHERE fired = 1;
   CREATE TABLE retraining_cursors (
     name TEXT PRIMARY KEY,
     value INTEGER NOT NULL
   ) WITHOUT ROWID;`,
];

interface PolicyRow {
  model: string;
  version: number;
  policy: string;
  updated_at_ms: number;
  updated_by: string;
  created_at_ms: number;
}

interface DecisionRow {
  id: number;
  model: string;
  at_ms: number;
  trigger_kind: string;
  trigger_key: string;
  fired: number;
  reason: string;
  details: string;
  job_id: string;
  client_request_id: string;
  policy_version: number;
}

// Re-parsed on the way out: a policy stored by an older build gets the defaults this one adds.
const policyFrom = (r: PolicyRow): StoredRetrainingPolicy => ({
  model: r.model,
  version: r.version,
  policy: retrainingPolicySchema.parse(JSON.parse(r.policy)),
  createdAtMs: r.created_at_ms,
  updatedAtMs: r.updated_at_ms,
  updatedBy: r.updated_by,
});

const decisionFrom = (r: DecisionRow): TriggerDecisionRecord => ({
  id: r.id,
  model: r.model,
  atMs: r.at_ms,
  trigger: r.trigger_kind as TriggerKind,
  triggerKey: r.trigger_key,
  fired: r.fired === 1,
  reason: r.reason as TriggerReason,
  details: JSON.parse(r.details) as Record<string, unknown>,
  jobId: r.job_id,
  clientRequestId: r.client_request_id,
  policyVersion: r.policy_version,
});

const CURRENT_SELECT = `SELECT p.model, p.version, p.policy, p.updated_at_ms, p.updated_by,
     (SELECT min(f.updated_at_ms) FROM retraining_policies f WHERE f.model = p.model) AS created_at_ms
   FROM retraining_policies p
   WHERE p.version = (SELECT max(v.version) FROM retraining_policies v WHERE v.model = p.model)`;

/** Retraining policies (versioned) and the trigger decision log, in the control plane's SQLite file. */
export class SqliteRetrainingPolicyRepository implements RetrainingPolicyStore {
  private readonly connection: SqliteConnection;
  private readonly selectCurrent: Statement;
  private readonly selectAll: Statement;
  private readonly insertPolicy: Statement;
  private readonly insertDecision: Statement;
  private readonly selectLastForKey: Statement;
  private readonly selectLastFired: Statement;
  private readonly selectDecisions: Statement;
  private readonly selectCursor: Statement;
  private readonly upsertCursor: Statement;
  private readonly prune: Statement;

  constructor(private readonly db: Database) {
    applyMigrations(db, 'retraining', MIGRATIONS);
    this.connection = connectionOf(db);
    this.selectCurrent = db.prepare(`${CURRENT_SELECT} AND p.model = ?`);
    this.selectAll = db.prepare(`${CURRENT_SELECT} ORDER BY p.model`);
    this.insertPolicy = db.prepare('INSERT INTO retraining_policies (model, version, policy, updated_at_ms, updated_by) VALUES (?, ?, ?, ?, ?)');
    this.insertDecision = db.prepare(
      `INSERT INTO retraining_decisions (model, at_ms, trigger_kind, trigger_key, fired, reason, details, job_id, client_request_id, policy_version)
       VALUES (@model, @atMs, @trigger, @triggerKey, @fired, @reason, @details, @jobId, @clientRequestId, @policyVersion)`,
    );
    this.selectLastForKey = db.prepare('SELECT * FROM retraining_decisions WHERE model = ? AND trigger_key = ? ORDER BY id DESC LIMIT 1');
    this.selectLastFired = db.prepare('SELECT * FROM retraining_decisions WHERE model = ? AND fired = 1 ORDER BY id DESC LIMIT 1');
    this.selectDecisions = db.prepare(
      `SELECT * FROM retraining_decisions
       WHERE (@model = '' OR model = @model) AND (@firedOnly = 0 OR fired = 1) AND id < @beforeId
       ORDER BY id DESC LIMIT @limit`,
    );
    this.selectCursor = db.prepare('SELECT value FROM retraining_cursors WHERE name = ?');
    this.upsertCursor = db.prepare('INSERT INTO retraining_cursors (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value');
    // Each model's last fired decision stays: the cooldown and the labelled-sample window count from it.
    this.prune = db.prepare(
      'DELETE FROM retraining_decisions WHERE at_ms < ? AND id NOT IN (SELECT max(id) FROM retraining_decisions WHERE fired = 1 GROUP BY model)',
    );
  }

  current(model: string): Promise<StoredRetrainingPolicy | undefined> {
    return this.connection.run(() => {
      const row = this.selectCurrent.get(model) as PolicyRow | undefined;
      return row ? policyFrom(row) : undefined;
    });
  }

  all(): Promise<StoredRetrainingPolicy[]> {
    return this.connection.run(() => (this.selectAll.all() as PolicyRow[]).map(policyFrom));
  }

  save(model: string, policy: RetrainingPolicy, atMs: number, actor: string): Promise<StoredRetrainingPolicy> {
    const text = JSON.stringify(policy);
    return this.connection.run(() =>
      this.db.transaction(() => {
        const current = this.selectCurrent.get(model) as PolicyRow | undefined;
        if (current && current.policy === text) return policyFrom(current);
        const version = (current?.version ?? 0) + 1;
        this.insertPolicy.run(model, version, text, atMs, actor);
        return policyFrom(this.selectCurrent.get(model) as PolicyRow);
      })(),
    );
  }

  recordDecision(decision: NewTriggerDecision): Promise<TriggerDecisionRecord> {
    return this.connection.run(() => {
      try {
        const id = Number(this.insertDecision.run({ ...decision, fired: decision.fired ? 1 : 0, details: JSON.stringify(decision.details) }).lastInsertRowid);
        return { ...decision, id };
      } catch (err) {
        if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') {
          throw new DriftlineError('REQUEST_ID_REUSED', `trigger ${decision.triggerKey} of ${decision.model} already started a job`, {
            cause: err,
            details: { model: decision.model, triggerKey: decision.triggerKey },
          });
        }
        throw new DriftlineError('STORE_FAILED', 'cannot record the trigger decision', { cause: err });
      }
    });
  }

  lastDecisionFor(model: string, triggerKey: string): Promise<TriggerDecisionRecord | undefined> {
    return this.connection.run(() => {
      const row = this.selectLastForKey.get(model, triggerKey) as DecisionRow | undefined;
      return row ? decisionFrom(row) : undefined;
    });
  }

  lastFired(model: string): Promise<TriggerDecisionRecord | undefined> {
    return this.connection.run(() => {
      const row = this.selectLastFired.get(model) as DecisionRow | undefined;
      return row ? decisionFrom(row) : undefined;
    });
  }

  listDecisions(filter: TriggerDecisionFilter, limit: number): Promise<TriggerDecisionRecord[]> {
    return this.connection.run(() =>
      (
        this.selectDecisions.all({
          model: filter.model ?? '',
          firedOnly: filter.firedOnly ? 1 : 0,
          beforeId: filter.beforeId ?? Number.MAX_SAFE_INTEGER,
          limit,
        }) as DecisionRow[]
      ).map(decisionFrom),
    );
  }

  cursor(name: string): Promise<number | undefined> {
    return this.connection.run(() => (this.selectCursor.get(name) as { value: number } | undefined)?.value);
  }

  setCursor(name: string, value: number): Promise<void> {
    return this.connection.run(() => void this.upsertCursor.run(name, value));
  }

  pruneDecisionsOlderThan(beforeMs: number): Promise<number> {
    return this.connection.run(() => this.prune.run(beforeMs).changes);
  }
}
