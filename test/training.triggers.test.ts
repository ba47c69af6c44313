/**
 * Retraining triggers: the pure policy decision, and the trigger watcher over a real SQLite file,
 * real drift events (recorded and announced by a real DriftWatcher over a scripted status source)
 * and a ManualClock. The training job starter is a stand-in that records its calls and, like the
 * training service, answers a repeated client request id with the job it already started.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { silentLogger } from '../common/logger.js';
import { DriftStatus } from '../common/proto/driftline/v1/drift.js';
import { DriftWatcher, type DriftStatusSource } from '../control-plane/drift/drift-watcher.js';
import type { DriftLevel } from '../control-plane/drift/ports.js';
import { openDatabase, type Database } from '../control-plane/store/sqlite/database.js';
import { SqliteDriftEvents } from '../control-plane/store/sqlite/drift-events.js';
import { SqliteRetrainingPolicyRepository } from '../control-plane/store/sqlite/retraining-policy-repository.js';
import {
  compileCron,
  decide,
  latestScheduledMoment,
  nextScheduledMoment,
  parseRetrainingPolicy,
  type DecisionFacts,
  type RetrainingPolicyInput,
  type TrainingJobRequest,
} from '../control-plane/training/retraining-policy.js';
import type { LabelledSampleCounter, TrainingJobStarter } from '../control-plane/training/retraining-ports.js';
import { TriggerWatcher, unavailableTrainingJobs } from '../control-plane/training/trigger-watcher.js';

const HOUR = 3_600_000;
const MINUTE = 60_000;
/** 2026-01-05T00:00:00Z, a Monday. */
const MONDAY = Date.UTC(2026, 0, 5);

const template = { trainer: 'ts-dense-head', gates: ['accuracy-delta>=0.01'] };
const policyOf = (input: Partial<RetrainingPolicyInput>) => parseRetrainingPolicy({ job: template, ...input });
const stored = (input: Partial<RetrainingPolicyInput>) => ({ model: 'vibration', version: 3, policy: policyOf(input) });
const alert = (over: Partial<{ id: number; version: number; cohort: string; status: DriftLevel }> = {}) => ({
  kind: 'drift' as const,
  event: { id: 7, atMs: MONDAY, model: 'vibration', version: 2, cohort: 'north', status: 'alert' as DriftLevel, ...over },
});
const facts = (over: Partial<DecisionFacts> = {}): DecisionFacts => ({ trigger: alert(), runningJob: undefined, lastFiredAtMs: undefined, ...over });

