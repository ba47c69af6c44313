import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { silentLogger } from '../common/logger.js';
import { Outcome, Stream, type TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { RolloutEngine, type Actor } from '../control-plane/rollout/engine.js';
import type { CohortStats, InstallStats } from '../control-plane/rollout/gates.js';
import { wavesFrom, type RolloutPlanInput } from '../control-plane/rollout/plan.js';
import type { CohortMetrics, CohortQuery, FleetView, ReleasePublisher } from '../control-plane/rollout/ports.js';
import { SqliteCohortMetrics } from '../control-plane/store/sqlite/cohort-metrics.js';
import { SqliteRolloutRepository } from '../control-plane/store/sqlite/rollout-repository.js';
import type { PlanningDevice } from '../control-plane/rollout/state-machine.js';
import { openDatabase, type Database } from '../control-plane/store/sqlite/database.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';

const MIN = 60_000;
const alice: Actor = { actor: 'tok_alice', clientRequestId: '' };
const by = (clientRequestId: string): Actor => ({ actor: 'tok_alice', clientRequestId });

/** A fleet where every device installs whatever it is sent, at once. */
class FakeFleet implements FleetView, ReleasePublisher {
  readonly running = new Map<string, number>();
  readonly sent: Array<{ kind: string; ids: string[]; version?: number }> = [];
  constructor(n: number) {
    for (let i = 0; i < n; i++) this.running.set(`d-${i}`, 1);
  }
  async devices(): Promise<PlanningDevice[]> {
    return [...this.running].map(([id, v]) => ({ id, labels: {}, profile: 'jetson-orin-nano-jp6', activeVersion: v }));
  }
  async installStatus(_m: string, version: number, ids: readonly string[]): Promise<InstallStats> {
    const installed = ids.filter((id) => this.running.get(id) === version).length;
    return { attempted: ids.length, installed, failed: 0, pending: ids.length - installed };
  }
  async activeVersions(_m: string, ids: readonly string[]): Promise<Record<string, number>> {
    return Object.fromEntries(ids.map((id) => [id, this.running.get(id) ?? 0]));
  }
  async deploy(_m: string, version: number, ids: readonly string[]): Promise<void> {
    this.sent.push({ kind: 'deploy', ids: [...ids], version });
    for (const id of ids) this.running.set(id, version);
  }
  async rollback(_m: string, devices: ReadonlyArray<{ deviceId: string; toVersion: number }>): Promise<void> {
    this.sent.push({ kind: 'rollback', ids: devices.map((d) => d.deviceId) });
    for (const d of devices) this.running.set(d.deviceId, d.toVersion);
  }
}

class FakeMetrics implements CohortMetrics {
  p95: Record<number, number> = { 1: 10, 2: 10 };
  failing = false;
  async cohort(q: CohortQuery): Promise<CohortStats> {
    if (this.failing) throw new DriftlineError('STORE_FAILED', 'database is locked');
    const version = q.version ?? 1;
    return {
      devices: q.deviceIds.length,
      devicesWithData: q.deviceIds.length,
      inferences: q.deviceIds.length * 100,
      errors: 0,
      p95LatencyMs: this.p95[version]!,
    };
  }
}

describe('rollout engine', () => {
  let db: Database;
  let clock: ManualClock;
  let fleet: FakeFleet;
  let metrics: FakeMetrics;
  let engine: RolloutEngine;
  let ids = 0;

  const plan = (over: Partial<RolloutPlanInput> = {}): RolloutPlanInput => ({
    model: 'vibration',
    version: 2,
    target: 'site=plant-3',
    waves: wavesFrom([10, 100], 10 * MIN, 3),
    gates: [{ metric: 'p95-latency-ratio', op: '<=', threshold: 1.5 }],
    ...over,
  });

  beforeEach(() => {
    db = openDatabase(':memory:');
    clock = new ManualClock();
    fleet = new FakeFleet(50);
    metrics = new FakeMetrics();
    engine = new RolloutEngine({
      repository: new SqliteRolloutRepository(db),
      fleet,
      metrics,
      publisher: fleet,
      catalog: { constraints: async () => ({ profiles: ['jetson-*'], labels: {} }) },
      clock,
      logger: silentLogger(),
      newId: () => `ro_${++ids}`,
    });
  });
  afterEach(() => db.close());

  it('rollout - treats a replayed start with the same client request id as the same command', async () => {
    const first = await engine.start(plan(), by('req-1'));
    const again = await engine.start(plan(), by('req-1'));
    expect(again.id).toBe(first.id);
    expect(await engine.list()).toHaveLength(1);
    expect(fleet.sent.filter((s) => s.kind === 'deploy')).toHaveLength(1);
    await expect(engine.start(plan({ version: 3 }), by('req-1'))).rejects.toMatchObject({ code: 'REQUEST_ID_REUSED' });
  });

  it('rollout - replays a pause without a second audit entry, and refuses a reused id for another command', async () => {
    const r = await engine.start(plan(), alice);
    await engine.command(r.id, 'pause', by('p-1'));
    await engine.command(r.id, 'pause', by('p-1'));
    expect((await engine.audit(r.id)).filter((e) => e.action === 'pause')).toHaveLength(1);
    await expect(engine.command(r.id, 'resume', by('p-1'))).rejects.toMatchObject({ code: 'REQUEST_ID_REUSED' });
    await expect(engine.command(r.id, 'pause', by('p-2'))).rejects.toMatchObject({ code: 'ROLLOUT_STATE_INVALID' });
  });

  it('rollout - allows one active rollout per model and target group, another once it ended', async () => {
    const r = await engine.start(plan(), alice);
    await expect(engine.start(plan({ version: 3, target: ' site=plant-3' }), alice)).rejects.toMatchObject({ code: 'ROLLOUT_ACTIVE_EXISTS' });
    await expect(engine.start(plan({ target: 'site=plant-4' }), alice)).resolves.toMatchObject({ state: 'progressing' });
    await engine.command(r.id, 'abort', alice, 'wrong version');
    await expect(engine.start(plan({ version: 3 }), alice)).resolves.toMatchObject({ state: 'progressing' });
  });

  it('rollout - records every transition and command in the audit log with its actor and request id', async () => {
    const r = await engine.start(plan(), by('s-1'));
    await engine.command(r.id, 'pause', by('c-1'));
    await engine.command(r.id, 'resume', by('c-2'));
    clock.advance(10 * MIN);
    await engine.tick();
    clock.advance(10 * MIN);
    await engine.tick();
    expect((await engine.get(r.id)).state).toBe('succeeded');
    const audit = await engine.audit(r.id);
    expect(audit.map((e) => [e.action, e.actor, e.clientRequestId, e.toState])).toEqual([
      ['create', 'tok_alice', 's-1', 'pending'],
      ['start', 'tok_alice', 's-1', 'progressing'],
      ['pause', 'tok_alice', 'c-1', 'paused'],
      ['resume', 'tok_alice', 'c-2', 'progressing'],
      ['gates-passed', 'system', '', 'progressing'],
      ['advance', 'system', '', 'progressing'],
      ['gates-passed', 'system', '', 'progressing'],
      ['succeed', 'system', '', 'succeeded'],
    ]);
    expect(await engine.versionCounts(await engine.get(r.id))).toEqual({ 2: 50 });
  });

  it('rollout - aborts by itself and rolls back exactly the devices it touched', async () => {
    metrics.p95[2] = 20;
    const r = await engine.start(plan(), alice);
    const canary = fleet.sent[0]!.ids;
    clock.advance(10 * MIN);
    await engine.tick();
    expect(await engine.get(r.id)).toMatchObject({ state: 'aborted', wave: 0 });
    expect(fleet.sent.at(-1)).toEqual({ kind: 'rollback', ids: canary });
    expect(await engine.versionCounts(await engine.get(r.id))).toEqual({ 1: 50 });
  });

  it('rollout - a metrics store that keeps failing aborts the rollout instead of passing it', async () => {
    metrics.failing = true;
    const r = await engine.start(plan({ consecutiveErrorLimit: 1, intervalMs: MIN }), alice);
    clock.advance(10 * MIN);
    await engine.tick();
    expect(await engine.get(r.id)).toMatchObject({ state: 'progressing', consecutiveErrors: 1 });
    clock.advance(MIN);
    await engine.tick();
    expect((await engine.get(r.id)).state).toBe('aborted');
    expect((await engine.get(r.id)).reason).toMatch(/STORE_FAILED/);
  });

  it('rollout - refuses commands for a rollout that does not exist', async () => {
    await expect(engine.command('ro_nope', 'abort', alice)).rejects.toMatchObject({ code: 'ROLLOUT_NOT_FOUND' });
    await expect(engine.get('ro_nope')).rejects.toMatchObject({ code: 'ROLLOUT_NOT_FOUND' });
  });

  it('rollout - keeps its rollouts and audit log across a restart of the store', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'driftline-rollout-'));
    const file = join(dir, 'cp.db');
    const disk = openDatabase(file);
    const repo = new SqliteRolloutRepository(disk);
    const e1 = new RolloutEngine({
      repository: repo,
      fleet,
      metrics,
      publisher: fleet,
      catalog: { constraints: async () => ({ profiles: [], labels: {} }) },
      clock,
      logger: silentLogger(),
    });
    const r = await e1.start(plan(), by('persist-1'));
    disk.close();
    const reopened = openDatabase(file);
    const repo2 = new SqliteRolloutRepository(reopened);
    expect(await repo2.get(r.id)).toMatchObject({ state: 'progressing', wave: 0 });
    expect(await repo2.audit(r.id)).toHaveLength(2);
    expect(await repo2.findRequest('persist-1')).toMatchObject({ rolloutId: r.id, action: 'start' });
    reopened.close();
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('rollout cohort metrics from stored telemetry', () => {
  it('rollout - measures error rate and p95 latency per version cohort within the window', async () => {
    const db = openDatabase(':memory:');
    const telemetry = new SqliteTelemetryRepository(db);
    const record = (seq: number, version: number, latencyMs: number, ok = true): TelemetryRecord => ({
      boot: 1,
      seq,
      timeMs: 0,
      stream: Stream.STREAM_INFERENCE,
      body: {
        $case: 'inference',
        value: {
          model: 'vibration',
          version,
          provider: 'cpu',
          latencyMs,
          outcome: ok ? Outcome.OUTCOME_OK : Outcome.OUTCOME_ERROR,
          topClass: 0,
          confidence: 1,
          errorCode: '',
          batchSize: 1,
        },
      },
    });
    // d-1 ran v1 then v2; old records (received before the window) must not count.
    await telemetry.commit('d-1', [record(1, 1, 1000)], 500);
    await telemetry.commit(
      'd-1',
      Array.from({ length: 100 }, (_, i) => record(i + 2, 2, i + 1, i % 10 !== 0)),
      1000,
    );
    await telemetry.commit(
      'd-2',
      Array.from({ length: 20 }, (_, i) => record(i + 1, 1, 5)),
      1000,
    );
    const metrics = new SqliteCohortMetrics(db);
    expect(await metrics.cohort({ model: 'vibration', version: 2, deviceIds: ['d-1', 'd-2'], sinceMs: 1000 })).toEqual({
      devices: 2,
      devicesWithData: 1,
      inferences: 100,
      errors: 10,
      p95LatencyMs: 95,
    });
    expect(await metrics.cohort({ model: 'vibration', excludeVersion: 2, deviceIds: ['d-1', 'd-2'], sinceMs: 1000 })).toMatchObject({
      inferences: 20,
      p95LatencyMs: 5,
    });
    expect(await metrics.cohort({ model: 'vibration', excludeVersion: 2, deviceIds: ['d-1', 'd-2'], sinceMs: 0 })).toMatchObject({
      inferences: 21,
      p95LatencyMs: 5,
    });
    expect(await metrics.cohort({ model: 'other', deviceIds: ['d-1'], sinceMs: 0 })).toMatchObject({ inferences: 0, p95LatencyMs: null });
    db.close();
  });
});
