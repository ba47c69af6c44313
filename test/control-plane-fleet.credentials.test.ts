import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { CredentialCache } from '../control-plane/fleet/credential-cache.js';
import { FleetStore } from '../control-plane/fleet/fleet-store.js';
import type { StoredDevice } from '../control-plane/fleet/ports.js';
import { openDatabase, type Database } from '../control-plane/store/sqlite/database.js';
import { SqliteFleetRepository } from '../control-plane/store/sqlite/fleet-repository.js';
import { sha256Hex } from '../common/hashing.js';

describe('device credentials in front of the fleet store', () => {
  let db: Database;
  let fleet: FleetStore;
  const clock = new ManualClock();

  const enroll = async (deviceId: string, reenroll = false): Promise<string> => {
    const { token } = await fleet.createEnrollmentToken(deviceId, {}, clock.now() + 60_000, clock.now(), { reenroll });
    return (await fleet.enroll({ token, deviceId, firmwareProfile: 'generic-x86_64-cpu' }, clock.now())).secret;
  };

  beforeEach(() => {
    db = openDatabase(':memory:');
    fleet = new FleetStore(new SqliteFleetRepository(db));
  });
  afterEach(() => db.close());

  it('fleet - a checked credential is answered from memory on the next CONNECT, without waiting on the store', async () => {
    const secret = await enroll('edge-1');
    expect(await fleet.verifyDeviceCredential('edge-1', secret)).toBe('ok');
    // Synchronous: a plain verdict, not a promise.
    expect(fleet.verifyDeviceCredential('edge-1', secret)).toBe('ok');
    expect(fleet.verifyDeviceCredential('edge-1', 'dld_wrong')).toBe('bad_secret');
  });

  it('fleet - decommissioning a device refuses its cached credential at once', async () => {
    const secret = await enroll('edge-1');
    expect(await fleet.verifyDeviceCredential('edge-1', secret)).toBe('ok');
    await fleet.decommission('edge-1');
    expect(await fleet.verifyDeviceCredential('edge-1', secret)).toBe('decommissioned');
  });

  it('fleet - re-enrolling a device voids its cached old secret at once and accepts the new one', async () => {
    const first = await enroll('edge-1');
    expect(await fleet.verifyDeviceCredential('edge-1', first)).toBe('ok');
    const second = await enroll('edge-1', true);
    expect(await fleet.verifyDeviceCredential('edge-1', first)).toBe('bad_secret');
    expect(await fleet.verifyDeviceCredential('edge-1', second)).toBe('ok');
  });

  it('fleet - an unknown device id is not kept, so made-up ids cannot fill the cache', async () => {
    expect(await fleet.verifyDeviceCredential('nobody', 'x')).toBe('unknown');
    const secret = await enroll('nobody');
    expect(await fleet.verifyDeviceCredential('nobody', secret)).toBe('ok');
  });
});

describe('credential cache', () => {
  const device = (status: StoredDevice['status'], secret: string): { status: StoredDevice['status']; secretHash: string | null } => ({
    status,
    secretHash: status === 'enrolled' ? sha256Hex(secret) : null,
  });

  it('fleet - a load that was in flight when the credential changed is answered but not kept', async () => {
    let row = device('enrolled', 's1');
    let release: () => void = () => undefined;
    const cache = new CredentialCache(
      (_id) =>
        new Promise((resolve) => {
          const read = row;
          release = () => resolve(read);
        }),
    );
    const inFlight = cache.verify('edge-1', 's1');
    // The device is decommissioned while the old row is still on its way back.
    row = device('decommissioned', '');
    cache.invalidate('edge-1');
    release();
    expect(await inFlight).toBe('ok');
    expect(cache.size).toBe(0);
    const next = cache.verify('edge-1', 's1');
    release();
    expect(await next).toBe('decommissioned');
  });

  it('fleet - keeps at most its bound of credentials, dropping the oldest', async () => {
    const cache = new CredentialCache(async () => device('enrolled', 's'), 2);
    for (const id of ['a', 'b', 'c']) expect(await cache.verify(id, 's')).toBe('ok');
    expect(cache.size).toBe(2);
    expect(cache.verify('c', 's')).toBe('ok');
    expect(cache.verify('a', 's')).toBeInstanceOf(Promise);
  });
});
