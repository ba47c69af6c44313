/**
 * WatchTrainingJob's end for a passing candidate: the engine commits `succeeded`, then the sink
 * registers the version in a second step. A watch must not end (nor show `succeeded`) in between:
 * its last update names the version, or the failed job when the sink could not register it.
 * Real SQLite, registry and onnxruntime gate; the sink is the real one behind a latch the test opens.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { TrainingJobUpdate } from '../control-plane/training/engine.js';
import type { CandidateSink } from '../control-plane/training/ports.js';
import { DriftlineError } from '../common/errors.js';
import { GOOD_MODEL, PARENT_MODEL, chunksOf, gridSplit, sha256, trainingRig, type TrainingRig } from './helpers/training.js';

const WORKER_TOKEN = 'tok_worker';
const OPERATOR = { actor: 'tok_operator', clientRequestId: '' };
const WORKER = { name: 'a', gpus: [], cpu: 4, memoryBytes: 8e9, trainers: ['head'], version: 'test' };

/** A sink that, once asked, waits for open() before it registers (or fails, as told). */
function latchedSink(fail = false) {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  const state = { asked: false };
  const wrap = (base: CandidateSink): CandidateSink => ({
    async accept(input) {
      state.asked = true;
      await opened;
      if (fail) throw new DriftlineError('STORE_FAILED', 'the registry disk is full');
      return base.accept(input);
    },
  });
  return { wrap, open, state };
}

const until = async (condition: () => boolean | Promise<boolean>): Promise<void> => {
  while (!(await condition())) await new Promise((resolve) => setImmediate(resolve));
};

describe('training engine - the watch of a succeeded job', () => {
  let rig: TrainingRig | undefined;
  afterEach(() => rig?.close());

  /** A job whose attempt completed with a passing candidate, its watch started before the lease. */
  async function watchedPassingJob(sink: ReturnType<typeof latchedSink>) {
    rig = await trainingRig({ sink: sink.wrap });
    const r = rig;
    await r.registry.upload(
      { name: 'vibration', sizeBytes: PARENT_MODEL.length, sha256: sha256(PARENT_MODEL), description: '', metadata: {} },
      chunksOf(PARENT_MODEL),
    );
    const datasetId = await r.datasets.add('vibration', { test: gridSplit(0.2), regression: gridSplit(0.25, 0.05) });
    const job = await r.engine.start({ model: 'vibration', baseVersion: 1, datasetId, trainer: 'head', gates: ['accuracy-delta>=0'] }, OPERATOR);
    const seen: TrainingJobUpdate[] = [];
    let ended = false;
    const watching = (async () => {
      for await (const update of r.engine.watch(job.id)) seen.push(update);
      ended = true;
    })();
    await until(() => seen.length >= 1);
    const w = await r.engine.registerWorker(WORKER, WORKER_TOKEN);
    const { leaseId } = (await r.engine.lease(w.id, WORKER_TOKEN))!;
    await r.engine.heartbeat(leaseId, { progress: { epoch: 1, loss: 0.2, metrics: {} }, logLines: ['epoch 1'] }, WORKER_TOKEN);
    const candidate = await r.engine.uploadCandidate({ leaseId, sizeBytes: GOOD_MODEL.length, sha256: sha256(GOOD_MODEL) }, chunksOf(GOOD_MODEL), WORKER_TOKEN);
    await r.engine.complete(leaseId, candidate.id, { loss: 0.1 }, WORKER_TOKEN);
    // The gate passed and `succeeded` is committed; the sink holds the registration.
    await until(() => sink.state.asked);
    expect(await r.engine.get(job.id)).toMatchObject({ state: 'succeeded', resultVersion: 0 });
    return { r, job, seen, watching, isEnded: () => ended };
  }

  it('ends only once the version is recorded: the last update carries it, and none shows succeeded without it', async () => {
    const sink = latchedSink();
    const { r, job, seen, watching, isEnded } = await watchedPassingJob(sink);
    // Give the watch every chance to (wrongly) report the half-recorded job: it has heard the commit.
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(isEnded()).toBe(false);
    expect(seen.filter((u) => u.job.state === 'succeeded')).toEqual([]);
    sink.open();
    await watching;
    await r.engine.settled();
    const last = seen.at(-1)!.job;
    expect(last).toMatchObject({ id: job.id, state: 'succeeded', resultVersion: 2, evaluation: { verdict: 'pass' } });
    expect(seen.filter((u) => u.job.state === 'succeeded' && u.job.resultVersion === 0)).toEqual([]);
    expect(seen.flatMap((u) => u.logLines.map((l) => l.text))).toEqual(['epoch 1']);
  });

  it('ends with the failed job when the sink cannot register the candidate (TRAINING_REGISTRATION_FAILED)', async () => {
    const sink = latchedSink(true);
    const { r, job, seen, watching } = await watchedPassingJob(sink);
    sink.open();
    await watching;
    await r.engine.settled();
    const last = seen.at(-1)!.job;
    expect(last).toMatchObject({ state: 'failed', errorCode: 'TRAINING_REGISTRATION_FAILED', resultVersion: 0, evaluation: { verdict: 'pass' } });
    expect(last.reason).toMatch(/could not be registered as a version: STORE_FAILED: the registry disk is full/);
    expect(seen.filter((u) => u.job.state === 'succeeded')).toEqual([]);
    expect(await r.engine.get(job.id)).toMatchObject({ state: 'failed', errorCode: 'TRAINING_REGISTRATION_FAILED' });
    const audit = (await r.engine.audit(job.id)).map((e) => [e.action, e.fromState, e.toState]);
    expect(audit.slice(-2)).toEqual([
      ['accept', 'evaluating', 'succeeded'],
      ['register-failed', 'succeeded', 'failed'],
    ]);
  });

  it('a watch that starts after the job ended gets the one final update', async () => {
    const sink = latchedSink();
    const { r, job, watching } = await watchedPassingJob(sink);
    sink.open();
    await watching;
    const late: TrainingJobUpdate[] = [];
    for await (const update of r.engine.watch(job.id)) late.push(update);
    expect(late.map((u) => [u.job.state, u.job.resultVersion])).toEqual([['succeeded', 2]]);
  });
});