describe('retraining policy - decide', () => {
  it('fires on a drift alert with a job request derived from the trigger, narrowed to the drifted cohort', () => {
    const d = decide(stored({ onDrift: {}, job: { ...template, dataset: { selector: 'site=plant-3', since: '3d' } } }), facts(), MONDAY);
    expect(d).toMatchObject({ fire: true, reason: 'drift_alert' });
    if (!d.fire) throw new Error('expected to fire');
    expect(d.jobRequest).toMatchObject({
      clientRequestId: 'retrain/vibration/drift-7',
      model: 'vibration',
      baseVersion: 2,
      trainer: 'ts-dense-head',
      gates: ['accuracy-delta>=0.01'],
      resources: { gpus: 0, gpuMemoryBytes: 0, maxDurationMs: 2 * HOUR },
      dataset: { model: 'vibration', sinceMs: MONDAY - 3 * 24 * HOUR, selector: 'site=plant-3,cohort=north', labelledOnly: true, replayParent: true },
      trigger: { kind: 'drift', key: 'drift-7', cohort: 'north', driftEventId: 7, policyVersion: 3 },
    });
  });

  it('says disabled for a disabled policy, before anything else', () => {
    expect(decide(stored({ enabled: false, onDrift: {} }), facts({ runningJob: { jobId: 'j1' } }), MONDAY)).toMatchObject({ fire: false, reason: 'disabled' });
  });

  it('says no_trigger for a trigger the policy does not watch: no drift trigger, another version, another cohort, a level below it', () => {
    expect(decide(stored({ onSchedule: { cron: '0 3 * * *' } }), facts(), MONDAY)).toMatchObject({ fire: false, reason: 'no_trigger' });
    expect(decide(stored({ onDrift: { version: 1 } }), facts(), MONDAY)).toMatchObject({ fire: false, reason: 'no_trigger' });
    expect(decide(stored({ onDrift: { cohorts: ['south'] } }), facts(), MONDAY)).toMatchObject({ fire: false, reason: 'no_trigger' });
    expect(decide(stored({ onDrift: {} }), facts({ trigger: alert({ status: 'warn' }) }), MONDAY)).toMatchObject({ fire: false, reason: 'no_trigger' });
    expect(decide(stored({ onDrift: { minLevel: 'warn' } }), facts({ trigger: alert({ status: 'warn' }) }), MONDAY)).toMatchObject({ fire: true });
    expect(decide(stored({ onDrift: {} }), facts({ trigger: { kind: 'schedule', momentMs: MONDAY } }), MONDAY)).toMatchObject({ reason: 'no_trigger' });
  });

  it('says not_enough_labels below N new labelled samples and fires at N', () => {
    const policy = stored({ onLabelled: { minNewSamples: 500 } });
    const labelled = (newSamples: number) => facts({ trigger: { kind: 'labelled', newSamples, sinceMs: MONDAY - HOUR } });
    expect(decide(policy, labelled(499), MONDAY)).toMatchObject({ fire: false, reason: 'not_enough_labels', details: { newSamples: 499, needed: 500 } });
    const fired = decide(policy, labelled(500), MONDAY);
    expect(fired).toMatchObject({ fire: true, reason: 'new_labels' });
    expect(fired.fire && fired.jobRequest.clientRequestId).toBe(`retrain/vibration/labelled-since-${MONDAY - HOUR}`);
  });

  it('says job_running while the model has a job, cooldown within the cooldown of the last one, dataset_too_small below the minimum', () => {
    const policy = stored({ onDrift: {}, cooldown: '6h', minDatasetRows: 200 });
    expect(decide(policy, facts({ runningJob: { jobId: 'j1' }, datasetRows: 1000 }), MONDAY)).toMatchObject({
      fire: false,
      reason: 'job_running',
      details: { jobId: 'j1' },
    });
    expect(decide(policy, facts({ lastFiredAtMs: MONDAY - 5 * HOUR, datasetRows: 1000 }), MONDAY)).toMatchObject({
      fire: false,
      reason: 'cooldown',
      details: { untilMs: MONDAY + HOUR },
    });
    expect(decide(policy, facts({ lastFiredAtMs: MONDAY - 6 * HOUR, datasetRows: 199 }), MONDAY)).toMatchObject({
      fire: false,
      reason: 'dataset_too_small',
      details: { rows: 199, needed: 200 },
    });
    expect(decide(policy, facts({ lastFiredAtMs: MONDAY - 6 * HOUR, datasetRows: 200 }), MONDAY)).toMatchObject({ fire: true });
  });

  it('refuses a policy without a trigger, a malformed cron, a six-field cron and a bad gate with RETRAINING_POLICY_INVALID', () => {
    const code = (input: unknown) => {
      try {
        parseRetrainingPolicy(input);
        return 'accepted';
      } catch (err) {
        return (err as DriftlineError).code;
      }
    };
    expect(code({ job: template })).toBe('RETRAINING_POLICY_INVALID');
    expect(code({ job: template, onSchedule: { cron: '61 * * * *' } })).toBe('RETRAINING_POLICY_INVALID');
    expect(code({ job: template, onSchedule: { cron: '0 0 3 * * *' } })).toBe('RETRAINING_POLICY_INVALID');
    expect(code({ job: { ...template, gates: ['accuracy-delta'] }, onDrift: {} })).toBe('RETRAINING_POLICY_INVALID');
    expect(code({ job: { trainer: 'Bad Trainer!' }, onDrift: {} })).toBe('RETRAINING_POLICY_INVALID');
    expect(code({ job: template, onDrift: {}, cooldown: '6 hours' })).toBe('RETRAINING_POLICY_INVALID');
    expect(code({ job: template, onDrift: {}, cooldown: '6h' })).toBe('accepted');
  });

  it('finds the latest and the next moment of a cron schedule in UTC', () => {
    const nightly = compileCron('0 3 * * *');
    expect(latestScheduledMoment(nightly, MONDAY - 24 * HOUR, MONDAY + 2 * HOUR)).toBe(MONDAY - 21 * HOUR);
    expect(latestScheduledMoment(nightly, MONDAY, MONDAY + 2 * HOUR)).toBeUndefined();
    expect(latestScheduledMoment(nightly, MONDAY, MONDAY + 3 * HOUR)).toBe(MONDAY + 3 * HOUR);
    expect(nextScheduledMoment(nightly, MONDAY + 3 * HOUR)).toBe(MONDAY + 27 * HOUR);
    // Weekdays only: after Friday 03:00 comes Monday 03:00.
    const weekdays = compileCron('0 3 * * mon-fri');
    expect(nextScheduledMoment(weekdays, MONDAY + 4 * 24 * HOUR + 3 * HOUR)).toBe(MONDAY + 7 * 24 * HOUR + 3 * HOUR);
    // The last day of the month.
    expect(nextScheduledMoment(compileCron('30 23 L * *'), MONDAY)).toBe(Date.UTC(2026, 0, 31, 23, 30));
  });
});

