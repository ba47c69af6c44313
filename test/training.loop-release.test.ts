/**
 * The closed loop's second half over one real SQLite file: a triggered job that passes the
 * evaluation gate (real onnxruntime on the real snapshot) becomes v2; ReleaseCanary asks for a
 * canary signature for the drifted cohort, then starts a staged rollout in the real RolloutEngine
 * (real fleet store, desired states as sent to devices) whose first wave is that cohort, and
 * marks the job's lineage with the outcome. The signing port is the
 * test's (release signing lands separately); a ManualClock, driver ticks called by the test.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Outcome } from '../common/proto/driftline/v1/device_link.js';
import { inferenceRecord } from './helpers/telemetry-records.js';
import { canaryPlan, releaseOfRollout, releaseStep } from '../control-plane/training/release-canary.js';
import { parseRetrainingPolicy, type RetrainingPolicyInput } from '../control-plane/training/retraining-policy.js';
import { RETRAINING_ACTOR } from '../control-plane/training/trigger-starter.js';
import { MINUTE, RETRAINED, loopRig, testSigning, uploadV1, type LoopRig } from './helpers/training-loop.js';

const NORTH = ['n-1', 'n-2', 'n-3', 'n-4'];
const SOUTH = ['s-1', 's-2', 's-3', 's-4'];
const OPERATOR = { actor: 'tok_operator', clientRequestId: '' };

const policy = (over: Partial<RetrainingPolicyInput> = {}) =>
  parseRetrainingPolicy({
    onDrift: {},
    job: { trainer: 'ts-dense-head', gates: ['accuracy-delta>=0.05'] },
    rollout: { waves: [50, 100], bake: '10m', minDevices: 1, gates: ['error-rate-delta<=0.05'] },
    ...over,
  });

describe('retraining loop - the release path after the gate', () => {
  let rig: LoopRig;
  let signer: ReturnType<typeof testSigning>;

  /** v1 on every device's desired state aside, a north drift alert, and a worker that trains a better v2. */
  const retrainedV2 = async (over: Partial<RetrainingPolicyInput> = {}): Promise<string> => {
    signer = testSigning();
    rig = await loopRig({ signing: signer.signing });
    await uploadV1(rig.registry);
    await rig.enroll(NORTH, { cohort: 'north' });
    await rig.enroll(SOUTH, { cohort: 'south' });
    for (const id of NORTH) await rig.capture(id, 100);
    await rig.policies.save('vibration', policy(over), rig.clock.now(), 'tok_operator');
    rig.watcher.run();
    await rig.watcher.idle();
    rig.drift.set(1, 'north', 'alert');
    await rig.driftWatcher.evaluate();
    await rig.watcher.idle();
    const jobId = await rig.train(RETRAINED);
    expect(await rig.engine.get(jobId)).toMatchObject({ state: 'succeeded', resultVersion: 2 });
    return jobId;
  };

  afterEach(async () => rig?.close());

  it('a succeeded job starts a canary rollout whose first wave is the drifted cohort, signed for that cohort', async () => {
    const jobId = await retrainedV2();
    signer.sign('vibration', 2);
    await rig.loop.release.tick();

    expect(signer.asked).toEqual([{ model: 'vibration', version: 2, audience: 'cohort=north' }]);
    const job = await rig.engine.get(jobId);
    expect(job.release).toMatchObject({ state: 'rolling-out', version: 2, audience: 'cohort=north', rolloutId: expect.stringMatching(/^ro_/) });
    const rollout = await rig.rollouts.get(job.release!.rolloutId);
    expect(rollout).toMatchObject({
      state: 'progressing',
      wave: 0,
      plan: { model: 'vibration', version: 2, target: 'cohort=north', waves: [{ percent: 50, bakeMs: 10 * MINUTE, minDevices: 1 }, { percent: 100 }] },
    });
    expect([...rollout.targets].sort()).toEqual(NORTH);
    // Wave 1 went to north devices only, with v2.
    const deployed = rig.sent.filter((s) => s.desired.model?.version === 2).map((s) => s.deviceId);
    expect(deployed.sort()).toEqual(rollout.targets.slice(0, rollout.touched).sort());
    expect(rollout.touched).toBeGreaterThan(0);
    expect(rollout.touched).toBeLessThan(NORTH.length);
    for (const id of deployed) expect(NORTH).toContain(id);

    // Ticks later change nothing: the rollout is found again, not started twice.
    await rig.loop.release.tick();
    expect(await rig.rollouts.list({ model: 'vibration' })).toHaveLength(1);
    expect((await rig.engine.audit(jobId)).filter((e) => e.action.startsWith('release-')).map((e) => e.action)).toEqual(['release-rolling-out']);
  });

  it('awaiting a signature starts no rollout; signed later (after a restart), the next tick starts the canary', async () => {
    const jobId = await retrainedV2();
    await rig.loop.release.tick();
    await rig.loop.release.tick();
    expect((await rig.engine.get(jobId)).release).toMatchObject({ state: 'awaiting-signature', version: 2, audience: 'cohort=north', rolloutId: '' });
    expect(await rig.rollouts.list({ model: 'vibration' })).toEqual([]);
    expect(rig.sent.filter((s) => s.desired.model?.version === 2)).toEqual([]);
    // Asked on every tick, recorded once.
    expect(signer.asked).toHaveLength(2);
    expect((await rig.engine.audit(jobId)).filter((e) => e.action.startsWith('release-')).map((e) => e.action)).toEqual(['release-awaiting-signature']);

    await rig.restart();
    signer.sign('vibration', 2);
    rig.loop.release.run();
    await rig.loop.release.tick();
    const job = await rig.engine.get(jobId);
    expect(job.release).toMatchObject({ state: 'rolling-out' });
    expect((await rig.rollouts.get(job.release!.rolloutId)).plan.target).toBe('cohort=north');
  });

  it("a canary rollout that aborts marks the job's lineage with the rollout and why (the version, immutable, names the job)", async () => {
    const jobId = await retrainedV2();
    signer.sign('vibration', 2);
    await rig.loop.release.tick();
    const { rolloutId } = (await rig.engine.get(jobId)).release!;
    await rig.rollouts.command(rolloutId, 'abort', OPERATOR, 'north answers got worse');
    expect((await rig.rollouts.get(rolloutId)).state).toBe('aborted');

    // A restart between the abort and the next tick: the outcome is derived from what is stored.
    await rig.restart();
    await rig.loop.release.tick();
    const job = await rig.engine.get(jobId);
    expect(job.release).toMatchObject({ state: 'aborted', version: 2, rolloutId, reason: expect.stringContaining('north answers got worse') });
    const audit = (await rig.engine.audit(jobId)).filter((e) => e.action.startsWith('release-'));
    expect(audit.map((e) => e.action)).toEqual(['release-rolling-out', 'release-aborted']);
    expect(audit[1]).toMatchObject({ actor: 'system', details: { rolloutId, version: 2 } });
    // The version is not changed (versions are immutable); its lineage names the job that holds the outcome.
    expect((await rig.registry.get('vibration')).versions.map((v) => v.version)).toEqual([1, 2]);
    expect((await rig.registry.resolve('vibration', 2)).metadata).toMatchObject({ 'lineage.job_id': jobId, 'lineage.cohort': 'north' });
    // Settled: later ticks leave it alone.
    await rig.loop.release.tick();
    expect((await rig.engine.audit(jobId)).filter((e) => e.action.startsWith('release-'))).toHaveLength(2);
  });

  it('a canary wave that answers with errors aborts by its gate, rolls the touched devices back, and the job records why', async () => {
    const jobId = await retrainedV2();
    signer.sign('vibration', 2);
    await rig.loop.release.tick();
    const { rolloutId } = (await rig.engine.get(jobId)).release!;
    const started = await rig.rollouts.get(rolloutId);
    const canary = started.targets.slice(0, started.touched);
    const baseline = started.targets.slice(started.touched);
    expect(baseline.length).toBeGreaterThan(0);
    // v2 fails on the canary devices; v1 answers on the rest of the cohort (boot 2: new sequence numbers).
    const answers = (version: number, outcome: Outcome) =>
      Array.from({ length: 60 }, (_, i) => inferenceRecord({ seq: i + 1, boot: 2, timeMs: rig.clock.now() }, { version, outcome }));
    for (const id of canary) await rig.telemetry.commit(id, answers(2, Outcome.OUTCOME_ERROR), rig.clock.now());
    for (const id of baseline) await rig.telemetry.commit(id, answers(1, Outcome.OUTCOME_OK), rig.clock.now());

    rig.clock.advance(11 * MINUTE);
    await rig.rollouts.tick();
    const aborted = await rig.rollouts.get(rolloutId);
    expect(aborted).toMatchObject({ state: 'aborted', reason: expect.stringContaining('error-rate-delta') });
    expect(rig.sent.filter((s) => canary.includes(s.deviceId)).at(-1)?.desired.model?.version).toBe(1);

    await rig.loop.release.tick();
    expect((await rig.engine.get(jobId)).release).toMatchObject({ state: 'aborted', rolloutId, reason: aborted.reason });
  });

  it('a rollout started before a crash kept it from being recorded is found again, not started twice; promoted to the end, the release succeeds', async () => {
    const jobId = await retrainedV2();
    signer.sign('vibration', 2);
    const before = await rig.rollouts.start(canaryPlan(await rig.engine.get(jobId), policy().rollout), { actor: RETRAINING_ACTOR, clientRequestId: '' });
    await rig.restart();
    await rig.loop.release.tick();
    expect((await rig.engine.get(jobId)).release).toMatchObject({ state: 'rolling-out', rolloutId: before.id });
    expect(await rig.rollouts.list({ model: 'vibration' })).toHaveLength(1);

    await rig.rollouts.command(before.id, 'promote', OPERATOR);
    await rig.rollouts.command(before.id, 'promote', OPERATOR);
    expect((await rig.rollouts.get(before.id)).state).toBe('succeeded');
    await rig.loop.release.tick();
    expect((await rig.engine.get(jobId)).release).toMatchObject({ state: 'succeeded', rolloutId: before.id, reason: '' });
  });

  it('a policy with rollout.enabled false records the release skipped and asks for no signature', async () => {
    const jobId = await retrainedV2({ rollout: { enabled: false } });
    await rig.loop.release.tick();
    expect((await rig.engine.get(jobId)).release).toMatchObject({ state: 'skipped', reason: expect.stringContaining('rollout.enabled false') });
    expect(signer.asked).toEqual([]);
    expect(await rig.rollouts.list({ model: 'vibration' })).toEqual([]);
  });
});

