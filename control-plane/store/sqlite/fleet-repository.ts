import type { Database, Statement } from 'better-sqlite3';
import { DesiredState, ReportedState } from '../../../common/proto/driftline/v1/device_link.js';
import { activeModelsOf } from '../../../common/device-protocol/model-set.js';
import type {
  DevicePage,
  DevicePageQuery,
  DeviceStatus,
  DeviceSummary,
  EnrollmentTokenQuery,
  FleetReads,
  FleetRepository,
  FleetTransaction,
  FleetWrites,
  StoredDevice,
  StoredEnrollmentToken,
} from '../../fleet/ports.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';

const MIGRATIONS = [
  `CREATE TABLE devices (
     id TEXT PRIMARY KEY,
     labels TEXT NOT NULL,
     status TEXT NOT NULL CHECK (status IN ('enrolled', 'decommissioned')),
     secret_hash TEXT,
     enrolled_at_ms INTEGER NOT NULL,
     last_seen_ms INTEGER NOT NULL DEFAULT 0,
     reported BLOB,
     desired BLOB
   );
   CREATE TABLE enrollment_tokens (
     token_hash TEXT PRIMARY KEY,
     device_id TEXT NOT NULL,
     labels TEXT NOT NULL,
     created_at_ms INTEGER NOT NULL,
     expires_at_ms INTEGER NOT NULL,
     used_at_ms INTEGER
   );`,
  // Tokens can be revoked, and only a token issued to re-enroll replaces an enrolled device's secret.
  `ALTER TABLE enrollment_tokens ADD COLUMN revoked_at_ms INTEGER;
   ALTER TABLE enrollment_tokens ADD COLUMN purpose TEXT NOT NULL DEFAULT 'enroll' CHECK (purpose IN ('enroll', 'reenroll'));
   CREATE INDEX enrollment_tokens_by_device ON enrollment_tokens (device_id, created_at_ms);`,
];

interface DeviceRow {
  id: string;
  labels: string;
  status: DeviceStatus;
  secret_hash: string | null;
  enrolled_at_ms: number;
  last_seen_ms: number;
  reported: Buffer | null;
  desired: Buffer | null;
}

interface TokenRow {
  token_hash: string;
  device_id: string;
  labels: string;
  created_at_ms: number;
  expires_at_ms: number;
  used_at_ms: number | null;
  revoked_at_ms: number | null;
  purpose: 'enroll' | 'reenroll';
}

/** The statements, run synchronously: by the repository through its connection's queue, directly inside a unit of work. */
class FleetStatements {
  private readonly selectDevice: Statement<[string], DeviceRow>;
  private readonly selectAll: Statement<[], DeviceRow>;
  private readonly updateSeen: Statement;
  private readonly updateReported: Statement;
  private readonly updateDesired: Statement;
  private readonly updateLabels: Statement;

  constructor(private readonly db: Database) {
    this.selectDevice = db.prepare('SELECT * FROM devices WHERE id = ?');
    this.selectAll = db.prepare('SELECT * FROM devices ORDER BY id');
    this.updateSeen = db.prepare('UPDATE devices SET last_seen_ms = max(last_seen_ms, ?) WHERE id = ?');
    this.updateReported = db.prepare('UPDATE devices SET reported = ?, last_seen_ms = max(last_seen_ms, ?) WHERE id = ?');
    this.updateDesired = db.prepare('UPDATE devices SET desired = ? WHERE id = ?');
    this.updateLabels = db.prepare('UPDATE devices SET labels = ? WHERE id = ?');
  }

  device(deviceId: string): StoredDevice | undefined {
    const row = this.selectDevice.get(deviceId);
    return row ? toDevice(row) : undefined;
  }

  devices(): StoredDevice[] {
    return this.selectAll.all().map(toDevice);
  }

