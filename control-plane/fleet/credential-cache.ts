import { secretMatches } from '../../common/hashing.js';
import type { DeviceStatus } from './ports.js';

export type CredentialVerdict = 'ok' | 'unknown' | 'decommissioned' | 'bad_secret';

interface Credential {
  status: DeviceStatus;
  secretHash: string | null;
}

/** Devices whose credentials are kept; past it the oldest entries go (a fleet larger than this reads from the store more). */
const DEFAULT_MAX_ENTRIES = 100_000;

/**
 * The broker's hot path: every MQTT CONNECT (and every artifact download) checks a device's
 * credential. The store behind it is async and may be remote, so known credentials (status and
 * secret hash, never a secret) are kept in memory and a check that hits answers synchronously.
 * Whatever changes a credential (enrollment, re-enrollment, decommissioning) invalidates its
 * entry once the change is committed; a load that was in flight across the invalidation (it
 * may have read the old row) is not kept, so a decommissioned device can never be let in
 * from a stale entry. Unknown device ids are not
 * kept, so a flood of made-up ids cannot fill the cache. Invalidation is per process: a store
 * shared by several control planes needs them to tell each other (the scale-out issue).
 */
export class CredentialCache {
  private readonly entries = new Map<string, Credential>();
  /** Bumped on every invalidation of a device, so a load that started before it is discarded. */
  private readonly generations = new Map<string, number>();

  constructor(
    private readonly load: (deviceId: string) => Promise<Credential | undefined>,
    private readonly maxEntries = DEFAULT_MAX_ENTRIES,
  ) {}

  /** Answers from memory when it can (synchronously), from the store otherwise. */
  verify(deviceId: string, secret: string): CredentialVerdict | Promise<CredentialVerdict> {
    const cached = this.entries.get(deviceId);
    if (cached) return verdictOf(cached, secret);
    const generation = this.generations.get(deviceId) ?? 0;
    return this.load(deviceId).then((credential) => {
      if (!credential) return 'unknown';
      if ((this.generations.get(deviceId) ?? 0) === generation) this.remember(deviceId, credential);
      return verdictOf(credential, secret);
    });
  }

  /** Forgets the device's credential: call once a change to it is committed. */
  invalidate(deviceId: string): void {
    this.entries.delete(deviceId);
    this.generations.set(deviceId, (this.generations.get(deviceId) ?? 0) + 1);
  }

  /** How many credentials are kept (for tests). */
  get size(): number {
    return this.entries.size;
  }

  private remember(deviceId: string, credential: Credential): void {
    if (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    this.entries.set(deviceId, { status: credential.status, secretHash: credential.secretHash });
  }
}

function verdictOf(credential: Credential, secret: string): CredentialVerdict {
  if (credential.status === 'decommissioned') return 'decommissioned';
  return credential.secretHash !== null && secretMatches(secret, credential.secretHash) ? 'ok' : 'bad_secret';
}
