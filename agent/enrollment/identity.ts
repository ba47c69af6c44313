import { mkdirSync, readFileSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { dirname } from 'node:path';
import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import { isValidDeviceId } from '../../common/ids.js';
import { agentPaths } from '../paths.js';

/**
 * How the device proves who it is to its uplink, whatever carries it: an MQTT broker's
 * per-device password (what enrollment hands out today), an Azure IoT Hub shared access key,
 * or an X.509 client certificate.
 */
export const deviceCredentialSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('mqtt-password'), username: z.string().min(1), password: z.string().min(1) }).strict(),
  z.object({ kind: z.literal('sas-key'), key: z.string().min(1) }).strict(),
  z.object({ kind: z.literal('x509'), certFile: z.string().min(1), keyFile: z.string().min(1) }).strict(),
]);

export type DeviceCredential = z.infer<typeof deviceCredentialSchema>;

/** What enrollment gives a device; kept in the data folder, readable only by the agent's user. */
export const deviceIdentitySchema = z
  .object({
    deviceId: z.string().refine(isValidDeviceId, 'invalid device id'),
    credential: deviceCredentialSchema,
    /** Where the uplink connects (the broker URL handed out at enrollment). */
    uplinkUrl: z.string().regex(/^mqtts?:\/\//),
    artifactBaseUrl: z.string().url(),
    enrolledAtMs: z.number().int(),
  })
  .strict();

export type DeviceIdentity = z.infer<typeof deviceIdentitySchema>;

/** The identity file agents wrote before the credential was a tagged union; still read, rewritten on the next enrollment. */
const mqttIdentityFileSchema = z
  .object({
    deviceId: z.string().refine(isValidDeviceId, 'invalid device id'),
    mqttUsername: z.string().min(1),
    mqttPassword: z.string().min(1),
    mqttUrl: z.string().regex(/^mqtts?:\/\//),
    artifactBaseUrl: z.string().url(),
    enrolledAtMs: z.number().int(),
  })
  .strict()
  .transform(({ deviceId, mqttUsername, mqttPassword, mqttUrl, artifactBaseUrl, enrolledAtMs }): DeviceIdentity => ({
    deviceId,
    credential: { kind: 'mqtt-password', username: mqttUsername, password: mqttPassword },
    uplinkUrl: mqttUrl,
    artifactBaseUrl,
    enrolledAtMs,
  }));

const identityFileSchema = z.union([deviceIdentitySchema, mqttIdentityFileSchema]);

/**
 * The user name and secret the artifact server takes (HTTP basic auth), which is the device's
 * MQTT credential; a device with another kind of credential has none yet.
 */
export function artifactCredential(identity: DeviceIdentity): { username: string; password: string } {
  const { credential } = identity;
  if (credential.kind !== 'mqtt-password') {
    throw new DriftlineError('CONFIG_INVALID', `artifact downloads need an MQTT password credential; this device has a ${credential.kind} credential`);
  }
  return { username: credential.username, password: credential.password };
}

export const identityFile = (dataDir: string): string => agentPaths(dataDir).identity;

export function readIdentity(dataDir: string): DeviceIdentity | undefined {
  let text: string;
  try {
    text = readFileSync(identityFile(dataDir), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new DriftlineError('CONFIG_INVALID', `cannot read ${identityFile(dataDir)}`, { cause: err });
  }
  const parsed = identityFileSchema.safeParse(safeJson(text));
  if (!parsed.success) {
    throw new DriftlineError('CONFIG_INVALID', `${identityFile(dataDir)} is damaged; remove it and enroll again with a new token`);
  }
  return parsed.data;
}

/** Written to a temporary file, fsynced and renamed, so a crash never leaves half an identity. */
export function writeIdentity(dataDir: string, identity: DeviceIdentity): void {
  const file = identityFile(dataDir);
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, JSON.stringify(identity, null, 2), { mode: 0o600 });
  const fd = openSync(tmp, 'r');
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, file);
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
