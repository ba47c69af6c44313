import { createHash } from 'node:crypto';
import type { WavePlan } from './plan.js';

/**
 * Cohorts: every device gets a fraction in [0, 1) from sha256(rollout id, device id). Wave k
 * holds the devices whose fraction is below percent_k, topped up to the wave's minimum with
 * the next-lowest fractions. Each wave is a prefix of the same order, so waves are nested
 * (a device in wave k is in every later wave) and stable (the same ids give the same cohorts).
 */
export function cohortFraction(rolloutId: string, deviceId: string): number {
  const digest = createHash('sha256').update(rolloutId).update('\0').update(deviceId).digest();
  // 48 bits are exact in a double and plenty to order 10^6 devices.
  return digest.readUIntBE(0, 6) / 2 ** 48;
}

/** Devices in cohort order (lowest fraction first, ties by id). */
export function cohortOrder(rolloutId: string, deviceIds: readonly string[]): string[] {
  return deviceIds
    .map((id) => ({ id, f: cohortFraction(rolloutId, id) }))
    .sort((a, b) => a.f - b.f || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map((d) => d.id);
}

/** How many of the ordered devices each wave covers (non-decreasing; the last covers all when it is 100%). */
export function waveSizes(rolloutId: string, ordered: readonly string[], waves: readonly WavePlan[]): number[] {
  const fractions = ordered.map((id) => cohortFraction(rolloutId, id));
  const sizes: number[] = [];
  let previous = 0;
  for (const wave of waves) {
    const byPercent = wave.percent >= 100 ? ordered.length : fractions.filter((f) => f < wave.percent / 100).length;
    const size = Math.max(previous, byPercent, Math.min(wave.minDevices, ordered.length));
    sizes.push(size);
    previous = size;
  }
  return sizes;
}

// ---- compatibility -------------------------------------------------------------------------

/** What a model version needs of a device. Empty lists mean "any". */
export interface ModelConstraints {
  /** Firmware profile patterns; a trailing `*` is a prefix match ("jetson-*"). */
  profiles: string[];
  /** Labels the device must carry (values may end in `*`). */
  labels: Record<string, string>;
  /** From the signed manifest: one of these architectures, any of these providers, this much memory. */
  arch?: string[] | undefined;
  providers?: string[] | undefined;
  minMemoryBytes?: number | undefined;
}

/** Metadata keys a release may carry its constraints under (until signed manifests carry them). */
export const PROFILES_METADATA_KEY = 'driftline.profiles';
export const LABELS_METADATA_KEY = 'driftline.labels';

export function constraintsFromMetadata(metadata: Record<string, string>): ModelConstraints {
  const list = (text: string | undefined): string[] =>
    (text ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  const labels: Record<string, string> = {};
  for (const term of list(metadata[LABELS_METADATA_KEY])) {
    const eq = term.indexOf('=');
    if (eq > 0) labels[term.slice(0, eq)] = term.slice(eq + 1);
  }
  return { profiles: list(metadata[PROFILES_METADATA_KEY]), labels };
}

export interface DeviceFacts {
  id: string;
  labels: Record<string, string>;
  /** The profile the device last reported, else its `profile` label. */
  profile: string;
  /** What the profile says about the hardware; undefined when the profile is not a known one. */
  hardware?: { arch: string; providers: string[]; memoryBytes: number } | undefined;
}

const matches = (pattern: string, value: string): boolean => (pattern.endsWith('*') ? value.startsWith(pattern.slice(0, -1)) : value === pattern);

/** Undefined when compatible, otherwise why not. */
export function incompatibility(constraints: ModelConstraints, device: DeviceFacts): string | undefined {
  if (constraints.profiles.length > 0) {
    if (!device.profile) return 'firmware profile unknown';
    if (!constraints.profiles.some((p) => matches(p, device.profile))) return `profile ${device.profile} not in ${constraints.profiles.join(',')}`;
  }
  const needsHardware = (constraints.arch?.length ?? 0) > 0 || (constraints.providers?.length ?? 0) > 0 || (constraints.minMemoryBytes ?? 0) > 0;
  if (needsHardware) {
    const hw = device.hardware;
    if (!hw) return `firmware profile ${device.profile || '(none)'} is not a known profile, so its hardware is unknown`;
    if (constraints.arch?.length && !constraints.arch.includes(hw.arch)) return `arch ${hw.arch} not in ${constraints.arch.join(',')}`;
    if (constraints.providers?.length && !constraints.providers.some((p) => hw.providers.includes(p)))
      return `none of the providers ${constraints.providers.join(',')}`;
    if ((constraints.minMemoryBytes ?? 0) > hw.memoryBytes) return `needs ${constraints.minMemoryBytes} bytes of memory`;
  }
  for (const [key, pattern] of Object.entries(constraints.labels)) {
    const value = Object.hasOwn(device.labels, key) ? device.labels[key] : undefined;
    if (value === undefined || !matches(pattern, value)) return `label ${key}=${pattern} required`;
  }
  return undefined;
}
