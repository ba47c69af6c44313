/**
 * What every storage adapter must do, whatever database it speaks: describe-blocks
 * parameterized by a factory that opens a fresh, empty store. test/store.sqlite.contract.test.ts
 * runs them against SQLite; a PostgreSQL adapter runs the same blocks against its own factory.
 */
import { describe, expect, it } from 'vitest';
import { type TelemetryRecord } from '../../common/proto/driftline/v1/device_link.js';
import type { DriftEventStore } from '../../control-plane/drift/ports.js';
import type { FleetRepository, OperatorTokenRepository } from '../../control-plane/fleet/ports.js';
import type { ModelVersionRepository, ReleaseRepository, StoredModelVersion, StoredRelease } from '../../control-plane/registry/ports.js';
import { parsePlan, targetGroup, wavesFrom } from '../../control-plane/rollout/plan.js';
import type { RolloutRepository } from '../../control-plane/rollout/ports.js';
import { createRollout, type Rollout } from '../../control-plane/rollout/state-machine.js';
import type { TelemetryRepository } from '../../control-plane/telemetry/ports.js';
import type { PrunableStore } from '../../control-plane/telemetry/retention-pruner.js';
import { inferenceRecord } from './telemetry-records.js';

/** One open store: its repositories over one connection (or pool), and how to close it. */
export interface StoreUnderTest {
  rollouts: RolloutRepository;
  fleet: FleetRepository;
  operatorTokens: OperatorTokenRepository;
  telemetry: TelemetryRepository & PrunableStore;
  driftEvents: DriftEventStore;
  modelVersions: ModelVersionRepository;
  releases: ReleaseRepository;
  close(): Promise<void> | void;
}

export type StoreFactory = () => Promise<StoreUnderTest> | StoreUnderTest;

const rolloutOf = (id: string, model = 'vibration', target = 'site=plant-3'): Rollout =>
  createRollout({
    id,
    plan: parsePlan({ model, version: 2, target, waves: wavesFrom([100], 60_000, 1), gates: [] }),
    devices: [{ id: 'd-1', labels: { site: 'plant-3' }, profile: 'generic-x86_64-cpu', activeVersion: 1 }],
    constraints: { profiles: [], labels: {} },
    nowMs: 1_000,
  }).rollout;

const inference = (seq: number): TelemetryRecord => inferenceRecord({ seq });

const modelVersion = (name: string, version: number, extra: Partial<StoredModelVersion> = {}): StoredModelVersion => ({
  name,
  version,
  sha256: `${version}`.repeat(64).slice(0, 64),
  sizeBytes: 1_000 + version,
  createdAtMs: 10 * version,
  opset: 17,
  inputs: [{ name: 'x', type: 'float32', shape: [-1, 8] }],
  outputs: [{ name: 'probs', type: 'float32', shape: [-1, 3] }],
  description: `v${version}`,
  metadata: { 'driftline.reference': 'ref', team: 'vib' },
  amendsVersion: 0,
  ...extra,
});

const release = (name: string, version: number): StoredRelease => ({
  name,
  version,
  sha256: `${version}`.repeat(64).slice(0, 64),
  sizeBytes: 1_000 + version,
  keyIds: ['key-a', 'key-b'],
  envelope: Buffer.from(`envelope of ${name} v${version}`),
  publishedAtMs: 100 * version,
});

/** Opens a store for one test and closes it afterwards, whatever the test does. */
const withStore = (open: StoreFactory, test: (store: StoreUnderTest) => Promise<void>) => async (): Promise<void> => {
  const store = await open();
  try {
    await test(store);
  } finally {
    await store.close();
  }
};

