import { activeModelsOf, desiredModelsOf } from '../../common/device-protocol/model-set.js';
import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import { assertDeviceId } from '../../common/ids.js';
import {
  DeviceStatus,
  Role,
  type AccessServiceServer,
  type CreateEnrollmentTokenResponse,
  type Device,
  type EnrollmentToken,
  type DeviceServiceServer,
  type EnrollmentServiceServer,
} from '../../common/proto/driftline/v1/fleet.js';
import type { DeviceRecord, EnrollmentTokenRecord } from '../fleet/fleet-store.js';
import { TOKEN_ROLES, type TokenRole } from '../fleet/operator-tokens.js';
import type { ApiDeps } from './ports.js';
import { unary, validate, type RpcContext } from './rpc.js';

/** The longest an enrollment token may live: it is a bearer credential for a device identity. */
const MAX_ENROLLMENT_TOKEN_TTL_MS = 30 * 86_400_000;

const FIRMWARE_PROFILE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

const createTokenRequest = z.object({ ttlSeconds: z.number().int().nonnegative() });
const labelRequest = z.object({ remove: z.array(z.string().min(1).max(63)).max(64) });
const enrollRequest = z.object({
  firmwareProfile: z.string().regex(FIRMWARE_PROFILE, 'expected a firmware profile name such as jetson-orin-nano'),
  agentVersion: z.string().max(64),
});
const createOperatorToken = z.object({
  name: z.string().trim().min(1).max(64),
  role: z.union([z.literal(Role.ROLE_VIEWER), z.literal(Role.ROLE_OPERATOR), z.literal(Role.ROLE_ADMIN), z.literal(Role.ROLE_WORKER)], {
    error: 'role must be viewer, operator, admin or worker',
  }),
});
const revokeOperatorToken = z.object({ id: z.string().min(1).max(64) });
const listEnrollmentTokens = z.object({ deviceId: z.string().max(64) });
const revokeEnrollmentToken = z.object({ id: z.string().min(1).max(64) });

export function deviceService(deps: ApiDeps, ctx: RpcContext): DeviceServiceServer {
  const { fleet, clock, config } = deps;
  const view = (device: DeviceRecord): Device => toDeviceMessage(device, clock.now(), config.onlineWindow);
  const issueToken = async (
    req: { deviceId: string; ttlSeconds: number },
    labels: Record<string, string>,
    reenroll: boolean,
    by: string | undefined,
  ): Promise<CreateEnrollmentTokenResponse> => {
    const { ttlSeconds } = validate(createTokenRequest, req);
    const ttlMs = ttlSeconds === 0 ? config.enrollmentTokenTtl : ttlSeconds * 1000;
    if (ttlMs > MAX_ENROLLMENT_TOKEN_TTL_MS) {
      throw new DriftlineError('REQUEST_INVALID', `ttl_seconds may be at most ${MAX_ENROLLMENT_TOKEN_TTL_MS / 1000}`, { details: { ttlSeconds } });
    }
    const now = clock.now();
    const grant = await fleet.createEnrollmentToken(assertDeviceId(req.deviceId), labels, now + ttlMs, now, { reenroll });
    deps.logger.info({ deviceId: grant.deviceId, token: grant.id, reenroll, expiresAtMs: grant.expiresAtMs, by }, 'enrollment token created');
    return { token: grant.token, id: grant.id, deviceId: grant.deviceId, expiresAtMs: grant.expiresAtMs, reenroll };
  };
  return {
    createEnrollmentToken: unary(ctx, 'CreateEnrollmentToken', 'operator', (req, caller) => issueToken(req, req.labels, false, caller?.id)),
    reenrollDevice: unary(ctx, 'ReenrollDevice', 'operator', (req, caller) => issueToken(req, {}, true, caller?.id)),
    listEnrollmentTokens: unary(ctx, 'ListEnrollmentTokens', 'operator', async (req) => {
      const { deviceId } = validate(listEnrollmentTokens, req);
      return { tokens: (await fleet.listEnrollmentTokens(clock.now(), { deviceId, includeInactive: req.includeInactive })).map(toTokenMessage) };
    }),
    revokeEnrollmentToken: unary(ctx, 'RevokeEnrollmentToken', 'operator', async (req, caller) => {
      const { id } = validate(revokeEnrollmentToken, req);
      const revoked = await fleet.revokeEnrollmentToken(id, clock.now());
      deps.logger.info({ token: id, deviceId: revoked.deviceId, state: revoked.state, by: caller?.id }, 'enrollment token revoked');
      return toTokenMessage(revoked);
    }),
    listDevices: unary(ctx, 'ListDevices', 'viewer', async (req) => ({
      devices: (await fleet.list(req.selector, { includeDecommissioned: req.includeDecommissioned })).map(view),
    })),
    getDevice: unary(ctx, 'GetDevice', 'viewer', async (req) => view(await fleet.get(assertDeviceId(req.deviceId)))),
    labelDevice: unary(ctx, 'LabelDevice', 'operator', async (req) => {
      const { remove } = validate(labelRequest, req);
      return view(await fleet.setLabels(assertDeviceId(req.deviceId), req.set, remove));
    }),
    decommissionDevice: unary(ctx, 'DecommissionDevice', 'operator', async (req, caller) => {
      const device = await fleet.decommission(assertDeviceId(req.deviceId));
      deps.deviceLink.disconnect(device.id);
      deps.logger.info({ deviceId: device.id, by: caller?.id }, 'device decommissioned');
      return view(device);
    }),
  };
}