  devicePage({ search, offset, limit, includeDecommissioned }: DevicePageQuery): DevicePage {
    // LIKE with its wildcards escaped: a search for "50%" or "a_b" means those characters.
    const pattern = `%${search.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    const where = `(? = 1 OR status = 'enrolled') AND (? = '' OR id LIKE ? ESCAPE '\\' OR labels LIKE ? ESCAPE '\\')`;
    const args = [includeDecommissioned ? 1 : 0, search, pattern, pattern] as const;
    const total = (this.db.prepare(`SELECT count(*) AS n FROM devices WHERE ${where}`).get(...args) as { n: number }).n;
    const rows = this.db.prepare(`SELECT * FROM devices WHERE ${where} ORDER BY id LIMIT ? OFFSET ?`).all(...args, limit, offset) as DeviceRow[];
    return { devices: rows.map(toDevice), total };
  }

  deviceSummary(onlineSinceMs: number): DeviceSummary {
    const counts = this.db
      .prepare(`SELECT count(*) AS enrolled, coalesce(sum(last_seen_ms > 0 AND last_seen_ms >= ?), 0) AS online FROM devices WHERE status = 'enrolled'`)
      .get(onlineSinceMs) as { enrolled: number; online: number };
    const byProfile: Record<string, number> = {};
    const profiles = this.db
      .prepare(`SELECT coalesce(json_extract(labels, '$.profile'), '') AS profile, count(*) AS n FROM devices WHERE status = 'enrolled' GROUP BY 1`)
      .all() as Array<{ profile: string; n: number }>;
    for (const row of profiles) byProfile[row.profile] = row.n;
    // The versions live in the reported state's protobuf: one pass over the column, no other field decoded into records.
    const byAgentVersion: Record<string, number> = {};
    const byModelVersion: Record<string, number> = {};
    const reported = this.db.prepare(`SELECT reported FROM devices WHERE status = 'enrolled'`).pluck().all() as Array<Buffer | null>;
    for (const blob of reported) {
      const state = blob ? ReportedState.decode(blob) : undefined;
      const agent = state?.agentVersion ?? '';
      byAgentVersion[agent] = (byAgentVersion[agent] ?? 0) + 1;
      for (const m of activeModelsOf(state)) {
        if (m.state !== 'serving' && m.state !== '') continue;
        const key = `${m.name} v${m.version}`;
        byModelVersion[key] = (byModelVersion[key] ?? 0) + 1;
      }
    }
    return { ...counts, byProfile, byAgentVersion, byModelVersion };
  }

  enrollmentToken(tokenHash: string): StoredEnrollmentToken | undefined {
    const row = this.db.prepare('SELECT * FROM enrollment_tokens WHERE token_hash = ?').get(tokenHash) as TokenRow | undefined;
    return row ? toToken(row) : undefined;
  }

  enrollmentTokenByHashPrefix(prefix: string): StoredEnrollmentToken | undefined {
    const row = this.db.prepare('SELECT * FROM enrollment_tokens WHERE substr(token_hash, 1, 16) = ?').get(prefix) as TokenRow | undefined;
    return row ? toToken(row) : undefined;
  }

  enrollmentTokens({ deviceId, includeInactive, nowMs, limit }: EnrollmentTokenQuery): StoredEnrollmentToken[] {
    const rows = this.db
      .prepare(
        `SELECT * FROM enrollment_tokens
         WHERE (? = '' OR device_id = ?) AND (? = 1 OR (used_at_ms IS NULL AND revoked_at_ms IS NULL AND expires_at_ms > ?))
         ORDER BY created_at_ms DESC, rowid DESC LIMIT ?`,
      )
      .all(deviceId, deviceId, includeInactive ? 1 : 0, nowMs, limit) as TokenRow[];
    return rows.map(toToken);
  }

  addEnrollmentToken(t: Omit<StoredEnrollmentToken, 'usedAtMs' | 'revokedAtMs'>): void {
    this.db
      .prepare('INSERT INTO enrollment_tokens (token_hash, device_id, labels, created_at_ms, expires_at_ms, purpose) VALUES (?, ?, ?, ?, ?, ?)')
      .run(t.tokenHash, t.deviceId, JSON.stringify(t.labels), t.createdAtMs, t.expiresAtMs, t.purpose);
  }

  markEnrollmentTokenUsed(tokenHash: string, atMs: number): void {
    this.db.prepare('UPDATE enrollment_tokens SET used_at_ms = ? WHERE token_hash = ?').run(atMs, tokenHash);
  }

  revokeEnrollmentToken(tokenHash: string, atMs: number): void {
    this.db.prepare('UPDATE enrollment_tokens SET revoked_at_ms = coalesce(revoked_at_ms, ?) WHERE token_hash = ?').run(atMs, tokenHash);
  }

  saveEnrolledDevice(d: { id: string; labels: Record<string, string>; secretHash: string; enrolledAtMs: number }): void {
    this.db
      .prepare(
        `INSERT INTO devices (id, labels, status, secret_hash, enrolled_at_ms) VALUES (?, ?, 'enrolled', ?, ?)
         ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, secret_hash = excluded.secret_hash, enrolled_at_ms = excluded.enrolled_at_ms`,
      )
      .run(d.id, JSON.stringify(d.labels), d.secretHash, d.enrolledAtMs);
  }

  recordSeen(deviceId: string, atMs: number): void {
    this.updateSeen.run(atMs, deviceId);
  }

  saveReported(deviceId: string, state: ReportedState, atMs: number): void {
    this.updateReported.run(Buffer.from(ReportedState.encode(state).finish()), atMs, deviceId);
  }

  setDesired(deviceId: string, desired: DesiredState): boolean {
    return this.updateDesired.run(Buffer.from(DesiredState.encode(desired).finish()), deviceId).changes > 0;
  }

  setLabels(deviceId: string, labels: Record<string, string>): void {
    this.updateLabels.run(JSON.stringify(labels), deviceId);
  }

  decommission(deviceId: string): void {
    this.db.prepare(`UPDATE devices SET status = 'decommissioned', secret_hash = NULL WHERE id = ?`).run(deviceId);
  }
}

type Operations = FleetReads & FleetWrites;
const OPERATIONS = [
  'device',
  'devices',
  'devicePage',
  'deviceSummary',
  'enrollmentToken',
  'enrollmentTokenByHashPrefix',
  'enrollmentTokens',
  'addEnrollmentToken',
  'markEnrollmentTokenUsed',
  'revokeEnrollmentToken',
  'saveEnrolledDevice',
  'recordSeen',
  'saveReported',
  'setDesired',
  'setLabels',
  'decommission',
] as const satisfies ReadonlyArray<keyof Operations>;

/** The statements as async operations, each run by `runOne` (through the queue, or directly inside a unit of work). */
function operationsOver(statements: FleetStatements, runOne: <T>(fn: () => T) => Promise<T>): Operations {
  const ops: Record<string, unknown> = {};
  for (const name of OPERATIONS) {
    const method = (statements[name] as (...args: unknown[]) => unknown).bind(statements);
    ops[name] = (...args: unknown[]) => runOne(() => method(...args));
  }
  return ops as unknown as Operations;
}

/** Devices and their enrollment tokens in SQLite. */
export class SqliteFleetRepository implements FleetRepository {
  private readonly connection: SqliteConnection;
  private readonly outside: Operations;
  private readonly inside: FleetTransaction;

  constructor(db: Database) {
    applyMigrations(db, 'fleet', MIGRATIONS);
    this.connection = connectionOf(db);
    const statements = new FleetStatements(db);
    this.outside = operationsOver(statements, (fn) => this.connection.run(fn));
    // Inside the unit of work the connection is this work's alone: statements run directly.
    this.inside = operationsOver(statements, async (fn) => fn());
  }

  transaction<T>(work: (tx: FleetTransaction) => Promise<T>): Promise<T> {
    return this.connection.unitOfWork(() => work(this.inside));
  }

  device(deviceId: string): Promise<StoredDevice | undefined> {
    return this.outside.device(deviceId);
  }
  devices(): Promise<StoredDevice[]> {
    return this.outside.devices();
  }
  devicePage(query: DevicePageQuery): Promise<DevicePage> {
    return this.outside.devicePage(query);
  }
  deviceSummary(onlineSinceMs: number): Promise<DeviceSummary> {
    return this.outside.deviceSummary(onlineSinceMs);
  }
  enrollmentToken(tokenHash: string): Promise<StoredEnrollmentToken | undefined> {
    return this.outside.enrollmentToken(tokenHash);
  }
  enrollmentTokenByHashPrefix(prefix: string): Promise<StoredEnrollmentToken | undefined> {
    return this.outside.enrollmentTokenByHashPrefix(prefix);
  }
  enrollmentTokens(query: EnrollmentTokenQuery): Promise<StoredEnrollmentToken[]> {
    return this.outside.enrollmentTokens(query);
  }
  addEnrollmentToken(token: Omit<StoredEnrollmentToken, 'usedAtMs' | 'revokedAtMs'>): Promise<void> {
    return this.outside.addEnrollmentToken(token);
  }
  markEnrollmentTokenUsed(tokenHash: string, atMs: number): Promise<void> {
    return this.outside.markEnrollmentTokenUsed(tokenHash, atMs);
  }
  revokeEnrollmentToken(tokenHash: string, atMs: number): Promise<void> {
    return this.outside.revokeEnrollmentToken(tokenHash, atMs);
  }
  saveEnrolledDevice(device: { id: string; labels: Record<string, string>; secretHash: string; enrolledAtMs: number }): Promise<void> {
    return this.outside.saveEnrolledDevice(device);
  }
  recordSeen(deviceId: string, atMs: number): Promise<void> {
    return this.outside.recordSeen(deviceId, atMs);
  }
  saveReported(deviceId: string, state: ReportedState, atMs: number): Promise<void> {
    return this.outside.saveReported(deviceId, state, atMs);
  }
  setDesired(deviceId: string, desired: DesiredState): Promise<boolean> {
    return this.outside.setDesired(deviceId, desired);
  }
  setLabels(deviceId: string, labels: Record<string, string>): Promise<void> {
    return this.outside.setLabels(deviceId, labels);
  }
  decommission(deviceId: string): Promise<void> {
    return this.outside.decommission(deviceId);
  }
}

function toDevice(row: DeviceRow): StoredDevice {
  return {
    id: row.id,
    labels: JSON.parse(row.labels) as Record<string, string>,
    status: row.status,
    secretHash: row.secret_hash,
    enrolledAtMs: row.enrolled_at_ms,
    lastSeenMs: row.last_seen_ms,
    reported: row.reported ? ReportedState.decode(row.reported) : undefined,
    desired: row.desired ? DesiredState.decode(row.desired) : undefined,
  };
}

function toToken(row: TokenRow): StoredEnrollmentToken {
  return {
    tokenHash: row.token_hash,
    deviceId: row.device_id,
    labels: JSON.parse(row.labels) as Record<string, string>,
    createdAtMs: row.created_at_ms,
    expiresAtMs: row.expires_at_ms,
    usedAtMs: row.used_at_ms,
    revokedAtMs: row.revoked_at_ms,
    purpose: row.purpose,
  };
}