export function describeRepositoryContract(adapter: string, open: StoreFactory): void {
  describe(`${adapter} store - rollouts`, () => {
    it(
      'store - a unit of work commits all its writes together',
      withStore(open, async ({ rollouts }) => {
        const rollout = rolloutOf('ro_1');
        await rollouts.transaction(async (tx) => {
          await tx.insert(rollout);
          await tx.appendAudit({
            rolloutId: 'ro_1',
            atMs: 1,
            actor: 'tok_a',
            clientRequestId: 'req-1',
            action: 'create',
            fromState: 'pending',
            toState: 'pending',
            wave: 0,
            reason: '',
            details: {},
          });
          await tx.saveRequest({ clientRequestId: 'req-1', action: 'start', fingerprint: 'f', rolloutId: 'ro_1' }, 1);
        });
        expect(await rollouts.get('ro_1')).toMatchObject({ id: 'ro_1', state: rollout.state });
        expect(await rollouts.audit('ro_1')).toHaveLength(1);
        expect(await rollouts.findRequest('req-1')).toEqual({ clientRequestId: 'req-1', action: 'start', fingerprint: 'f', rolloutId: 'ro_1' });
      }),
    );

    it(
      'store - a unit of work that throws leaves nothing behind',
      withStore(open, async ({ rollouts }) => {
        await expect(
          rollouts.transaction(async (tx) => {
            await tx.insert(rolloutOf('ro_1'));
            throw new Error('effect failed');
          }),
        ).rejects.toThrow('effect failed');
        expect(await rollouts.get('ro_1')).toBeUndefined();
        expect(await rollouts.list()).toEqual([]);
      }),
    );

    it(
      'store - refuses a second active rollout for the same model and target group with ROLLOUT_ACTIVE_EXISTS',
      withStore(open, async ({ rollouts }) => {
        await rollouts.transaction((tx) => tx.insert(rolloutOf('ro_1')));
        await expect(rollouts.transaction((tx) => tx.insert(rolloutOf('ro_2')))).rejects.toMatchObject({ code: 'ROLLOUT_ACTIVE_EXISTS' });
        await rollouts.transaction((tx) => tx.insert(rolloutOf('ro_3', 'vibration', 'site=plant-4')));
        expect((await rollouts.list({ activeOnly: true })).map((r) => r.id).sort()).toEqual(['ro_1', 'ro_3']);
        expect((await rollouts.findActive('vibration', targetGroup('site=plant-4')))?.id).toBe('ro_3');
      }),
    );

    it(
      'store - a write outside a unit of work that is still open is neither rolled back with it nor seen by it half done',
      withStore(open, async (store) => {
        let release: () => void = () => undefined;
        const held = new Promise<void>((resolve) => (release = resolve));
        const failing = store.rollouts.transaction(async (tx) => {
          await tx.insert(rolloutOf('ro_1'));
          await held;
          throw new Error('rolled back');
        });
        // Issued while the unit of work waits: it must land on its own, after it.
        const outside = store.telemetry.commit('edge-1', [inference(1)], 2_000);
        release();
        await expect(failing).rejects.toThrow('rolled back');
        await expect(outside).resolves.toEqual({ stored: 1, duplicates: 0 });
        expect(await store.rollouts.get('ro_1')).toBeUndefined();
        expect((await store.telemetry.summary({ deviceId: 'edge-1', sinceMs: 0 })).devices[0]?.records).toBe(1);
      }),
    );
  });

  describe(`${adapter} store - fleet`, () => {
    const device = { id: 'edge-1', labels: { site: 'plant-3' }, secretHash: 'a'.repeat(64), enrolledAtMs: 10 };

    it(
      'store - keeps a device, moves last-seen only forward, and reports an unknown device on setDesired',
      withStore(open, async ({ fleet }) => {
        await fleet.saveEnrolledDevice(device);
        await fleet.recordSeen('edge-1', 50);
        await fleet.recordSeen('edge-1', 20);
        expect(await fleet.device('edge-1')).toMatchObject({
          id: 'edge-1',
          labels: { site: 'plant-3' },
          status: 'enrolled',
          secretHash: device.secretHash,
          lastSeenMs: 50,
        });
        expect(await fleet.setDesired('nobody', { revision: 1, model: undefined, rootChain: [], rollback: Buffer.alloc(0), models: [] })).toBe(false);
        expect(await fleet.setDesired('edge-1', { revision: 1, model: undefined, rootChain: [], rollback: Buffer.alloc(0), models: [] })).toBe(true);
        expect((await fleet.device('edge-1'))?.desired?.revision).toBe(1);
        await fleet.decommission('edge-1');
        expect(await fleet.device('edge-1')).toMatchObject({ status: 'decommissioned', secretHash: null });
      }),
    );

    it(
      'store - an enrollment unit of work that throws spends no token and creates no device',
      withStore(open, async ({ fleet }) => {
        await fleet.addEnrollmentToken({ tokenHash: 'b'.repeat(64), deviceId: 'edge-1', labels: {}, createdAtMs: 1, expiresAtMs: 100, purpose: 'enroll' });
        await expect(
          fleet.transaction(async (tx) => {
            await tx.markEnrollmentTokenUsed('b'.repeat(64), 5);
            await tx.saveEnrolledDevice(device);
            throw new Error('refused');
          }),
        ).rejects.toThrow('refused');
        expect(await fleet.enrollmentToken('b'.repeat(64))).toMatchObject({ usedAtMs: null });
        expect(await fleet.device('edge-1')).toBeUndefined();
        expect((await fleet.enrollmentTokenByHashPrefix('b'.repeat(16)))?.tokenHash).toBe('b'.repeat(64));
        expect(await fleet.enrollmentTokens({ deviceId: '', includeInactive: false, nowMs: 200, limit: 10 })).toEqual([]);
      }),
    );
  });

  describe(`${adapter} store - operator tokens`, () => {
    it(
      'store - finds a token by its hash, keeps the first revocation, and says whether an admin is live',
      withStore(open, async ({ operatorTokens }) => {
        await operatorTokens.insert({ id: 'tok_1', name: 'ci', role: 'admin', tokenHash: 'c'.repeat(64), createdAtMs: 1 });
        expect(await operatorTokens.hasLiveAdmin()).toBe(true);
        expect(await operatorTokens.byHash('c'.repeat(64))).toMatchObject({ id: 'tok_1', role: 'admin', revokedAtMs: null });
        expect(await operatorTokens.revoke('tok_1', 5)).toBe(true);
        expect(await operatorTokens.revoke('tok_1', 9)).toBe(true);
        expect(await operatorTokens.revoke('tok_nope', 9)).toBe(false);
        expect((await operatorTokens.list())[0]).toMatchObject({ revokedAtMs: 5 });
        expect(await operatorTokens.hasLiveAdmin()).toBe(false);
      }),
    );
  });

  describe(`${adapter} store - telemetry`, () => {
    it(
      'store - a resent record is a duplicate, not a second row, and retention deletes by arrival time',
      withStore(open, async ({ telemetry }) => {
        expect(await telemetry.commit('edge-1', [inference(1), inference(2)], 1_000)).toEqual({ stored: 2, duplicates: 0 });
        expect(await telemetry.commit('edge-1', [inference(2), inference(3)], 5_000)).toEqual({ stored: 1, duplicates: 1 });
        expect(await telemetry.prune(5_000 + 1, { rawMs: 2_000, minuteMs: 86_400_000, hourMs: 86_400_000 })).toBeGreaterThanOrEqual(2);
        expect(await telemetry.commit('edge-1', [inference(3)], 6_000)).toEqual({ stored: 0, duplicates: 1 });
      }),
    );
  });

  describe(`${adapter} store - drift events`, () => {
    it(
      'store - records events with rising ids and keeps the current status per key',
      withStore(open, async ({ driftEvents }) => {
        const event = {
          atMs: 10,
          model: 'vib',
          version: 1,
          cohort: '',
          previousStatus: 'no_data' as const,
          status: 'warn' as const,
          driftedShare: 0.2,
          driftedFeatures: ['x'],
          maxPsi: 0.3,
          rows: 100,
          devices: 2,
        };
        const [first] = await driftEvents.record([event]);
        const [second] = await driftEvents.record([{ ...event, atMs: 20, previousStatus: 'warn', status: 'no_data' }]);
        expect(second!.id).toBeGreaterThan(first!.id);
        expect(await driftEvents.current()).toEqual([]);
        expect((await driftEvents.list({ afterId: first!.id }, 10)).map((e) => e.id)).toEqual([second!.id]);
        expect(await driftEvents.pruneOlderThan(15)).toBe(1);
      }),
    );
  });

  describe(`${adapter} store - model versions`, () => {
    it(
      'store - keeps every field of a version and reads the latest, one by number, all of a name oldest first and the latest of each name',
      withStore(open, async ({ modelVersions }) => {
        await modelVersions.transaction(async (tx) => {
          await tx.insert(modelVersion('vibration', 1));
          await tx.insert(modelVersion('vibration', 2, { amendsVersion: 1, metadata: {} }));
          await tx.insert(modelVersion('acoustic', 1, { inputs: [], outputs: [] }));
        });
        expect(await modelVersions.version('vibration', 2)).toEqual(modelVersion('vibration', 2, { amendsVersion: 1, metadata: {} }));
        expect((await modelVersions.latest('vibration'))?.version).toBe(2);
        expect(await modelVersions.latest('absent')).toBeUndefined();
        expect(await modelVersions.version('vibration', 3)).toBeUndefined();
        expect((await modelVersions.versions('vibration')).map((v) => v.version)).toEqual([1, 2]);
        expect(await modelVersions.versions('absent')).toEqual([]);
        expect((await modelVersions.latestOfEach()).map((v) => [v.name, v.version])).toEqual([
          ['acoustic', 1],
          ['vibration', 2],
        ]);
      }),
    );

    it(
      'store - units of work that each read the latest version and insert the next never assign one number twice',
      withStore(open, async ({ modelVersions }) => {
        const assigned = await Promise.all(
          Array.from({ length: 5 }, () =>
            modelVersions.transaction(async (tx) => {
              const next = ((await tx.latest('vibration'))?.version ?? 0) + 1;
              await tx.insert(modelVersion('vibration', next));
              return next;
            }),
          ),
        );
        expect([...assigned].sort()).toEqual([1, 2, 3, 4, 5]);
        expect((await modelVersions.versions('vibration')).map((v) => v.version)).toEqual([1, 2, 3, 4, 5]);
      }),
    );

    it(
      'store - refuses a second version with the same name and number, and a unit of work that throws records nothing',
      withStore(open, async ({ modelVersions }) => {
        await modelVersions.transaction((tx) => tx.insert(modelVersion('vibration', 1)));
        await expect(modelVersions.transaction((tx) => tx.insert(modelVersion('vibration', 1, { description: 'again' })))).rejects.toThrow();
        await expect(
          modelVersions.transaction(async (tx) => {
            await tx.insert(modelVersion('vibration', 2));
            throw new Error('artifact gone');
          }),
        ).rejects.toThrow('artifact gone');
        expect(await modelVersions.versions('vibration')).toEqual([modelVersion('vibration', 1)]);
      }),
    );
  });

  describe(`${adapter} store - releases`, () => {
    it(
      'store - keeps a signed release as published and reads it by version and as the latest signed one',
      withStore(open, async ({ releases }) => {
        await releases.transaction((tx) => tx.insert(release('vibration', 1)));
        await releases.transaction((tx) => tx.insert(release('vibration', 3)));
        expect(await releases.release('vibration', 1)).toEqual(release('vibration', 1));
        expect(await releases.release('vibration', 2)).toBeUndefined();
        expect((await releases.latestRelease('vibration'))?.version).toBe(3);
        expect(await releases.latestRelease('absent')).toBeUndefined();
      }),
    );

    it(
      'store - refuses a second release of one version, and a unit of work that throws records nothing',
      withStore(open, async ({ releases }) => {
        await releases.transaction((tx) => tx.insert(release('vibration', 1)));
        await expect(releases.transaction((tx) => tx.insert({ ...release('vibration', 1), envelope: Buffer.from('another') }))).rejects.toThrow();
        await expect(
          releases.transaction(async (tx) => {
            expect(await tx.release('vibration', 2)).toBeUndefined();
            await tx.insert(release('vibration', 2));
            throw new Error('refused');
          }),
        ).rejects.toThrow('refused');
        expect(await releases.release('vibration', 2)).toBeUndefined();
        expect((await releases.release('vibration', 1))?.envelope).toEqual(release('vibration', 1).envelope);
      }),
    );

    it(
      'store - replaces the release of a signed version (a promoted canary) and keeps one draft per version',
      withStore(open, async ({ releases }) => {
        await expect(releases.transaction((tx) => tx.replace(release('vibration', 1)))).rejects.toThrow();
        await releases.transaction((tx) => tx.insert(release('vibration', 1)));
        const promoted = { ...release('vibration', 1), keyIds: ['human'], envelope: Buffer.from('fleet-wide'), publishedAtMs: 9 };
        await releases.transaction((tx) => tx.replace(promoted));
        expect(await releases.release('vibration', 1)).toEqual(promoted);
        expect(await releases.draft('vibration', 2)).toBeUndefined();
        const draft = { name: 'vibration', version: 2, manifest: Buffer.from('{"a":1}'), recordedAtMs: 5, reason: 'no automation key' };
        await releases.transaction((tx) => tx.putDraft(draft));
        await releases.transaction((tx) => tx.putDraft({ ...draft, reason: 'again', recordedAtMs: 6 }));
        expect(await releases.draft('vibration', 2)).toEqual({ ...draft, reason: 'again', recordedAtMs: 6 });
      }),
    );
  });
}
