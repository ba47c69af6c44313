import { DriftlineError } from '../../common/errors.js';
import { newSecret, sha256Hex } from '../../common/hashing.js';
import { assertDeviceId, assertLabels, matchesSelector, parseSelector } from '../../common/ids.js';
import type { DesiredState, ReportedState } from '../../common/proto/driftline/v1/device_link.js';
import { CredentialCache, type CredentialVerdict } from './credential-cache.js';
import type { DeviceStatus, DeviceSummary, FleetRepository, StoredDevice, StoredEnrollmentToken } from './ports.js';

export type { CredentialVerdict } from './credential-cache.js';
export type { DeviceStatus, DeviceSummary } from './ports.js';

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

/** A token's public id: a prefix of its hash, so it names the token without revealing it. */
const TOKEN_ID_HEX = 16;
const tokenId = (tokenHash: string): string => `enr_${tokenHash.slice(0, TOKEN_ID_HEX)}`;

/**
 * Devices and their enrollment: who may enroll with which token, device secrets (kept only
 * as hashes), labels, reported and desired state. Storage is the FleetRepository port; device
 * credentials are checked through an in-memory cache (the broker asks on every CONNECT) that
 * enrollment and decommissioning invalidate.
 */
export class FleetStore {
  private readonly credentials: CredentialCache;

  constructor(private readonly repository: FleetRepository) {
    this.credentials = new CredentialCache((deviceId) => repository.device(deviceId));
  }

  /**
   * A one-time token for a device identity. A device that is enrolled already gets one only
   * with `reenroll` (the operator asked for it explicitly), so a stray or leaked token cannot
   * take over an enrolled identity and lock the real device out.
   */
  async createEnrollmentToken(
    deviceId: string,
    labels: Record<string, string>,
    expiresAtMs: number,
    nowMs: number,
    { reenroll = false } = {},
  ): Promise<EnrollmentTokenGrant> {
    assertDeviceId(deviceId);
    const clean = assertLabels(labels);
    const existing = await this.repository.device(deviceId);
    if (existing?.status === 'decommissioned') {
      throw new DriftlineError('DEVICE_DECOMMISSIONED', `device ${deviceId} is decommissioned`, { details: { deviceId } });
    }
    if (existing && !reenroll) throw alreadyEnrolled(deviceId);
    if (!existing && reenroll) throw notFound(deviceId);
    const token = newSecret('dle');
    const hash = sha256Hex(token);
    await this.repository.addEnrollmentToken({
      tokenHash: hash,
      deviceId,
      labels: clean,
      createdAtMs: nowMs,
      expiresAtMs,
      purpose: reenroll ? 'reenroll' : 'enroll',
    });
    return { token, id: tokenId(hash), deviceId, expiresAtMs, reenroll };
  }

  /** Enrollment tokens, newest first: every one, or only those still usable. */
  async listEnrollmentTokens(nowMs: number, { deviceId = '', includeInactive = false } = {}): Promise<EnrollmentTokenRecord[]> {
    if (deviceId) assertDeviceId(deviceId);
    const tokens = await this.repository.enrollmentTokens({ deviceId, includeInactive, nowMs, limit: MAX_LISTED_ENROLLMENT_TOKENS });
    return tokens.map((t) => toTokenRecord(t, nowMs));
  }

  /** Makes a token unusable; revoking a revoked or an already used token changes nothing (its state says which). */
  async revokeEnrollmentToken(id: string, nowMs: number): Promise<EnrollmentTokenRecord> {
    const prefix = /^enr_([0-9a-f]{16})$/.exec(id)?.[1];
    const token = prefix ? await this.repository.enrollmentTokenByHashPrefix(prefix) : undefined;
    if (!token) throw new DriftlineError('TOKEN_NOT_FOUND', `no enrollment token ${id}`, { details: { id } });
    if (token.usedAtMs !== null) return toTokenRecord(token, nowMs);
    await this.repository.revokeEnrollmentToken(token.tokenHash, nowMs);
    return toTokenRecord({ ...token, revokedAtMs: token.revokedAtMs ?? nowMs }, nowMs);
  }

