import type { Database } from 'better-sqlite3';
import { DriftlineError } from '../../../common/errors.js';
import type { TrainingJob, TrainingJobState } from '../../training/job-state-machine.js';
import type {
  StoredCandidate,
  StoredTrainingRequest,
  TrainingAttemptRecord,
  TrainingAuditRecord,
  TrainingJobFilter,
  TrainingJobReads,
  TrainingJobRepository,
  TrainingJobTransaction,
  TrainingLogLine,
  TrainingWorker,
} from '../../training/ports.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';

const MIGRATIONS = [
  `CREATE TABLE training_jobs (
     id TEXT PRIMARY KEY,
     model TEXT NOT NULL,
     state TEXT NOT NULL,
     created_at_ms INTEGER NOT NULL,
     updated_at_ms INTEGER NOT NULL,
     body TEXT NOT NULL
   );
   CREATE INDEX training_jobs_listing ON training_jobs (created_at_ms DESC, id DESC);
   CREATE INDEX training_jobs_state ON training_jobs (state, created_at_ms);
   -- At most one job per model holds a worker or the gate, enforced by the store itself.
   CREATE UNIQUE INDEX training_jobs_one_active ON training_jobs (model) WHERE state IN ('leased', 'running', 'evaluating');
   CREATE TABLE training_attempts (
     job_id TEXT NOT NULL REFERENCES training_jobs (id),
     attempt INTEGER NOT NULL,
     lease_id TEXT NOT NULL UNIQUE,
     worker_id TEXT NOT NULL,
     leased_at_ms INTEGER NOT NULL,
     ended_at_ms INTEGER NOT NULL,
     outcome TEXT NOT NULL,
     error_code TEXT NOT NULL,
     PRIMARY KEY (job_id, attempt)
   );
   CREATE TABLE training_audit (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     job_id TEXT NOT NULL,
     at_ms INTEGER NOT NULL,
     actor TEXT NOT NULL,
     client_request_id TEXT NOT NULL,
     action TEXT NOT NULL,
     from_state TEXT NOT NULL,
     to_state TEXT NOT NULL,
     attempt INTEGER NOT NULL,
     reason TEXT NOT NULL,
     details TEXT NOT NULL
   );
   CREATE INDEX training_audit_job ON training_audit (job_id, seq);
   CREATE TABLE training_requests (
     client_request_id TEXT PRIMARY KEY,
     action TEXT NOT NULL,
     fingerprint TEXT NOT NULL,
     job_id TEXT NOT NULL,
     at_ms INTEGER NOT NULL
   );
   CREATE TABLE training_logs (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     job_id TEXT NOT NULL,
     attempt INTEGER NOT NULL,
     at_ms INTEGER NOT NULL,
     text TEXT NOT NULL
   );
   CREATE INDEX training_logs_job ON training_logs (job_id, seq);
   CREATE TABLE training_workers (
     id TEXT PRIMARY KEY,
     token_id TEXT NOT NULL,
     name TEXT NOT NULL,
     registered_at_ms INTEGER NOT NULL,
     last_seen_ms INTEGER NOT NULL,
     body TEXT NOT NULL,
     UNIQUE (token_id, name)
   );
   CREATE TABLE training_candidates (
     id TEXT PRIMARY KEY,
     job_id TEXT NOT NULL REFERENCES training_jobs (id),
     lease_id TEXT NOT NULL,
     attempt INTEGER NOT NULL,
     sha256 TEXT NOT NULL,
     size_bytes INTEGER NOT NULL,
     uploaded_at_ms INTEGER NOT NULL,
     metrics TEXT NOT NULL
   );
   CREATE INDEX training_candidates_job ON training_candidates (job_id);`,
];

interface AttemptRow {
  job_id: string;
  attempt: number;
  lease_id: string;
  worker_id: string;
  leased_at_ms: number;
  ended_at_ms: number;
  outcome: string;
  error_code: string;
}

interface AuditRow {
  seq: number;
  job_id: string;
  at_ms: number;
  actor: string;
  client_request_id: string;
  action: string;
  from_state: TrainingJobState;
  to_state: TrainingJobState;
  attempt: number;
  reason: string;
  details: string;
}

interface LogRow {
  seq: number;
  job_id: string;
  attempt: number;
  at_ms: number;
  text: string;
}

