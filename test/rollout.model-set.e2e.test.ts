import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { DeviceServiceService } from '../common/proto/driftline/v1/fleet.js';
import { createOperatorClient } from '../client/operator-client.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { enrollSimulatedDevices, FleetSimulator, type VersionBehavior } from '../simulator/fleet-simulator.js';
import { demoModelBytes } from './fixtures/models.js';
import { rolloutApi, type RolloutApi } from './helpers/rollout-api.js';

/**
 * Rollouts of different models on the same devices (issue #12): 40 simulated devices that
 * each serve a detector and a classifier, plus 4 that behave as agents from before the model
 * sets (one model, the single-model wire fields). The control plane runs on a ManualClock:
 * bakes end when the test moves the clock and ticks the engine, never by waiting.
 */
const DEVICES = 40;
const LEGACY = 4;
const BAKE_S = 600;
const BEHAVIOR: Record<string, Record<number, VersionBehavior>> = {
  detector: { 1: { latencyMs: 10, errorRate: 0.01 }, 2: { latencyMs: 30, errorRate: 0.01 } }, // v2: 3x slower
  classifier: { 1: { latencyMs: 5, errorRate: 0.01 }, 2: { latencyMs: 4, errorRate: 0.005 } }, // v2: better
  recognizer: { 1: { latencyMs: 50, errorRate: 0.3 } }, // fails a third of its inferences
};