/** A scripted drift status source: the test sets each (version, cohort) level; the real watcher records the changes. */
function scriptedDrift() {
  const levels = new Map<string, DriftLevel>();
  const source: DriftStatusSource = {
    versions: async () => [...new Set([...levels.keys()].map((k) => k.split('/')[0]!))].map((v) => ({ model: 'vibration', version: Number(v) })),
    status: async (_model, version) =>
      [...levels.entries()]
        .filter(([k]) => k.startsWith(`${version}/`))
        .map(([k, status]) => DriftStatus.fromPartial({ model: 'vibration', version, cohort: k.split('/')[1]!, status, rows: 500, devices: 5 })),
  };
  return { source, set: (version: number, cohort: string, level: DriftLevel) => levels.set(`${version}/${cohort}`, level) };
}

/** The training service's stand-in: records calls; one job per client request id; the test ends jobs. */
function recordingStarter() {
  const calls: TrainingJobRequest[] = [];
  const jobs = new Map<string, { jobId: string; model: string; active: boolean }>();
  const starter: TrainingJobStarter = {
    async start(request) {
      calls.push(request);
      let job = jobs.get(request.clientRequestId);
      if (!job) {
        job = { jobId: `job-${jobs.size + 1}`, model: request.model, active: true };
        jobs.set(request.clientRequestId, job);
      }
      return { jobId: job.jobId };
    },
    async activeJob(model) {
      const job = [...jobs.values()].find((j) => j.model === model && j.active);
      const id = [...jobs.entries()].find(([, j]) => j === job)?.[0];
      return job ? { jobId: job.jobId, clientRequestId: id! } : undefined;
    },
  };
  return { starter, calls, jobs, finishAll: () => jobs.forEach((j) => (j.active = false)) };
}

