import type { Database, Statement } from 'better-sqlite3';
import { DriftlineError } from '../../common/errors.js';
import { newSecret, secretMatches, sha256Hex } from '../../common/hashing.js';
import { assertDeviceId, assertLabels, matchesSelector, parseSelector } from '../../common/ids.js';
import { DesiredState, ReportedState } from '../../common/proto/driftline/v1/device_link.js';
import { applyMigrations } from '../store/sqlite/database.js';

export type DeviceStatus = 'enrolled' | 'decommissioned';
export type CredentialVerdict = 'ok' | 'unknown' | 'decommissioned' | 'bad_secret';

export interface DeviceRecord {
  id: string;
  labels: Record<string, string>;
  status: DeviceStatus;
  enrolledAtMs: number;
  lastSeenMs: number;
  reported: ReportedState | undefined;
  desired: DesiredState | undefined;
}

export interface EnrollmentTokenGrant {
  token: string;
  id: string;
  deviceId: string;
  expiresAtMs: number;
  reenroll: boolean;
}

export type EnrollmentTokenState = 'active' | 'used' | 'expired' | 'revoked';

/** What is kept of an enrollment token: never the token itself, only its hash (the id is a prefix of it). */
export interface EnrollmentTokenRecord {
  id: string;
  deviceId: string;
  labels: Record<string, string>;
  createdAtMs: number;
  expiresAtMs: number;
  usedAtMs: number | null;
  revokedAtMs: number | null;
  reenroll: boolean;
  state: EnrollmentTokenState;
}

export interface Enrollment {
  deviceId: string;
  /** The device's MQTT password; only its hash is kept, so this is the one chance to read it. */
  secret: string;
  labels: Record<string, string>;
  /** The device was enrolled already and its old secret is void now: drop sessions still using it. */
  reenrolled: boolean;
}

/** The most enrollment tokens one list returns. */
export const MAX_LISTED_ENROLLMENT_TOKENS = 1000;

/** The label every device carries, naming the firmware profile it enrolled with. */
export const PROFILE_LABEL = 'profile';

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

/** A token's public id: a prefix of its hash, so it names the token without revealing it. */
const TOKEN_ID_HEX = 16;
const tokenId = (tokenHash: string): string => `enr_${tokenHash.slice(0, TOKEN_ID_HEX)}`;

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

/**
 * Devices and their enrollment in SQLite. Synchronous on purpose: the broker asks
 * `verifyDeviceCredential` on every CONNECT and ingest records state on every message.
 */
export class FleetStore {
  private readonly selectDevice: Statement<[string], DeviceRow>;
  private readonly selectAll: Statement<[], DeviceRow>;
  private readonly updateSeen: Statement;
  private readonly updateReported: Statement;
  private readonly updateDesired: Statement;
  private readonly updateLabels: Statement;
  private readonly enrollTx: (request: EnrollInput, nowMs: number) => Enrollment;

  constructor(private readonly db: Database) {
    applyMigrations(db, 'fleet', MIGRATIONS);
    this.selectDevice = db.prepare('SELECT * FROM devices WHERE id = ?');
    this.selectAll = db.prepare('SELECT * FROM devices ORDER BY id');
    this.updateSeen = db.prepare('UPDATE devices SET last_seen_ms = max(last_seen_ms, ?) WHERE id = ?');
    this.updateReported = db.prepare('UPDATE devices SET reported = ?, last_seen_ms = max(last_seen_ms, ?) WHERE id = ?');
    this.updateDesired = db.prepare('UPDATE devices SET desired = ? WHERE id = ?');
    this.updateLabels = db.prepare('UPDATE devices SET labels = ? WHERE id = ?');
    this.enrollTx = db.transaction((request: EnrollInput, nowMs: number) => this.enrollNow(request, nowMs));
  }

  /**
   * A one-time token for a device identity. A device that is enrolled already gets one only
   * with `reenroll` (the operator asked for it explicitly), so a stray or leaked token cannot
   * take over an enrolled identity and lock the real device out.
   */
  createEnrollmentToken(deviceId: string, labels: Record<string, string>, expiresAtMs: number, nowMs: number, { reenroll = false } = {}): EnrollmentTokenGrant {
    assertDeviceId(deviceId);
    const clean = assertLabels(labels);
    const existing = this.selectDevice.get(deviceId);
    if (existing?.status === 'decommissioned') {
      throw new DriftlineError('DEVICE_DECOMMISSIONED', `device ${deviceId} is decommissioned`, { details: { deviceId } });
    }
    if (existing && !reenroll) throw alreadyEnrolled(deviceId);
    if (!existing && reenroll) throw notFound(deviceId);
    const token = newSecret('dle');
    const hash = sha256Hex(token);
    this.db
      .prepare('INSERT INTO enrollment_tokens (token_hash, device_id, labels, created_at_ms, expires_at_ms, purpose) VALUES (?, ?, ?, ?, ?, ?)')
      .run(hash, deviceId, JSON.stringify(clean), nowMs, expiresAtMs, reenroll ? 'reenroll' : 'enroll');
    return { token, id: tokenId(hash), deviceId, expiresAtMs, reenroll };
  }