describe('rollouts of different models on the same devices', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: RolloutApi;
  let sim: FleetSimulator;
  const clock = new ManualClock();
  let stored = 0;

  /** Every device sends inferences of each model it serves; resolves once the control plane has stored them all. */
  async function traffic(perDevice: number): Promise<void> {
    stored += await sim.emitInferences(perDevice);
    await vi.waitFor(() => expect(cp.ingest.stats.recordsStored).toBeGreaterThanOrEqual(stored), { timeout: 15_000, interval: 20 });
  }

  /** Waits until the control plane has the reported state of `count` devices on `version` of the rollout's model. */
  async function reported(rolloutId: string, version: number, count: number): Promise<void> {
    await vi.waitFor(async () => expect((await api.get(rolloutId)).versions[version] ?? 0).toBe(count), { timeout: 15_000, interval: 20 });
  }

  const onSet = (model: string, version: number) => sim.devices.filter((d) => !d.legacy && d.models.get(model)?.version === version).length;

  /** A one-wave rollout without gates, to bring the set devices to `version` of `model`. */
  async function bringTo(model: string, version: number): Promise<void> {
    const initial = await api.start({ model, version, wavePercents: [100], target: 'site=plant-3', gates: ['none'], clientRequestId: `initial-${model}` });
    await reported(initial.id, version, DEVICES);
    clock.advance(1000);
    await cp.rollouts.tick();
    expect((await api.get(initial.id)).state).toBe('succeeded');
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'driftline-rollout-set-'));
    cp = await startControlPlane(
      { dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 }, rollout: { tickInterval: '1h' } },
      { logger: silentLogger(), clock },
    );
    api = rolloutApi(cp.addresses.grpc, cp.adminTokenFile);
    let seed = 1;
    for (const [model, versions] of Object.entries(BEHAVIOR)) for (const _ of Object.keys(versions)) await api.upload(model, demoModelBytes(seed++));
    const specs = [
      ...Array.from({ length: DEVICES }, (_, i) => ({ id: `set-${String(i).padStart(2, '0')}`, profile: 'jetson-orin-nano-jp6', labels: { site: 'plant-3' } })),
      ...Array.from({ length: LEGACY }, (_, i) => ({ id: `old-${i}`, profile: 'jetson-orin-nano-jp6', labels: { site: 'plant-9' } })),
    ];
    const creds = await enrollSimulatedDevices({ address: cp.addresses.grpc, token: readFileSync(cp.adminTokenFile, 'utf8').trim(), devices: specs });
    sim = await FleetSimulator.start({
      brokerUrl: cp.addresses.mqtt,
      devices: creds,
      behavior: (version, model) => BEHAVIOR[model]?.[version] ?? { latencyMs: 10, errorRate: 0 },
      legacy: (id) => id.startsWith('old-'),
      clock,
      logger: silentLogger(),
    });
    await bringTo('detector', 1);
    await bringTo('classifier', 1);
  }, 90_000);

  afterAll(async () => {
    await sim?.shutdown();
    api?.close();
    await cp?.shutdown();
    await rm(dir, { recursive: true, force: true });
  });

  it('runs two rollouts at once on the same devices: the slower detector is aborted by its gates at the canary, the better classifier goes through every wave, and neither disturbs the other model', async () => {
    const common = { wavePercents: [25, 100], bakeSeconds: BAKE_S, minDevices: 5, target: 'site=plant-3' };
    const detector = await api.start({ ...common, model: 'detector', version: 2, clientRequestId: 'detector-2' });
    const classifier = await api.start({
      ...common,
      model: 'classifier',
      version: 2,
      gates: ['install-failure-rate<=0.1', 'p95-latency-ratio<=1.5', 'error-rate-delta<=0.02'],
      clientRequestId: 'classifier-2',
    });
    // One active rollout per model and target group, as before: a second detector rollout is refused.
    await expect(api.start({ ...common, model: 'detector', version: 1, clientRequestId: 'detector-again' })).rejects.toMatchObject({
      code: 'ROLLOUT_ACTIVE_EXISTS',
    });
    expect([detector.state, classifier.state]).toEqual(['progressing', 'progressing']);
    await reported(detector.id, 2, detector.waves[0]!.devices);
    await reported(classifier.id, 2, classifier.waves[0]!.devices);

    await traffic(20);
    clock.advance(BAKE_S * 1000);
    await cp.rollouts.tick();
    const aborted = await api.get(detector.id);
    expect(aborted).toMatchObject({ state: 'aborted', rolledBackDevices: detector.waves[0]!.devices });
    expect(aborted.reason).toMatch(/p95-latency-ratio/);
    expect(await api.get(classifier.id)).toMatchObject({ state: 'progressing', wave: 2 });

    // The detector's canary goes back to v1 while the classifier's last wave installs, on the same devices.
    await reported(detector.id, 1, DEVICES);
    await reported(classifier.id, 2, DEVICES);
    await traffic(10);
    clock.advance(BAKE_S * 1000);
    await cp.rollouts.tick();
    const done = await api.get(classifier.id);
    expect(done).toMatchObject({ state: 'succeeded', rolledBackDevices: 0 });
    expect(done.waves.map((w) => w.status)).toEqual(['passed', 'passed']);

    expect(onSet('detector', 1)).toBe(DEVICES);
    expect(onSet('classifier', 2)).toBe(DEVICES);
    for (const d of sim.devices.filter((x) => !x.legacy)) {
      expect(d.versionsOf('classifier')).toEqual([1, 2]);
      expect([[1], [1, 2, 1]]).toContainEqual(d.versionsOf('detector'));
    }
    expect(sim.devices.filter((d) => d.versionsOf('detector').includes(2)).length).toBe(detector.waves[0]!.devices);
    // The devices outside the target group (agents from before, elsewhere) were never touched.
    expect(sim.devices.filter((d) => d.legacy).every((d) => d.installs.length === 0)).toBe(true);
  });

  it("an aborted rollout of a model the devices did not have removes it from the canary's sets and leaves their other models serving", async () => {
    const rollout = await api.start({
      model: 'recognizer',
      version: 1,
      wavePercents: [25, 100],
      bakeSeconds: BAKE_S,
      minDevices: 5,
      target: 'site=plant-3',
      gates: ['error-rate<=0.05'],
      clientRequestId: 'recognizer-1',
    });
    const canary = rollout.waves[0]!.devices;
    await reported(rollout.id, 1, canary);
    expect(sim.devices.filter((d) => d.models.has('recognizer')).length).toBe(canary);
    await traffic(20);
    clock.advance(BAKE_S * 1000);
    await cp.rollouts.tick();
    expect(await api.get(rollout.id)).toMatchObject({ state: 'aborted', rolledBackDevices: canary });

    await vi.waitFor(() => expect(sim.devices.filter((d) => d.models.has('recognizer')).length).toBe(0), { timeout: 15_000, interval: 20 });
    expect(onSet('detector', 1)).toBe(DEVICES);
    expect(onSet('classifier', 2)).toBe(DEVICES);
    const client = createOperatorClient({ address: cp.addresses.grpc, token: readFileSync(cp.adminTokenFile, 'utf8').trim() });
    try {
      const { devices } = await client.service(DeviceServiceService).listDevices({ selector: 'site=plant-3', includeDecommissioned: false });
      for (const d of devices) expect(d.desiredModels.map((m) => `${m.name}@v${m.version}`).sort()).toEqual(['classifier@v2', 'detector@v1']);
    } finally {
      client.close();
    }
  });

  it('rolls a model out to devices that speak the single-model shape of before, judged from the one model they report', async () => {
    const rollout = await api.start({
      model: 'classifier',
      version: 2,
      wavePercents: [100],
      target: 'site=plant-9',
      gates: ['none'],
      clientRequestId: 'legacy',
    });
    await reported(rollout.id, 2, LEGACY);
    clock.advance(1000);
    await cp.rollouts.tick();
    expect(await api.get(rollout.id)).toMatchObject({ state: 'succeeded' });
    for (const d of sim.devices.filter((x) => x.legacy)) expect(d.versionsOf('classifier')).toEqual([2]);
  });
});
