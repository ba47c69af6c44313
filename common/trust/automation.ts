import { z } from 'zod';
import { DriftlineError } from '../errors.js';
import { isValidDeviceId } from '../ids.js';

/** The most devices one release may name in its audience (and so the highest maxDevices a scope may have). */
export const MAX_AUDIENCE = 10_000;

const MODEL_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

export const deviceIdSchema = z.string().refine(isValidDeviceId, 'invalid device id');

/**
 * What an automation release key may sign, as the root delegates it: manifests of these models
 * only, each naming an audience of at most maxDevices device ids, and, when `devices` is given
 * (a canary ring fixed offline), only devices from that list. A release signed by nothing but an
 * automation key is a canary: valid only on the devices it names, until a release key signs the
 * same version for the fleet. Devices enforce it (verifyRelease). Each manifest is bounded by
 * maxDevices, but a device cannot know what other canaries were signed, so only `devices`
 * bounds how many devices a stolen key can reach in total.
 */
export const automationScopeSchema = z.object({
  models: z.array(z.string().regex(MODEL_NAME, 'invalid model name')).min(1).max(256),
  maxDevices: z.number().int().min(1).max(MAX_AUDIENCE),
  devices: z.array(deviceIdSchema).min(1).max(MAX_AUDIENCE).optional(),
});
export type AutomationScope = z.output<typeof automationScopeSchema>;

/** Parses `--scope-models a,b --scope-max-devices N` (or the same from config) into a scope, REQUEST_INVALID when it is not one. */
export function parseAutomationScope(input: { models: readonly string[]; maxDevices: number; devices?: readonly string[] | undefined }): AutomationScope {
  const parsed = automationScopeSchema.safeParse({
    models: [...new Set(input.models)],
    maxDevices: input.maxDevices,
    ...(input.devices && input.devices.length > 0 ? { devices: [...new Set(input.devices)] } : {}),
  });
  if (!parsed.success) throw new DriftlineError('REQUEST_INVALID', `automation key scope is invalid: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

/** What of a manifest the scope judges. */
export interface ScopedRelease {
  name: string;
  version: number;
  audience?: readonly string[] | undefined;
}

/**
 * Refuses (RELEASE_OUT_OF_SCOPE) a release an automation key signed outside its scope: a model
 * it was not delegated, no audience (a fleet-wide release needs a release key), an audience
 * larger than the scope allows, or one naming a device outside the scope's canary ring.
 */
export function assertWithinScope(release: ScopedRelease, scope: AutomationScope, keyId: string): void {
  const what = `${release.name} v${release.version}`;
  const details = { model: release.name, version: release.version, keyId, scope };
  if (!scope.models.includes(release.name)) {
    throw new DriftlineError('RELEASE_OUT_OF_SCOPE', `${what} is signed by automation key ${keyId.slice(0, 12)}, whose scope is [${scope.models.join(', ')}]`, {
      details,
    });
  }
  const audience = release.audience ?? [];
  if (audience.length === 0) {
    throw new DriftlineError(
      'RELEASE_OUT_OF_SCOPE',
      `${what} is signed only by automation key ${keyId.slice(0, 12)} and names no audience: a fleet-wide release needs a release key (driftline models sign)`,
      { details },
    );
  }
  if (new Set(audience).size > scope.maxDevices) {
    throw new DriftlineError(
      'RELEASE_OUT_OF_SCOPE',
      `${what} names ${new Set(audience).size} devices; automation key ${keyId.slice(0, 12)} may sign for at most ${scope.maxDevices}`,
      { details: { ...details, audience: new Set(audience).size } },
    );
  }
  if (scope.devices) {
    const ring = new Set(scope.devices);
    const outside = audience.filter((id) => !ring.has(id));
    if (outside.length > 0) {
      throw new DriftlineError(
        'RELEASE_OUT_OF_SCOPE',
        `${what} names ${outside.length} device(s) outside the canary devices automation key ${keyId.slice(0, 12)} may sign for (${outside.slice(0, 5).join(', ')})`,
        { details: { ...details, outside: outside.slice(0, 100) } },
      );
    }
  }
}

/** Why a canary for `audience` falls outside `scope` (the same rules as assertWithinScope), or undefined when it is within. */
export function scopeViolation(release: ScopedRelease, scope: AutomationScope, keyId: string): DriftlineError | undefined {
  try {
    assertWithinScope(release, scope, keyId);
    return undefined;
  } catch (err) {
    if (err instanceof DriftlineError) return err;
    throw err;
  }
}

/** Refuses (RELEASE_NOT_IN_AUDIENCE) a release with an audience on a device it does not name (or on a device that does not know its id). */
export function assertInAudience(release: ScopedRelease, deviceId: string | undefined): void {
  if (!release.audience || release.audience.length === 0) return;
  if (deviceId !== undefined && release.audience.includes(deviceId)) return;
  throw new DriftlineError(
    'RELEASE_NOT_IN_AUDIENCE',
    `${release.name} v${release.version} is a canary for ${release.audience.length} device(s), not for ${deviceId ?? 'a device without an id'}`,
    { details: { model: release.name, version: release.version, audience: release.audience.length } },
  );
}