  /** Enrollment tokens, newest first: every one, or only those still usable. */
  listEnrollmentTokens(nowMs: number, { deviceId = '', includeInactive = false } = {}): EnrollmentTokenRecord[] {
    if (deviceId) assertDeviceId(deviceId);
    const rows = this.db
      .prepare(
        `SELECT * FROM enrollment_tokens
         WHERE (? = '' OR device_id = ?) AND (? = 1 OR (used_at_ms IS NULL AND revoked_at_ms IS NULL AND expires_at_ms > ?))
         ORDER BY created_at_ms DESC, rowid DESC LIMIT ?`,
      )
      .all(deviceId, deviceId, includeInactive ? 1 : 0, nowMs, MAX_LISTED_ENROLLMENT_TOKENS) as TokenRow[];
    return rows.map((row) => toTokenRecord(row, nowMs));
  }

  /** Makes a token unusable; revoking a revoked or an already used token changes nothing (its state says which). */
  revokeEnrollmentToken(id: string, nowMs: number): EnrollmentTokenRecord {
    const prefix = /^enr_([0-9a-f]{16})$/.exec(id)?.[1];
    const row = prefix ? (this.db.prepare('SELECT * FROM enrollment_tokens WHERE substr(token_hash, 1, 16) = ?').get(prefix) as TokenRow | undefined) : undefined;
    if (!row) throw new DriftlineError('TOKEN_NOT_FOUND', `no enrollment token ${id}`, { details: { id } });
    if (row.used_at_ms !== null) return toTokenRecord(row, nowMs);
    this.db.prepare('UPDATE enrollment_tokens SET revoked_at_ms = coalesce(revoked_at_ms, ?) WHERE token_hash = ?').run(nowMs, row.token_hash);
    return toTokenRecord({ ...row, revoked_at_ms: row.revoked_at_ms ?? nowMs }, nowMs);
  }

  /**
   * Spends a one-time token and issues the device's secret, in one transaction so two
   * racing enrollments cannot both spend it. Only a re-enrollment token replaces the secret
   * of a device that is enrolled already; any other is refused with DEVICE_ALREADY_ENROLLED.
   */
  enroll(request: EnrollInput, nowMs: number): Enrollment {
    return this.enrollTx(request, nowMs);
  }

  private enrollNow({ token, deviceId, firmwareProfile }: EnrollInput, nowMs: number): Enrollment {
    const row = this.db.prepare('SELECT * FROM enrollment_tokens WHERE token_hash = ?').get(sha256Hex(token)) as TokenRow | undefined;
    // A token for another device reads as unknown: it must not reveal which device it is for.
    if (!row || row.device_id !== deviceId) throw new DriftlineError('ENROLLMENT_TOKEN_INVALID', 'enrollment token is not valid for this device');
    if (row.revoked_at_ms !== null) throw new DriftlineError('ENROLLMENT_TOKEN_REVOKED', 'enrollment token was revoked');
    if (row.used_at_ms !== null) throw new DriftlineError('ENROLLMENT_TOKEN_USED', 'enrollment token was already used');
    if (nowMs >= row.expires_at_ms) throw new DriftlineError('ENROLLMENT_TOKEN_EXPIRED', 'enrollment token has expired', { details: { expiresAtMs: row.expires_at_ms } });
    const existing = this.selectDevice.get(deviceId);
    if (existing?.status === 'decommissioned') throw new DriftlineError('DEVICE_DECOMMISSIONED', `device ${deviceId} is decommissioned`, { details: { deviceId } });
    if (existing && row.purpose !== 'reenroll') throw alreadyEnrolled(deviceId);

    const labels = assertLabels({
      ...(existing ? (JSON.parse(existing.labels) as Record<string, string>) : {}),
      ...(JSON.parse(row.labels) as Record<string, string>),
      ...(firmwareProfile ? { [PROFILE_LABEL]: firmwareProfile } : {}),
    });
    const secret = newSecret('dld');
    this.db.prepare('UPDATE enrollment_tokens SET used_at_ms = ? WHERE token_hash = ?').run(nowMs, sha256Hex(token));
    this.db
      .prepare(
        `INSERT INTO devices (id, labels, status, secret_hash, enrolled_at_ms) VALUES (?, ?, 'enrolled', ?, ?)
         ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, secret_hash = excluded.secret_hash, enrolled_at_ms = excluded.enrolled_at_ms`,
      )
      .run(deviceId, JSON.stringify(labels), sha256Hex(secret), nowMs);
    return { deviceId, secret, labels, reenrolled: existing !== undefined };
  }

