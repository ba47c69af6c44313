import { describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { DesiredModel, ReportedState, type DesiredState } from '../common/proto/driftline/v1/device_link.js';
import type { ModelVersion } from '../common/proto/driftline/v1/models.js';
import { DesiredStates } from '../control-plane/fleet/desired-states.js';
import { SqliteFleetRepository } from '../control-plane/store/sqlite/fleet-repository.js';
import { FleetStore } from '../control-plane/fleet/fleet-store.js';
import { driftSourceFrom } from '../control-plane/rollout/drift-adapter.js';
import { DesiredStatePublisher, FleetStoreView, type SignedReleases } from '../control-plane/rollout/fleet-adapters.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';

const version = (v: number): ModelVersion => ({
  name: 'vibration',
  version: v,
  sha256: `${v}`.repeat(64).slice(0, 64),
  sizeBytes: 100 * v,
  createdAtMs: 0,
  opset: 17,
  inputs: [],
  outputs: [],
  description: '',
  metadata: {},
  amendsVersion: 0,
});

async function setup(releases?: SignedReleases) {
  const db = openDatabase(':memory:');
  const fleet = new FleetStore(new SqliteFleetRepository(db));
  for (const id of ['a', 'b', 'c']) {
    const { token } = await fleet.createEnrollmentToken(id, { site: 'lab' }, 10_000, 0);
    await fleet.enroll({ token, deviceId: id, firmwareProfile: 'jetson-orin-nano-jp6' }, 1);
  }
  const published: Array<[string, DesiredState]> = [];
  const publisher = new DesiredStatePublisher({
    fleet,
    registry: { resolve: async (_n, v) => version(v) },
    releases,
    desiredStates: new DesiredStates({
      fleet,
      releases,
      link: { sendDesired: async (id, desired) => void published.push([id, desired]) },
      logger: silentLogger(),
    }),
    rollbackTtlMs: 3_600_000,
    logger: silentLogger(),
  });
  return { db, fleet, publisher, published };
}

describe('rollout release publisher', () => {
  it('rollout - sends each device the next desired revision and stores it first', async () => {
    const { fleet, publisher, published, db } = await setup();
    await publisher.deploy('vibration', 2, ['a', 'b']);
    await publisher.deploy('vibration', 3, ['a']);
    expect(published.map(([id, d]) => [id, d.revision, d.model?.version])).toEqual([
      ['a', 1, 2],
      ['b', 1, 2],
      ['a', 2, 3],
    ]);
    expect((await fleet.getDesired('a'))?.model?.version).toBe(3);
    expect(await fleet.getDesired('c')).toBeUndefined();
    db.close();
  });

  it('rollout - signs a rollback directive for exactly the devices it sends back, with the signed release of the old version', async () => {
    const directives: unknown[] = [];
    const releases: SignedReleases = {
      desiredModel: async (m) => ({
        model: DesiredModel.fromPartial({ name: m.name, version: m.version, sha256: m.sha256, envelope: Buffer.from(`env-${m.version}`) }),
        rootChain: [Buffer.from('root-1')],
      }),
      rollbackDirective: async (input) => {
        directives.push(input);
        return Buffer.from(`rollback-${input.toVersion}-${input.deviceIds.join('+')}`);
      },
    };
    const { publisher, published, db } = await setup(releases);
    await publisher.rollback(
      'vibration',
      [
        { deviceId: 'a', toVersion: 1 },
        { deviceId: 'b', toVersion: 1 },
      ],
      'p95 latency x2.5',
      'ro_1',
    );
    expect(directives).toEqual([{ model: 'vibration', toVersion: 1, deviceIds: ['a', 'b'], reason: 'p95 latency x2.5', ttlMs: 3_600_000, id: 'ro_1-v1' }]);
    for (const [, desired] of published) {
      expect(Buffer.from(desired.rollback).toString()).toBe('rollback-1-a+b');
      expect(Buffer.from(desired.model!.envelope).toString()).toBe('env-1');
      expect(desired.rootChain.map((b) => Buffer.from(b).toString())).toEqual(['root-1']);
    }
    db.close();
  });

  it('rollout - counts an install as failed only when the device reports an error for the version it was sent', async () => {
    const { fleet, publisher, db } = await setup();
    await publisher.deploy('vibration', 2, ['a', 'b', 'c']);
    const report = (id: string, active: number, lastErrorCode = '') =>
      fleet.saveReported(
        id,
        ReportedState.fromPartial({
          firmwareProfile: 'jetson-orin-nano-jp6',
          activeModel: { name: 'vibration', version: active, sha256: '', provider: 'cpu' },
          boot: 1,
          lastErrorCode,
        }),
        5,
      );
    await report('a', 2);
    await report('b', 1, 'RELEASE_SIGNATURE_INVALID');
    await report('c', 1);
    expect(await new FleetStoreView(fleet).installStatus('vibration', 2, ['a', 'b', 'c'])).toEqual({ attempted: 3, installed: 1, failed: 1, pending: 1 });
    db.close();
  });

  it('rollout - reads the worst drift status of a version from the drift rollups, and no data as not measured', async () => {
    const rollup = (status: string) => ({ status }) as never;
    expect(await driftSourceFrom({ status: async () => [rollup('ok'), rollup('warn')] }).status('m', 2, 0)).toBe('warning');
    expect(await driftSourceFrom({ status: async () => [rollup('alert'), rollup('ok')] }).status('m', 2, 0)).toBe('drift');
    expect(await driftSourceFrom({ status: async () => [rollup('no_data'), rollup('no_reference')] }).status('m', 2, 0)).toBeUndefined();
  });
});