interface CandidateRow {
  id: string;
  job_id: string;
  lease_id: string;
  attempt: number;
  sha256: string;
  size_bytes: number;
  uploaded_at_ms: number;
  metrics: string;
}

const toAttempt = (r: AttemptRow): TrainingAttemptRecord => ({
  jobId: r.job_id,
  attempt: r.attempt,
  leaseId: r.lease_id,
  workerId: r.worker_id,
  leasedAtMs: r.leased_at_ms,
  endedAtMs: r.ended_at_ms,
  outcome: r.outcome,
  errorCode: r.error_code,
});

const toLog = (r: LogRow): TrainingLogLine => ({ seq: r.seq, jobId: r.job_id, attempt: r.attempt, atMs: r.at_ms, text: r.text });

/** The statements, run synchronously on the connection: by the repository's reads and inside a unit of work. */
class TrainingStatements {
  constructor(private readonly db: Database) {}

  get(id: string): TrainingJob | undefined {
    const row = this.db.prepare('SELECT body FROM training_jobs WHERE id = ?').get(id) as { body: string } | undefined;
    return row ? (JSON.parse(row.body) as TrainingJob) : undefined;
  }

  list(filter: TrainingJobFilter): TrainingJob[] {
    const after = filter.after;
    const rows = this.db
      .prepare(
        `SELECT body FROM training_jobs
         WHERE (? = '' OR model = ?) AND (? = '' OR state = ?)
           AND (? = 0 OR created_at_ms < ? OR (created_at_ms = ? AND id < ?))
         ORDER BY created_at_ms DESC, id DESC LIMIT ?`,
      )
      .all(
        filter.model ?? '',
        filter.model ?? '',
        filter.state ?? '',
        filter.state ?? '',
        after ? 1 : 0,
        after?.createdAtMs ?? 0,
        after?.createdAtMs ?? 0,
        after?.id ?? '',
        filter.limit,
      ) as Array<{ body: string }>;
    return rows.map((r) => JSON.parse(r.body) as TrainingJob);
  }

  inStates(states: readonly TrainingJobState[], limit: number): TrainingJob[] {
    if (states.length === 0) return [];
    const rows = this.db
      .prepare(`SELECT body FROM training_jobs WHERE state IN (${states.map(() => '?').join(', ')}) ORDER BY created_at_ms, id LIMIT ?`)
      .all(...states, limit) as Array<{ body: string }>;
    return rows.map((r) => JSON.parse(r.body) as TrainingJob);
  }

  insert(job: TrainingJob): void {
    this.db
      .prepare('INSERT INTO training_jobs (id, model, state, created_at_ms, updated_at_ms, body) VALUES (?, ?, ?, ?, ?, ?)')
      .run(job.id, job.spec.model, job.state, job.createdAtMs, job.updatedAtMs, JSON.stringify(job));
  }