  verifyDeviceCredential(deviceId: string, secret: string): CredentialVerdict {
    const row = this.selectDevice.get(deviceId);
    if (!row) return 'unknown';
    if (row.status === 'decommissioned') return 'decommissioned';
    return row.secret_hash !== null && secretMatches(secret, row.secret_hash) ? 'ok' : 'bad_secret';
  }

  recordSeen(deviceId: string, atMs: number): void {
    this.updateSeen.run(atMs, deviceId);
  }

  saveReported(deviceId: string, state: ReportedState, atMs: number): void {
    this.updateReported.run(Buffer.from(ReportedState.encode(state).finish()), atMs, deviceId);
  }

  setDesired(deviceId: string, desired: DesiredState): void {
    const { changes } = this.updateDesired.run(Buffer.from(DesiredState.encode(desired).finish()), deviceId);
    if (changes === 0) throw notFound(deviceId);
  }

  getDesired(deviceId: string): DesiredState | undefined {
    const row = this.selectDevice.get(deviceId);
    return row?.desired ? DesiredState.decode(row.desired) : undefined;
  }

  get(deviceId: string): DeviceRecord {
    const row = this.selectDevice.get(assertDeviceId(deviceId));
    if (!row) throw notFound(deviceId);
    return toRecord(row);
  }

  /** Devices whose labels match a selector such as "site=plant-3,profile=jetson*". */
  list(selector = '', { includeDecommissioned = false } = {}): DeviceRecord[] {
    const terms = parseSelector(selector);
    return this.selectAll
      .all()
      .filter((row) => includeDecommissioned || row.status === 'enrolled')
      .map(toRecord)
      .filter((device) => matchesSelector(device.labels, terms));
  }

  setLabels(deviceId: string, set: Record<string, string>, remove: readonly string[] = []): DeviceRecord {
    const device = this.get(deviceId);
    const labels: Record<string, string> = { ...device.labels, ...assertLabels(set) };
    for (const key of remove) delete labels[key];
    this.updateLabels.run(JSON.stringify(labels), deviceId);
    return { ...device, labels };
  }

  /** Revokes the credential for good; the row (and the device's telemetry) stays for history. */
  decommission(deviceId: string): DeviceRecord {
    const device = this.get(deviceId);
    this.db.prepare(`UPDATE devices SET status = 'decommissioned', secret_hash = NULL WHERE id = ?`).run(deviceId);
    return { ...device, status: 'decommissioned' };
  }
}

export interface EnrollInput {
  token: string;
  deviceId: string;
  firmwareProfile: string;
}

function toRecord(row: DeviceRow): DeviceRecord {
  return {
    id: row.id,
    labels: JSON.parse(row.labels) as Record<string, string>,
    status: row.status,
    enrolledAtMs: row.enrolled_at_ms,
    lastSeenMs: row.last_seen_ms,
    reported: row.reported ? ReportedState.decode(row.reported) : undefined,
    desired: row.desired ? DesiredState.decode(row.desired) : undefined,
  };
}

function toTokenRecord(row: TokenRow, nowMs: number): EnrollmentTokenRecord {
  const state: EnrollmentTokenState =
    row.used_at_ms !== null ? 'used' : row.revoked_at_ms !== null ? 'revoked' : nowMs >= row.expires_at_ms ? 'expired' : 'active';
  return {
    id: tokenId(row.token_hash),
    deviceId: row.device_id,
    labels: JSON.parse(row.labels) as Record<string, string>,
    createdAtMs: row.created_at_ms,
    expiresAtMs: row.expires_at_ms,
    usedAtMs: row.used_at_ms,
    revokedAtMs: row.revoked_at_ms,
    reenroll: row.purpose === 'reenroll',
    state,
  };
}

const alreadyEnrolled = (deviceId: string): DriftlineError =>
  new DriftlineError('DEVICE_ALREADY_ENROLLED', `device ${deviceId} is enrolled already; to give it a new identity run \`driftline devices reenroll ${deviceId}\``, {
    details: { deviceId },
  });

const notFound = (deviceId: string): DriftlineError =>
  new DriftlineError('DEVICE_NOT_FOUND', `device ${deviceId} is not enrolled`, { details: { deviceId } });
