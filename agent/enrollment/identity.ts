import { mkdirSync, readFileSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { dirname } from 'node:path';
import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import { isValidDeviceId } from '../../common/ids.js';
import { agentPaths } from '../paths.js';

/** What enrollment gives a device; kept in the data folder, readable only by the agent's user. */
export const deviceIdentitySchema = z
  .object({
    deviceId: z.string().refine(isValidDeviceId, 'invalid device id'),
    mqttUsername: z.string().min(1),
    mqttPassword: z.string().min(1),
    mqttUrl: z.string().regex(/^mqtts?:\/\//),
    artifactBaseUrl: z.string().url(),
    enrolledAtMs: z.number().int(),
  })
  .strict();

export type DeviceIdentity = z.infer<typeof deviceIdentitySchema>;

export const identityFile = (dataDir: string): string => agentPaths(dataDir).identity;

export function readIdentity(dataDir: string): DeviceIdentity | undefined {
  let text: string;
  try {
    text = readFileSync(identityFile(dataDir), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new DriftlineError('CONFIG_INVALID', `cannot read ${identityFile(dataDir)}`, { cause: err });
  }
  const parsed = deviceIdentitySchema.safeParse(safeJson(text));
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