  /**
   * Spends a one-time token and issues the device's secret, in one unit of work so two
   * racing enrollments cannot both spend it. Only a re-enrollment token replaces the secret
   * of a device that is enrolled already; any other is refused with DEVICE_ALREADY_ENROLLED.
   */
  async enroll({ token, deviceId, firmwareProfile }: EnrollInput, nowMs: number): Promise<Enrollment> {
    const enrollment = await this.repository.transaction(async (tx) => {
      const row = await tx.enrollmentToken(sha256Hex(token));
      // A token for another device reads as unknown: it must not reveal which device it is for.
      if (!row || row.deviceId !== deviceId) throw new DriftlineError('ENROLLMENT_TOKEN_INVALID', 'enrollment token is not valid for this device');
      if (row.revokedAtMs !== null) throw new DriftlineError('ENROLLMENT_TOKEN_REVOKED', 'enrollment token was revoked');
      if (row.usedAtMs !== null) throw new DriftlineError('ENROLLMENT_TOKEN_USED', 'enrollment token was already used');
      if (nowMs >= row.expiresAtMs)
        throw new DriftlineError('ENROLLMENT_TOKEN_EXPIRED', 'enrollment token has expired', { details: { expiresAtMs: row.expiresAtMs } });
      const existing = await tx.device(deviceId);
      if (existing?.status === 'decommissioned')
        throw new DriftlineError('DEVICE_DECOMMISSIONED', `device ${deviceId} is decommissioned`, { details: { deviceId } });
      if (existing && row.purpose !== 'reenroll') throw alreadyEnrolled(deviceId);

      const labels = assertLabels({
        ...(existing ? existing.labels : {}),
        ...row.labels,
        ...(firmwareProfile ? { [PROFILE_LABEL]: firmwareProfile } : {}),
      });
      const secret = newSecret('dld');
      await tx.markEnrollmentTokenUsed(row.tokenHash, nowMs);
      await tx.saveEnrolledDevice({ id: deviceId, labels, secretHash: sha256Hex(secret), enrolledAtMs: nowMs });
      return { deviceId, secret, labels, reenrolled: existing !== undefined };
    });
    // A re-enrollment rotates the credential: the old secret must stop working now.
    this.credentials.invalidate(deviceId);
    return enrollment;
  }

  /** Synchronous when the credential is cached (the broker's CONNECT path), from the store otherwise. */
  verifyDeviceCredential(deviceId: string, secret: string): CredentialVerdict | Promise<CredentialVerdict> {
    return this.credentials.verify(deviceId, secret);
  }

  recordSeen(deviceId: string, atMs: number): Promise<void> {
    return this.repository.recordSeen(deviceId, atMs);
  }

  saveReported(deviceId: string, state: ReportedState, atMs: number): Promise<void> {
    return this.repository.saveReported(deviceId, state, atMs);
  }

  async setDesired(deviceId: string, desired: DesiredState): Promise<void> {
    if (!(await this.repository.setDesired(deviceId, desired))) throw notFound(deviceId);
  }

  /**
   * Gives each device the next revision of its desired state, built by `next` from that
   * revision and the device's previous desired state (read in the same unit of work), in one
   * unit of work: concurrent deploys cannot hand a device the same revision twice nor lose
   * each other's models, and a device that does not exist (DEVICE_NOT_FOUND) leaves every
   * desired state as it was. When `next` answers undefined the device keeps its desired state
   * (and its revision) and is not in the result.
   */
  advanceDesired(
    deviceIds: readonly string[],
    next: (deviceId: string, revision: number, previous: DesiredState | undefined) => DesiredState | undefined,
  ): Promise<Array<[string, DesiredState]>> {
    return this.repository.transaction(async (tx) => {
      const written: Array<[string, DesiredState]> = [];
      for (const deviceId of deviceIds) {
        const device = await tx.device(deviceId);
        if (!device) throw notFound(deviceId);
        const desired = next(deviceId, (device.desired?.revision ?? 0) + 1, device.desired);
        if (!desired) continue;
        await tx.setDesired(deviceId, desired);
        written.push([deviceId, desired]);
      }
      return written;
    });
  }

  async getDesired(deviceId: string): Promise<DesiredState | undefined> {
    return (await this.repository.device(deviceId))?.desired;
  }

  async get(deviceId: string): Promise<DeviceRecord> {
    const device = await this.repository.device(assertDeviceId(deviceId));
    if (!device) throw notFound(deviceId);
    return toRecord(device);
  }

