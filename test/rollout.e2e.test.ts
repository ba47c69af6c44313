import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { enrollSimulatedDevices, FleetSimulator, type VersionBehavior } from '../simulator/fleet-simulator.js';
import { demoModelBytes } from './fixtures/models.js';
import { rolloutApi, type RolloutApi } from './helpers/rollout-api.js';

/**
 * End to end over 200 simulated devices, each its own MQTT client with its own credential on
 * the embedded broker, plus 10 devices the model does not fit. The control plane runs on a
 * ManualClock: bakes end when the test moves the clock and ticks the engine, never by waiting.
 */
const COMPATIBLE = 200;
const INCOMPATIBLE = 10;
const BAKE_S = 600;
const BEHAVIOR: Record<number, VersionBehavior> = {
  1: { latencyMs: 10, errorRate: 0.01 },
  2: { latencyMs: 25, errorRate: 0.01 }, // the bad model: 2.5x slower
  3: { latencyMs: 9, errorRate: 0.005 }, // the better model
};

describe('rollout end to end over a simulated fleet', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: RolloutApi;
  let sim: FleetSimulator;
  const clock = new ManualClock();
  let stored = 0;

  /** Every device with a model sends inferences; resolves once the control plane has stored them all. */
  async function traffic(perDevice: number): Promise<void> {
    stored += await sim.emitInferences(perDevice);
    await vi.waitFor(() => expect(cp.ingest.stats.recordsStored).toBeGreaterThanOrEqual(stored), { timeout: 15_000, interval: 20 });
  }

  async function devicesOn(version: number, count: number): Promise<void> {
    await vi.waitFor(() => expect(sim.versions()[String(version)] ?? 0).toBe(count), { timeout: 15_000, interval: 20 });
    // ...and the control plane has their reported state.
    await vi.waitFor(async () => expect((await api.list()).length).toBeGreaterThan(0), { timeout: 5_000, interval: 20 });
  }

  /** Waits until the control plane has stored the reported state of every simulated device. */
  async function reported(rolloutId: string, version: number, count: number): Promise<void> {
    await vi.waitFor(async () => expect((await api.get(rolloutId)).versions[version] ?? 0).toBe(count), { timeout: 15_000, interval: 20 });
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'driftline-rollout-e2e-'));
    cp = await startControlPlane(
      { dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 }, rollout: { tickInterval: '1h' } },
      { logger: silentLogger(), clock },
    );
    api = rolloutApi(cp.addresses.grpc, cp.adminTokenFile);
    const fits = { 'driftline.profiles': 'jetson-*' };
    for (const seed of [1, 2, 3]) await api.upload('vibration', demoModelBytes(seed), fits);
    const specs = [
      ...Array.from({ length: COMPATIBLE }, (_, i) => ({
        id: `sim-${String(i).padStart(3, '0')}`,
        profile: 'jetson-orin-nano-jp6',
        labels: { site: 'plant-3' },
      })),
      ...Array.from({ length: INCOMPATIBLE }, (_, i) => ({ id: `pi-${i}`, profile: 'raspberry-pi-5', labels: { site: 'plant-3' } })),
    ];
    const creds = await enrollSimulatedDevices({ address: cp.addresses.grpc, token: readFileSync(cp.adminTokenFile, 'utf8').trim(), devices: specs });
    sim = await FleetSimulator.start({
      brokerUrl: cp.addresses.mqtt,
      devices: creds,
      behavior: (v) => BEHAVIOR[v] ?? BEHAVIOR[1]!,
      clock,
      logger: silentLogger(),
    });

    // Bring the fleet to v1 with a one-wave rollout that has no gates.
    const initial = await api.start({
      model: 'vibration',
      version: 1,
      wavePercents: [100],
      target: 'site=plant-3',
      gates: ['none'],
      clientRequestId: 'initial',
    });
    await devicesOn(1, COMPATIBLE);
    await reported(initial.id, 1, COMPATIBLE);
    clock.advance(1000);
    await cp.rollouts.tick();
    expect((await api.get(initial.id)).state).toBe('succeeded');
  }, 60_000);

  afterAll(async () => {
    await sim?.shutdown();
    api?.close();
    await cp?.shutdown();
    await rm(dir, { recursive: true, force: true });
  });

  it('rollout - aborts a slower model at the canary, rolls every canary device back, and never touches a device outside the canary', async () => {
    const start = {
      model: 'vibration',
      version: 2,
      wavePercents: [5, 25, 100],
      bakeSeconds: BAKE_S,
      minDevices: 5,
      target: 'profile=jetson-*,site=plant-3',
      clientRequestId: 'bad-1',
    };
    const rollout = await api.start(start);
    expect(rollout).toMatchObject({ state: 'progressing', wave: 1, targetedDevices: COMPATIBLE, baselineVersion: 1 });
    expect(rollout.incompatible).toHaveLength(0); // the selector already keeps the Raspberry Pis out
    // A replay of the same command answers with the same rollout and starts nothing new.
    expect((await api.start(start)).id).toBe(rollout.id);

    const canary = rollout.waves[0]!.devices;
    expect(canary).toBeGreaterThanOrEqual(5);
    expect(canary).toBeLessThan(25);
    await reported(rollout.id, 2, canary);
    await traffic(20);
    clock.advance(BAKE_S * 1000 - 1);
    await cp.rollouts.tick();
    expect((await api.get(rollout.id)).state).toBe('progressing'); // the bake is not over

    clock.advance(1);
    await cp.rollouts.tick();
    const aborted = await api.get(rollout.id);
    expect(aborted).toMatchObject({ state: 'aborted', wave: 1, rolledBackDevices: canary });
    expect(aborted.reason).toMatch(/p95-latency-ratio/);
    expect(aborted.lastEvaluation.find((g) => g.gate.startsWith('p95'))?.verdict).toBe('fail');

    // Every device goes back to the old version by itself.
    await devicesOn(1, COMPATIBLE);
    await reported(rollout.id, 1, COMPATIBLE);

    // No device outside the canary was ever sent the new version: from the audit log...
    const audit = await api.audit(rollout.id);
    expect(audit.map((e) => e.action)).toEqual(['create', 'start', 'auto-abort']);
    const deployed = JSON.parse(audit[1]!.details).devices as string[];
    expect(deployed).toHaveLength(canary);
    expect(audit[1]).toMatchObject({ actor: expect.stringMatching(/.+/), clientRequestId: 'bad-1' });
    expect(audit[2]).toMatchObject({ actor: 'system', fromState: 'progressing', toState: 'aborted' });
    expect(JSON.parse(audit[2]!.details).rolledBack).toEqual(deployed);
    // ...and from what the devices themselves installed.
    const touched = sim.devices.filter((d) => d.installs.some((i) => i.version === 2)).map((d) => d.id);
    expect(touched.sort()).toEqual([...deployed].sort());
    for (const id of touched) expect(sim.device(id).versionHistory).toEqual([1, 2, 1]);
    expect(sim.devices.filter((d) => d.id.startsWith('pi-')).every((d) => d.installs.length === 0)).toBe(true);
  });

  it('rollout - takes a better model through every wave to succeeded', async () => {
    const rollout = await api.start({
      model: 'vibration',
      version: 3,
      wavePercents: [5, 25, 100],
      bakeSeconds: BAKE_S,
      minDevices: 5,
      target: 'profile=jetson-*,site=plant-3',
      gates: ['install-failure-rate<=0.1', 'p95-latency-ratio<=1.5', 'error-rate-delta<=0.02'],
      clientRequestId: 'good-1',
    });
    const watching = api.watch(rollout.id, (r) => r.state === 'succeeded' || r.state === 'aborted');
    let previous = 0;
    for (let wave = 1; wave <= 3; wave++) {
      const now = await api.get(rollout.id);
      expect(now).toMatchObject({ state: 'progressing', wave });
      const cohort = now.waves[wave - 1]!.devices;
      expect(cohort).toBeGreaterThan(previous);
      previous = cohort;
      await reported(rollout.id, 3, cohort);
      await traffic(10);
      clock.advance(BAKE_S * 1000);
      await cp.rollouts.tick();
    }
    const done = await api.get(rollout.id);
    expect(done).toMatchObject({ state: 'succeeded', wave: 3, rolledBackDevices: 0 });
    expect(done.waves.map((w) => w.status)).toEqual(['passed', 'passed', 'passed']);
    await reported(rollout.id, 3, COMPATIBLE);
    expect(sim.versions()).toEqual({ '3': COMPATIBLE, '0': INCOMPATIBLE });
    const updates = await watching;
    expect(updates.at(-1)!.state).toBe('succeeded');
    expect(new Set(updates.map((u) => u.wave))).toEqual(new Set([1, 2, 3]));
  });
});
