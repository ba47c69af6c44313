/**
 * The closed loop's first half, end to end over one real SQLite file: a drift event recorded by
 * the real DriftWatcher → the TriggerWatcher's decision → TriggerJobStarter → a dataset snapshot
 * made by the real DatasetService from captured, labelled samples → a job in the real
 * TrainingEngine, with the trigger in its lineage. A ManualClock; the test waits for the
 * watchers' queues, never for durations.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import { parseRetrainingPolicy, type RetrainingPolicyInput } from '../control-plane/training/retraining-policy.js';
import type { RetrainingPolicyStore } from '../control-plane/training/retraining-ports.js';
import { RETRAINING_ACTOR } from '../control-plane/training/trigger-starter.js';
import type { SqliteRetrainingPolicyRepository } from '../control-plane/store/sqlite/retraining-policy-repository.js';
import { HOUR, MINUTE, RETRAINED, loopRig, testSigning, uploadV1, type LoopRig } from './helpers/training-loop.js';

const NORTH = ['n-1', 'n-2', 'n-3', 'n-4'];
const SOUTH = ['s-1', 's-2'];

const policy = (over: Partial<RetrainingPolicyInput> = {}) =>
  parseRetrainingPolicy({
    onDrift: {},
    cooldown: '6h',
    job: { trainer: 'ts-dense-head', gates: ['accuracy-delta>=0.05'] },
    rollout: { waves: [50, 100], bake: '10m', minDevices: 1 },
    ...over,
  });

/** A policy store whose first recorded decision is lost with the process: the job started, its decision never committed. */
function crashOnFirstDecision(store: SqliteRetrainingPolicyRepository): RetrainingPolicyStore {
  let crashed = false;
  return new Proxy(store, {
    get(target, key, receiver) {
      if (key === 'recordDecision' && !crashed) {
        return async () => {
          crashed = true;
          throw new DriftlineError('STORE_FAILED', 'the control plane was killed before the decision committed');
        };
      }
      const value: unknown = Reflect.get(target, key, receiver);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

describe('retraining loop - triggers start jobs on dataset snapshots', () => {
  let rig: LoopRig;

  const alert = async (version: number, cohort: string) => {
    rig.drift.set(version, cohort, 'alert');
    await rig.driftWatcher.evaluate();
    await rig.watcher.idle();
  };
  const decisions = async () => (await rig.policies.listDecisions({ model: 'vibration' }, 100)).reverse();
  const jobs = async () => (await rig.engine.list({ model: 'vibration' })).jobs;

  const setUp = async (options: { policies?: (store: SqliteRetrainingPolicyRepository) => RetrainingPolicyStore } = {}) => {
    rig = await loopRig({ signing: testSigning().signing, ...options });
    await uploadV1(rig.registry);
    await rig.enroll(NORTH, { cohort: 'north' });
    await rig.enroll(SOUTH, { cohort: 'south' });
    for (const id of [...NORTH, ...SOUTH]) await rig.capture(id, 100);
    await rig.policies.save('vibration', policy(), rig.clock.now(), 'tok_operator');
  };

  afterEach(async () => rig?.close());

  it('drift alerts within the cooldown start one job, on a snapshot of the drifted cohort, with the trigger in its lineage', async () => {
    await setUp();
    rig.watcher.run();
    await rig.watcher.idle();
    await alert(1, 'north');
    rig.clock.advance(MINUTE);
    await alert(1, 'south');

    const all = await jobs();
    expect(all).toHaveLength(1);
    const job = all[0]!;
    expect(job).toMatchObject({
      state: 'queued',
      spec: {
        model: 'vibration',
        baseVersion: 1,
        trainer: 'ts-dense-head',
        gates: ['accuracy-delta>=0.05'],
        trigger: {
          kind: 'drift',
          key: expect.stringMatching(/^drift-\d+$/),
          clientRequestId: expect.stringMatching(/^retrain\/vibration\/drift-\d+$/),
          cohort: 'north',
          cohortSelector: 'cohort=north',
          datasetSelector: 'cohort=north',
          replayedDatasetId: '',
          policyVersion: 1,
        },
      },
    });
    expect(job.spec.trigger!.driftEventId).toBeGreaterThan(0);

    // The snapshot holds the north devices' labelled samples only.
    const dataset = await rig.datasets.get(job.spec.datasetId);
    expect(dataset.rows).toBe(NORTH.length * 100);
    expect(dataset.manifest.query).toMatchObject({ selector: 'cohort=north', labelledOnly: true });

    const log = await decisions();
    expect(log.map((d) => [d.fired, d.reason, d.jobId])).toEqual([
      [true, 'drift_alert', job.id],
      [false, 'job_running', ''],
    ]);
    expect(log[0]!.clientRequestId).toBe(job.spec.trigger!.clientRequestId);
    const created = (await rig.engine.audit(job.id))[0]!;
    expect(created).toMatchObject({ action: 'create', actor: RETRAINING_ACTOR, clientRequestId: job.spec.trigger!.clientRequestId });
  });

  it('a restart after the job started but before its decision committed starts no second job, even once that job has ended', async () => {
    await setUp({ policies: crashOnFirstDecision });
    rig.watcher.run();
    await rig.watcher.idle();
    await alert(1, 'north');
    const [job] = await jobs();
    expect(job).toBeDefined();
    expect(await decisions()).toEqual([]);
    // The job ends while the control plane is down.
    await rig.engine.cancel(job!.id, { actor: 'tok_operator', clientRequestId: '' }, 'operator stopped it');

    await rig.restart();
    rig.watcher.run();
    await rig.watcher.idle();
    await rig.watcher.tick();

    expect((await jobs()).map((j) => j.id)).toEqual([job!.id]);
    expect((await rig.datasets.list({ limit: 10 })).datasets).toHaveLength(1);
    const log = await decisions();
    expect(log.map((d) => [d.fired, d.reason, d.jobId])).toEqual([[true, 'drift_alert', job!.id]]);
  });

  it('a cohort without samples records the decision start_failed with DATASET_EMPTY, and no job', async () => {
    await setUp();
    rig.watcher.run();
    await rig.watcher.idle();
    await alert(1, 'east');

    expect(await jobs()).toEqual([]);
    const log = await decisions();
    expect(log).toHaveLength(1);
    expect(log[0]).toMatchObject({ fired: false, reason: 'start_failed', jobId: '', details: { code: 'DATASET_EMPTY', cohort: 'east' } });
  });

  it("the next job replays the snapshot its parent version was trained on (the version's lineage names it)", async () => {
    await setUp();
    rig.watcher.run();
    await rig.watcher.idle();
    await alert(1, 'north');
    const first = await rig.engine.get(await rig.train(RETRAINED));
    expect([first.state, first.errorCode, first.reason]).toEqual(['succeeded', '', '']);
    expect(first.resultVersion).toBe(2);

    rig.clock.advance(7 * HOUR);
    for (const id of NORTH) await rig.capture(id, 20);
    await alert(2, 'north');
    const second = (await jobs()).find((j) => j.id !== first.id)!;
    expect(second.spec).toMatchObject({ baseVersion: 2, trigger: { replayedDatasetId: first.spec.datasetId } });
    expect((await rig.datasets.get(second.spec.datasetId)).manifest.parent).toEqual({ id: first.spec.datasetId });
  });
});