  /** Devices whose labels match a selector such as "site=plant-3,profile=jetson*". */
  async list(selector = '', { includeDecommissioned = false } = {}): Promise<DeviceRecord[]> {
    const terms = parseSelector(selector);
    return (await this.repository.devices())
      .filter((device) => includeDecommissioned || device.status === 'enrolled')
      .map(toRecord)
      .filter((device) => matchesSelector(device.labels, terms));
  }

  /** The most devices one page holds: a page is rendered whole. */
  static readonly MAX_PAGE = 500;

  /** One page of devices by id, searched in the store (ids and labels), with the number that match. */
  async page(query: {
    search?: string;
    offset?: number;
    limit?: number;
    includeDecommissioned?: boolean;
  }): Promise<{ devices: DeviceRecord[]; total: number }> {
    const search = (query.search ?? '').trim();
    if (search.length > 128) throw new DriftlineError('REQUEST_INVALID', 'a device search is at most 128 characters', { details: { length: search.length } });
    const offset = query.offset ?? 0;
    const limit = query.limit ?? 50;
    if (!Number.isSafeInteger(offset) || offset < 0) throw new DriftlineError('REQUEST_INVALID', 'a page offset is a whole number of at least 0');
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > FleetStore.MAX_PAGE)
      throw new DriftlineError('REQUEST_INVALID', `a page holds 1 to ${FleetStore.MAX_PAGE} devices`, { details: { limit } });
    const page = await this.repository.devicePage({ search, offset, limit, includeDecommissioned: query.includeDecommissioned ?? false });
    return { devices: page.devices.map(toRecord), total: page.total };
  }

  /** Online and offline counts, and counts by profile, agent version and model version, over the enrolled fleet. */
  summary(onlineSinceMs: number): Promise<DeviceSummary> {
    return this.repository.deviceSummary(onlineSinceMs);
  }

  async setLabels(deviceId: string, set: Record<string, string>, remove: readonly string[] = []): Promise<DeviceRecord> {
    const device = await this.get(deviceId);
    const labels: Record<string, string> = { ...device.labels, ...assertLabels(set) };
    for (const key of remove) delete labels[key];
    await this.repository.setLabels(deviceId, labels);
    return { ...device, labels };
  }

  /** Revokes the credential for good; the row (and the device's telemetry) stays for history. */
  async decommission(deviceId: string): Promise<DeviceRecord> {
    const device = await this.get(deviceId);
    await this.repository.decommission(deviceId);
    this.credentials.invalidate(deviceId);
    return { ...device, status: 'decommissioned' };
  }
}

export interface EnrollInput {
  token: string;
  deviceId: string;
  firmwareProfile: string;
}

function toRecord(device: StoredDevice): DeviceRecord {
  return {
    id: device.id,
    labels: device.labels,
    status: device.status,
    enrolledAtMs: device.enrolledAtMs,
    lastSeenMs: device.lastSeenMs,
    reported: device.reported,
    desired: device.desired,
  };
}

function toTokenRecord(token: StoredEnrollmentToken, nowMs: number): EnrollmentTokenRecord {
  const state: EnrollmentTokenState =
    token.usedAtMs !== null ? 'used' : token.revokedAtMs !== null ? 'revoked' : nowMs >= token.expiresAtMs ? 'expired' : 'active';
  return {
    id: tokenId(token.tokenHash),
    deviceId: token.deviceId,
    labels: token.labels,
    createdAtMs: token.createdAtMs,
    expiresAtMs: token.expiresAtMs,
    usedAtMs: token.usedAtMs,
    revokedAtMs: token.revokedAtMs,
    reenroll: token.purpose === 'reenroll',
    state,
  };
}

const alreadyEnrolled = (deviceId: string): DriftlineError =>
  new DriftlineError(
    'DEVICE_ALREADY_ENROLLED',
    `device ${deviceId} is enrolled already; to give it a new identity run \`driftline devices reenroll ${deviceId}\``,
    {
      details: { deviceId },
    },
  );

const notFound = (deviceId: string): DriftlineError => new DriftlineError('DEVICE_NOT_FOUND', `device ${deviceId} is not enrolled`, { details: { deviceId } });