  update(job: TrainingJob): void {
    try {
      const changes = this.db
        .prepare('UPDATE training_jobs SET state = ?, updated_at_ms = ?, body = ? WHERE id = ?')
        .run(job.state, job.updatedAtMs, JSON.stringify(job), job.id).changes;
      if (changes === 0) throw new DriftlineError('TRAINING_JOB_NOT_FOUND', `training job ${job.id} does not exist`, { details: { id: job.id } });
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') {
        throw new DriftlineError('TRAINING_STATE_INVALID', `another job of ${job.spec.model} is already leased, running or being evaluated`, { cause: err });
      }
      throw err;
    }
  }

  attemptByLease(leaseId: string): TrainingAttemptRecord | undefined {
    const row = this.db.prepare('SELECT * FROM training_attempts WHERE lease_id = ?').get(leaseId) as AttemptRow | undefined;
    return row ? toAttempt(row) : undefined;
  }

  attempts(jobId: string): TrainingAttemptRecord[] {
    return (this.db.prepare('SELECT * FROM training_attempts WHERE job_id = ? ORDER BY attempt').all(jobId) as AttemptRow[]).map(toAttempt);
  }

  saveAttempt(a: TrainingAttemptRecord): void {
    this.db
      .prepare(
        `INSERT INTO training_attempts (job_id, attempt, lease_id, worker_id, leased_at_ms, ended_at_ms, outcome, error_code)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (job_id, attempt) DO UPDATE SET lease_id = excluded.lease_id, worker_id = excluded.worker_id,
           leased_at_ms = excluded.leased_at_ms, ended_at_ms = excluded.ended_at_ms, outcome = excluded.outcome, error_code = excluded.error_code`,
      )
      .run(a.jobId, a.attempt, a.leaseId, a.workerId, a.leasedAtMs, a.endedAtMs, a.outcome, a.errorCode);
  }

  appendAudit(r: Omit<TrainingAuditRecord, 'seq'>): void {
    this.db
      .prepare(
        `INSERT INTO training_audit (job_id, at_ms, actor, client_request_id, action, from_state, to_state, attempt, reason, details)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(r.jobId, r.atMs, r.actor, r.clientRequestId, r.action, r.fromState, r.toState, r.attempt, r.reason, JSON.stringify(r.details));
  }

  audit(jobId: string): TrainingAuditRecord[] {
    return (this.db.prepare('SELECT * FROM training_audit WHERE job_id = ? ORDER BY seq').all(jobId) as AuditRow[]).map((r) => ({
      seq: r.seq,
      jobId: r.job_id,
      atMs: r.at_ms,
      actor: r.actor,
      clientRequestId: r.client_request_id,
      action: r.action,
      fromState: r.from_state,
      toState: r.to_state,
      attempt: r.attempt,
      reason: r.reason,
      details: JSON.parse(r.details) as Record<string, unknown>,
    }));
  }

  findRequest(clientRequestId: string): StoredTrainingRequest | undefined {
    const row = this.db.prepare('SELECT * FROM training_requests WHERE client_request_id = ?').get(clientRequestId) as
      { client_request_id: string; action: string; fingerprint: string; job_id: string } | undefined;
    return row ? { clientRequestId: row.client_request_id, action: row.action, fingerprint: row.fingerprint, jobId: row.job_id } : undefined;
  }

  saveRequest(request: StoredTrainingRequest, atMs: number): void {
    this.db
      .prepare('INSERT INTO training_requests (client_request_id, action, fingerprint, job_id, at_ms) VALUES (?, ?, ?, ?, ?)')
      .run(request.clientRequestId, request.action, request.fingerprint, request.jobId, atMs);
  }

  logs(jobId: string, options: { attempt?: number; afterSeq?: number; tail?: number }): TrainingLogLine[] {
    const attempt = options.attempt ?? 0;
    if (options.tail && options.tail > 0) {
      const rows = this.db
        .prepare('SELECT * FROM training_logs WHERE job_id = ? AND (? = 0 OR attempt = ?) AND seq > ? ORDER BY seq DESC LIMIT ?')
        .all(jobId, attempt, attempt, options.afterSeq ?? 0, options.tail) as LogRow[];
      return rows.reverse().map(toLog);
    }
    const rows = this.db
      .prepare('SELECT * FROM training_logs WHERE job_id = ? AND (? = 0 OR attempt = ?) AND seq > ? ORDER BY seq')
      .all(jobId, attempt, attempt, options.afterSeq ?? 0) as LogRow[];
    return rows.map(toLog);
  }

  appendLogs(jobId: string, lines: ReadonlyArray<{ attempt: number; atMs: number; text: string }>, keepPerJob: number): void {
    const insert = this.db.prepare('INSERT INTO training_logs (job_id, attempt, at_ms, text) VALUES (?, ?, ?, ?)');
    for (const line of lines) insert.run(jobId, line.attempt, line.atMs, line.text);
    // The log is a tail, not an archive: a chatty trainer cannot fill the disk.
    this.db
      .prepare('DELETE FROM training_logs WHERE job_id = ? AND seq <= (SELECT seq FROM training_logs WHERE job_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)')
      .run(jobId, jobId, keepPerJob);
  }

  worker(id: string): TrainingWorker | undefined {
    const row = this.db.prepare('SELECT body FROM training_workers WHERE id = ?').get(id) as { body: string } | undefined;
    return row ? (JSON.parse(row.body) as TrainingWorker) : undefined;
  }

  workerByName(tokenId: string, name: string): TrainingWorker | undefined {
    const row = this.db.prepare('SELECT body FROM training_workers WHERE token_id = ? AND name = ?').get(tokenId, name) as { body: string } | undefined;
    return row ? (JSON.parse(row.body) as TrainingWorker) : undefined;
  }

  saveWorker(w: TrainingWorker): void {
    this.db
      .prepare(
        `INSERT INTO training_workers (id, token_id, name, registered_at_ms, last_seen_ms, body) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, body = excluded.body`,
      )
      .run(w.id, w.tokenId, w.name, w.registeredAtMs, w.lastSeenMs, JSON.stringify(w));
  }

  candidate(id: string): StoredCandidate | undefined {
    const row = this.db.prepare('SELECT * FROM training_candidates WHERE id = ?').get(id) as CandidateRow | undefined;
    return row
      ? {
          id: row.id,
          jobId: row.job_id,
          leaseId: row.lease_id,
          attempt: row.attempt,
          sha256: row.sha256,
          sizeBytes: row.size_bytes,
          uploadedAtMs: row.uploaded_at_ms,
          metrics: JSON.parse(row.metrics) as Record<string, number>,
        }
      : undefined;
  }

  saveCandidate(c: StoredCandidate): void {
    this.db
      .prepare('INSERT INTO training_candidates (id, job_id, lease_id, attempt, sha256, size_bytes, uploaded_at_ms, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
      .run(c.id, c.jobId, c.leaseId, c.attempt, c.sha256, c.sizeBytes, c.uploadedAtMs, JSON.stringify(c.metrics));
  }
}

/** Training jobs, their attempts, audit log, log tail, workers and candidates, in SQLite. */
export class SqliteTrainingJobRepository implements TrainingJobRepository {
  private readonly connection: SqliteConnection;
  private readonly statements: TrainingStatements;

  constructor(db: Database) {
    applyMigrations(db, 'training', MIGRATIONS);
    this.connection = connectionOf(db);
    this.statements = new TrainingStatements(db);
  }

  transaction<T>(work: (tx: TrainingJobTransaction) => Promise<T>): Promise<T> {
    const s = this.statements;
    // Inside the unit of work the connection is this work's alone: statements run directly.
    const tx: TrainingJobTransaction = {
      get: async (id) => s.get(id),
      list: async (filter) => s.list(filter),
      inStates: async (states, limit) => s.inStates(states, limit),
      attemptByLease: async (leaseId) => s.attemptByLease(leaseId),
      attempts: async (jobId) => s.attempts(jobId),
      audit: async (jobId) => s.audit(jobId),
      findRequest: async (id) => s.findRequest(id),
      logs: async (jobId, options) => s.logs(jobId, options),
      worker: async (id) => s.worker(id),
      workerByName: async (tokenId, name) => s.workerByName(tokenId, name),
      candidate: async (id) => s.candidate(id),
      insert: async (job) => s.insert(job),
      update: async (job) => s.update(job),
      appendAudit: async (record) => s.appendAudit(record),
      saveRequest: async (request, atMs) => s.saveRequest(request, atMs),
      saveAttempt: async (attempt) => s.saveAttempt(attempt),
      appendLogs: async (jobId, lines, keep) => s.appendLogs(jobId, lines, keep),
      saveWorker: async (worker) => s.saveWorker(worker),
      saveCandidate: async (candidate) => s.saveCandidate(candidate),
    };
    return this.connection.unitOfWork(() => work(tx));
  }

  private read<T>(fn: (s: TrainingStatements) => T): Promise<T> {
    return this.connection.run(() => fn(this.statements));
  }

  get: TrainingJobReads['get'] = (id) => this.read((s) => s.get(id));
  list: TrainingJobReads['list'] = (filter) => this.read((s) => s.list(filter));
  inStates: TrainingJobReads['inStates'] = (states, limit) => this.read((s) => s.inStates(states, limit));
  attemptByLease: TrainingJobReads['attemptByLease'] = (leaseId) => this.read((s) => s.attemptByLease(leaseId));
  attempts: TrainingJobReads['attempts'] = (jobId) => this.read((s) => s.attempts(jobId));
  audit: TrainingJobReads['audit'] = (jobId) => this.read((s) => s.audit(jobId));
  findRequest: TrainingJobReads['findRequest'] = (id) => this.read((s) => s.findRequest(id));
  logs: TrainingJobReads['logs'] = (jobId, options) => this.read((s) => s.logs(jobId, options));
  worker: TrainingJobReads['worker'] = (id) => this.read((s) => s.worker(id));
  workerByName: TrainingJobReads['workerByName'] = (tokenId, name) => this.read((s) => s.workerByName(tokenId, name));
  candidate: TrainingJobReads['candidate'] = (id) => this.read((s) => s.candidate(id));
}