describe('retraining loop - release decisions (pure)', () => {
  const job = (over: Record<string, unknown> = {}) =>
    ({
      id: 'tj_1',
      state: 'succeeded',
      resultVersion: 2,
      release: null,
      spec: { model: 'vibration', trigger: { cohortSelector: 'cohort=north' } },
      ...over,
    }) as unknown as Parameters<typeof releaseStep>[0];

  it('signs and plans a canary of the drifted cohort within the policy target; watches a running one; leaves others alone', () => {
    const stored = { policy: policy({ rollout: { target: 'site=plant-3', waves: [10, 100], bake: '5m', minDevices: 2, gates: ['drift'] } }) };
    expect(releaseStep(job(), stored)).toEqual({
      kind: 'sign',
      plan: {
        model: 'vibration',
        version: 2,
        target: 'cohort=north,site=plant-3',
        waves: [
          { percent: 10, bakeMs: 300_000, minDevices: 2 },
          { percent: 100, bakeMs: 300_000, minDevices: 2 },
        ],
        gates: [{ metric: 'drift', op: '<=', threshold: 1 }],
        failureLimit: 0,
      },
    });
    expect(releaseStep(job({ release: { state: 'rolling-out', rolloutId: 'ro_1' } }), stored)).toEqual({ kind: 'watch', rolloutId: 'ro_1' });
    expect(releaseStep(job({ release: { state: 'awaiting-signature' } }), stored).kind).toBe('sign');
    expect(releaseStep(job({ release: { state: 'aborted' } }), stored).kind).toBe('none');
    expect(releaseStep(job({ spec: { model: 'vibration' } }), stored).kind).toBe('none');
    expect(releaseStep(job({ resultVersion: 0 }), stored).kind).toBe('none');
    expect(releaseStep(job({ state: 'rejected' }), stored).kind).toBe('none');
    expect(releaseStep(job(), undefined).kind).toBe('skip');
  });

  it('settles on a finished rollout only', () => {
    expect(releaseOfRollout({ state: 'progressing', reason: '' })).toBeUndefined();
    expect(releaseOfRollout({ state: 'paused', reason: 'inconclusive' })).toBeUndefined();
    expect(releaseOfRollout({ state: 'succeeded', reason: '' })).toEqual({ state: 'succeeded', reason: '' });
    expect(releaseOfRollout({ state: 'aborted', reason: 'wave 1 failed its gates' })).toEqual({ state: 'aborted', reason: 'wave 1 failed its gates' });
  });

  it('refuses a rollout section with bad waves or gates (RETRAINING_POLICY_INVALID) and defaults to the waves rollout start uses', () => {
    const code = (rollout: unknown) => {
      try {
        policy({ rollout } as Partial<RetrainingPolicyInput>);
        return 'accepted';
      } catch (err) {
        return (err as { code: string }).code;
      }
    };
    expect(code({ waves: [50, 10, 100] })).toBe('RETRAINING_POLICY_INVALID');
    expect(code({ waves: [10, 50] })).toBe('RETRAINING_POLICY_INVALID');
    expect(code({ gates: ['speed>=1'] })).toBe('RETRAINING_POLICY_INVALID');
    expect(code({ target: '$$$' })).toBe('RETRAINING_POLICY_INVALID');
    expect(parseRetrainingPolicy({ onDrift: {}, job: { trainer: 'ts-dense-head' } }).rollout).toEqual({
      enabled: true,
      target: '',
      waves: [1, 10, 50, 100],
      bake: 600_000,
      minDevices: 5,
      gates: [],
      failureLimit: 0,
    });
  });
});