export function enrollmentService(deps: ApiDeps, ctx: RpcContext): EnrollmentServiceServer {
  return {
    enroll: unary(ctx, 'Enroll', 'public', async (req) => {
      if (!req.token || req.token.length > 256) throw new DriftlineError('ENROLLMENT_TOKEN_INVALID', 'an enrollment token is required');
      const deviceId = assertDeviceId(req.deviceId);
      const { firmwareProfile, agentVersion } = validate(enrollRequest, req);
      const enrollment = await deps.fleet.enroll({ token: req.token, deviceId, firmwareProfile }, deps.clock.now());
      // The old secret is void: a session still using it (the device this replaces, or whoever took its secret) goes now.
      // Before the response, so the new secret cannot be in use yet.
      if (enrollment.reenrolled) deps.deviceLink.disconnect(deviceId);
      deps.logger.info(
        { deviceId, firmwareProfile, agentVersion, reenrolled: enrollment.reenrolled },
        enrollment.reenrolled ? 'device re-enrolled' : 'device enrolled',
      );
      return {
        deviceId,
        mqttUsername: deviceId,
        mqttPassword: enrollment.secret,
        mqttUrl: deps.advertisedMqttUrl(),
        artifactBaseUrl: deps.advertisedHttpUrl(),
        labels: enrollment.labels,
        // The device pins this root; enrollment is authenticated by the one-time token.
        rootMetadata: deps.trustRoot?.() ?? Buffer.alloc(0),
      };
    }),
  };
}

export function accessService(deps: ApiDeps, ctx: RpcContext): AccessServiceServer {
  const { tokens, clock } = deps;
  return {
    createToken: unary(ctx, 'CreateToken', 'admin', async (req, caller) => {
      const { name, role } = validate(createOperatorToken, req);
      const { token, secret } = await tokens.create(name, roleName(role), clock.now());
      deps.logger.info({ token: token.id, role: token.role, by: caller?.id }, 'operator token created');
      return { id: token.id, token: secret, role };
    }),
    listTokens: unary(ctx, 'ListTokens', 'admin', async () => ({
      tokens: (await tokens.list()).map((t) => ({ id: t.id, name: t.name, role: roleMessage(t.role), createdAtMs: t.createdAtMs, revoked: t.revoked })),
    })),
    revokeToken: unary(ctx, 'RevokeToken', 'admin', async (req, caller) => {
      const { id } = validate(revokeOperatorToken, req);
      await tokens.revoke(id, clock.now());
      deps.logger.info({ token: id, by: caller?.id }, 'operator token revoked');
      return {};
    }),
  };
}

function toTokenMessage(token: EnrollmentTokenRecord): EnrollmentToken {
  return {
    id: token.id,
    deviceId: token.deviceId,
    labels: token.labels,
    createdAtMs: token.createdAtMs,
    expiresAtMs: token.expiresAtMs,
    usedAtMs: token.usedAtMs ?? 0,
    revokedAtMs: token.revokedAtMs ?? 0,
    reenroll: token.reenroll,
    state: token.state,
  };
}

export function toDeviceMessage(device: DeviceRecord, nowMs: number, onlineWindowMs: number): Device {
  return {
    id: device.id,
    labels: device.labels,
    status: device.status === 'enrolled' ? DeviceStatus.DEVICE_STATUS_ENROLLED : DeviceStatus.DEVICE_STATUS_DECOMMISSIONED,
    enrolledAtMs: device.enrolledAtMs,
    lastSeenMs: device.lastSeenMs,
    online: device.status === 'enrolled' && device.lastSeenMs > 0 && nowMs - device.lastSeenMs <= onlineWindowMs,
    // A device from before reports only active_model: clients read the set of one here too.
    reported: device.reported ? { ...device.reported, activeModels: activeModelsOf(device.reported) } : undefined,
    desiredModel: desiredModelsOf(device.desired)[0],
    desiredModels: desiredModelsOf(device.desired),
  };
}

const ROLE_MESSAGES: Record<TokenRole, Role> = { viewer: Role.ROLE_VIEWER, operator: Role.ROLE_OPERATOR, admin: Role.ROLE_ADMIN, worker: Role.ROLE_WORKER };
const roleMessage = (role: TokenRole): Role => ROLE_MESSAGES[role];
const roleName = (role: Role): TokenRole => TOKEN_ROLES.find((r) => ROLE_MESSAGES[r] === role)!;