describe('trigger watcher', () => {
  let dir: string;
  let file: string;
  let db: Database;
  let clock: ManualClock;
  let drift: ReturnType<typeof scriptedDrift>;
  let driftWatcher: DriftWatcher;
  let policies: SqliteRetrainingPolicyRepository;
  let labelled: number;
  const counter: LabelledSampleCounter = { count: async () => labelled };
  const watchers: TriggerWatcher[] = [];

  const open = () => {
    db = openDatabase(file);
    policies = new SqliteRetrainingPolicyRepository(db);
    driftWatcher = DriftWatcher.create({
      source: drift.source,
      store: new SqliteDriftEvents(db),
      clock,
      logger: silentLogger(),
      evaluateIntervalMs: 30_000,
      windowMs: 15 * MINUTE,
      eventRetentionMs: 90 * 24 * HOUR,
    });
  };
  const watcher = (jobs: TrainingJobStarter, store = policies) => {
    const w = TriggerWatcher.create({
      policies: store,
      driftEvents: driftWatcher,
      labelledSamples: counter,
      jobs,
      clock,
      logger: silentLogger(),
      tickIntervalMs: MINUTE,
      driftCatchUpMs: 24 * HOUR,
      scheduleCatchUpMs: HOUR,
      decisionRetentionMs: 180 * 24 * HOUR,
    });
    watchers.push(w);
    return w;
  };
  const setPolicy = (input: Partial<RetrainingPolicyInput>) => policies.save('vibration', policyOf(input), clock.now(), 'tok-operator');
  const decisions = async () => (await policies.listDecisions({ model: 'vibration' }, 100)).reverse();

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-triggers-'));
    file = join(dir, 'control-plane.db');
    clock = new ManualClock(MONDAY);
    drift = scriptedDrift();
    labelled = 0;
    open();
  });

  afterEach(async () => {
    for (const w of watchers.splice(0)) await w.shutdown();
    await driftWatcher.shutdown();
    if (db.open) db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('drift alerts within the cooldown start exactly one job: the first fires, the rest record job_running, then cooldown', async () => {
    await setPolicy({ onDrift: {}, cooldown: '6h' });
    const { starter, calls, finishAll } = recordingStarter();
    const w = watcher(starter);
    w.run();
    await w.idle();

    drift.set(2, 'north', 'alert');
    await driftWatcher.evaluate();
    await w.idle();
    clock.advance(MINUTE);
    drift.set(2, 'south', 'alert');
    drift.set(2, '', 'alert');
    await driftWatcher.evaluate();
    await w.idle();
    // The job ended; one more alert an hour later is still within the cooldown.
    finishAll();
    clock.advance(HOUR);
    drift.set(2, 'east', 'alert');
    await driftWatcher.evaluate();
    await w.idle();

    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ model: 'vibration', baseVersion: 2, dataset: { selector: 'cohort=north' }, trigger: { kind: 'drift', cohort: 'north' } });
    const log = await decisions();
    expect(log.map((d) => [d.trigger, d.fired, d.reason])).toEqual([
      ['drift', true, 'drift_alert'],
      ['drift', false, 'job_running'],
      ['drift', false, 'job_running'],
      ['drift', false, 'cooldown'],
    ]);
    expect(log[0]).toMatchObject({ jobId: 'job-1', clientRequestId: calls[0]!.clientRequestId, policyVersion: 1 });
    expect(log[1]!.details).toMatchObject({ jobId: 'job-1' });

    // Past the cooldown, the next alert starts a second job.
    clock.advance(6 * HOUR);
    drift.set(2, 'west', 'alert');
    await driftWatcher.evaluate();
    await w.idle();
    expect(calls).toHaveLength(2);
  });

  it('a recovery (ok) or a warn is not a trigger; an alert of a cohort the policy does not watch records no_trigger', async () => {
    await setPolicy({ onDrift: { cohorts: ['north'] } });
    const { starter, calls } = recordingStarter();
    const w = watcher(starter);
    w.run();
    drift.set(2, 'south', 'warn');
    await driftWatcher.evaluate();
    drift.set(2, 'south', 'alert');
    await driftWatcher.evaluate();
    await w.idle();
    expect(calls).toHaveLength(0);
    expect((await decisions()).map((d) => d.reason)).toEqual(['no_trigger']);
  });

  it('a schedule fires on the tick at its moment and not before', async () => {
    await setPolicy({ onSchedule: { cron: '0 3 * * *' } });
    const { starter, calls } = recordingStarter();
    const w = watcher(starter);
    w.run();
    await clock.advanceAsync(3 * HOUR - MINUTE);
    await w.idle();
    expect(calls).toHaveLength(0);
    expect(await decisions()).toEqual([]);

    await clock.advanceAsync(MINUTE);
    await w.idle();
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ clientRequestId: `retrain/vibration/schedule-${MONDAY + 3 * HOUR}`, baseVersion: 0 });
    // Later ticks of the same day decide nothing more.
    await clock.advanceAsync(HOUR);
    await w.idle();
    expect(calls).toHaveLength(1);
    expect((await decisions()).map((d) => [d.trigger, d.fired, d.reason])).toEqual([['schedule', true, 'schedule']]);
  });

  it('labelled samples below N record not_enough_labels once; at N a job starts; the next window counts from that job', async () => {
    await setPolicy({ onLabelled: { minNewSamples: 500 }, cooldown: '0s' });
    const { starter, calls, finishAll } = recordingStarter();
    const w = watcher(starter);
    w.run();
    labelled = 120;
    await clock.advanceAsync(5 * MINUTE);
    await w.idle();
    expect(calls).toHaveLength(0);
    expect((await decisions()).map((d) => [d.reason, d.details.newSamples])).toEqual([['not_enough_labels', 120]]);

    labelled = 500;
    await clock.advanceAsync(MINUTE);
    await w.idle();
    expect(calls).toHaveLength(1);
    expect(calls[0]!.trigger.key).toBe(`labelled-since-${MONDAY}`);
    const fired = (await decisions()).at(-1)!;
    expect(fired).toMatchObject({ fired: true, reason: 'new_labels', jobId: 'job-1' });

    // The counter now counts from the job's start; while that job runs, nothing more starts.
    finishAll();
    labelled = 10;
    await clock.advanceAsync(MINUTE);
    await w.idle();
    expect((await decisions()).at(-1)).toMatchObject({ reason: 'not_enough_labels', triggerKey: `labelled-since-${fired.atMs}` });
  });

  it('a minimum dataset below its rows records dataset_too_small', async () => {
    await setPolicy({ onSchedule: { cron: '*/5 * * * *' }, minDatasetRows: 200 });
    const { starter, calls } = recordingStarter();
    const w = watcher(starter);
    labelled = 150;
    w.run();
    await clock.advanceAsync(5 * MINUTE);
    await w.idle();
    expect(calls).toHaveLength(0);
    expect((await decisions()).map((d) => [d.reason, d.details.rows, d.details.needed])).toEqual([['dataset_too_small', 150, 200]]);
  });

  it('a running job blocks a second one whatever triggers it', async () => {
    await setPolicy({ onDrift: {}, onSchedule: { cron: '0 * * * *' }, cooldown: '0s' });
    const { starter, calls } = recordingStarter();
    const w = watcher(starter);
    w.run();
    drift.set(2, 'north', 'alert');
    await driftWatcher.evaluate();
    await w.idle();
    await clock.advanceAsync(HOUR);
    await w.idle();
    expect(calls).toHaveLength(1);
    expect((await decisions()).map((d) => [d.trigger, d.reason])).toEqual([
      ['drift', 'drift_alert'],
      ['schedule', 'job_running'],
    ]);
  });

  it('without a training service the decision records start_failed with TRAINING_SERVICE_UNAVAILABLE', async () => {
    await setPolicy({ onDrift: {} });
    const w = watcher(unavailableTrainingJobs);
    w.run();
    drift.set(2, 'north', 'alert');
    await driftWatcher.evaluate();
    await w.idle();
    expect(await decisions()).toMatchObject([{ fired: false, reason: 'start_failed', details: { code: 'TRAINING_SERVICE_UNAVAILABLE' } }]);
  });

  it('the decision log and the policy versions survive reopening the SQLite file', async () => {
    await setPolicy({ onDrift: {} });
    // The same policy again is no new version; a changed one is.
    await setPolicy({ onDrift: {} });
    await setPolicy({ onDrift: {}, cooldown: '1h' });
    const { starter } = recordingStarter();
    const w = watcher(starter);
    w.run();
    drift.set(2, 'north', 'alert');
    await driftWatcher.evaluate();
    await w.idle();
    await w.shutdown();
    await driftWatcher.shutdown();
    db.close();

    open();
    expect(await policies.current('vibration')).toMatchObject({ version: 2, createdAtMs: MONDAY, policy: { cooldown: HOUR } });
    expect(await decisions()).toMatchObject([{ fired: true, reason: 'drift_alert', jobId: 'job-1', policyVersion: 2, trigger: 'drift' }]);
  });

  it('a restarted watcher does not fire again for a trigger it decided, and after a crash before recording asks for the same job again', async () => {
    await setPolicy({ onDrift: {} });
    const { starter, calls, jobs, finishAll } = recordingStarter();
    const first = watcher(starter);
    first.run();
    drift.set(2, 'north', 'alert');
    await driftWatcher.evaluate();
    await first.idle();
    await first.shutdown();
    expect(calls).toHaveLength(1);

    // A new watcher over the same file reads the same events back: nothing new starts.
    const second = watcher(starter);
    second.run();
    await second.idle();
    await clock.advanceAsync(MINUTE);
    await second.idle();
    expect(calls).toHaveLength(1);
    await second.shutdown();

    // A crash between starting the job and recording the decision: the store refuses the write once.
    const crashOnce = () => {
      let failOnce = true;
      const crashing = Object.create(policies) as SqliteRetrainingPolicyRepository;
      crashing.recordDecision = (d) => {
        if (!failOnce) return policies.recordDecision(d);
        failOnce = false;
        return Promise.reject(new DriftlineError('STORE_FAILED', 'disk gone'));
      };
      return crashing;
    };
    const crashThenRestart = async (cohort: string, afterCrash: () => void) => {
      clock.advance(7 * HOUR);
      finishAll();
      const crashed = watcher(starter, crashOnce());
      crashed.run();
      drift.set(2, cohort, 'alert');
      await driftWatcher.evaluate();
      await crashed.idle();
      await crashed.shutdown();
      afterCrash();
      const restarted = watcher(starter);
      restarted.run();
      await restarted.idle();
      await restarted.shutdown();
    };
    // The job it started still runs: the restarted watcher knows it by its client request id and records it.
    await crashThenRestart('south', () => undefined);
    expect(calls).toHaveLength(2);
    expect((await decisions()).at(-1)).toMatchObject({ fired: true, reason: 'drift_alert', jobId: 'job-2', details: { recovered: true } });
    // The job already ended: the restarted watcher asks again with the same id and gets the same job.
    await crashThenRestart('east', finishAll);
    expect(calls).toHaveLength(4);
    expect(calls[3]!.clientRequestId).toBe(calls[2]!.clientRequestId);
    expect(jobs.size).toBe(3);
    expect((await decisions()).filter((d) => d.fired).map((d) => d.jobId)).toEqual(['job-1', 'job-2', 'job-3']);
  });

  it('the store refuses a second fired decision for the same trigger (REQUEST_ID_REUSED)', async () => {
    const row = {
      model: 'vibration',
      atMs: MONDAY,
      trigger: 'drift' as const,
      triggerKey: 'drift-1',
      fired: true,
      reason: 'drift_alert' as const,
      details: {},
      jobId: 'job-1',
      clientRequestId: 'retrain/vibration/drift-1',
      policyVersion: 1,
    };
    await policies.recordDecision(row);
    await expect(policies.recordDecision(row)).rejects.toMatchObject({ code: 'REQUEST_ID_REUSED' });
  });

  it("retention deletes old decisions but keeps each model's last fired one, which the cooldown and the labelled window count from", async () => {
    const base = { trigger: 'drift' as const, details: {}, clientRequestId: 'x', policyVersion: 1 };
    await policies.recordDecision({ ...base, model: 'vibration', atMs: MONDAY, triggerKey: 'drift-1', fired: true, reason: 'drift_alert', jobId: 'job-1' });
    await policies.recordDecision({ ...base, model: 'vibration', atMs: MONDAY + 1, triggerKey: 'drift-2', fired: false, reason: 'cooldown', jobId: '' });
    expect(await policies.pruneDecisionsOlderThan(MONDAY + HOUR)).toBe(1);
    expect((await policies.listDecisions({}, 10)).map((d) => d.triggerKey)).toEqual(['drift-1']);
  });

  it('lists decisions newest first in pages', async () => {
    for (let i = 1; i <= 5; i++) {
      await policies.recordDecision({
        model: 'vibration',
        atMs: MONDAY + i,
        trigger: 'schedule',
        triggerKey: `schedule-${i}`,
        fired: false,
        reason: 'cooldown',
        details: {},
        jobId: '',
        clientRequestId: `retrain/vibration/schedule-${i}`,
        policyVersion: 1,
      });
    }
    const page1 = await policies.listDecisions({ model: 'vibration' }, 2);
    const page2 = await policies.listDecisions({ model: 'vibration', beforeId: page1.at(-1)!.id }, 2);
    const page3 = await policies.listDecisions({ model: 'vibration', beforeId: page2.at(-1)!.id }, 2);
    expect([...page1, ...page2, ...page3].map((d) => d.triggerKey)).toEqual(['schedule-5', 'schedule-4', 'schedule-3', 'schedule-2', 'schedule-1']);
  });
});
