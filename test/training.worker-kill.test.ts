import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ATTEMPTS_DIR, processAlive } from '../worker/attempt-files.js';
import type { WorkerEvent } from '../worker/training-worker.js';
import { startProcess, stopProcess, waitFor, type RunningProcess } from './helpers/processes.js';
import { LIMITS } from './helpers/training.js';
import { workerRig, type WorkerRig } from './helpers/worker-rig.js';

const alive = processAlive;

/** Reports one epoch, then "trains" without printing (so it outlives a killed worker instead of dying on a closed pipe). */
const SLOW_TRAINER = `
process.stdout.write(JSON.stringify({ type: 'progress', epoch: 1, epochs: 100, loss: 0.9, metrics: {} }) + '\\n');
setInterval(() => {}, 1000);
`;

describe('training worker - a worker killed with SIGKILL mid-training', () => {
  let w: WorkerRig;
  let child: RunningProcess | undefined;
  let orphan: number | undefined;
  beforeEach(async () => {
    w = await workerRig();
  });
  afterEach(async () => {
    await stopProcess(child, 'SIGKILL');
    if (orphan && alive(orphan)) process.kill(-orphan, 'SIGKILL');
    await w.close();
  });

  it('loses its lease: the job is queued again, a second worker finishes it (stopping the orphaned trainer), exactly one version is registered', async () => {
    const job = await w.start();
    const script = join(w.rig.dir, 'slow-trainer.mjs');
    writeFileSync(script, SLOW_TRAINER);
    const dataset = (await w.rig.datasets.describe(w.datasetId))!;
    const config = join(w.rig.dir, 'worker.json');
    writeFileSync(
      config,
      JSON.stringify({ dir: w.rig.dir, file: w.rig.file, workDir: w.workDir, limits: LIMITS, dataset, trainerScript: script, trainer: 'typescript' }),
    );
    // The worker process runs on the same database file and artifact folder, on the wall clock.
    child = await startProcess('test/fixtures/worker-over-sqlite.ts', [config], /"type":"trainer-started".*"pid":(\d+)/, {
      nodeArgs: ['--import', 'tsx'],
      timeoutMs: 60_000,
    });
    orphan = Number(child.ready[1]);
    await waitFor(
      () => w.rig.engine.get(job.id),
      (j) => j.state === 'running' && j.progress?.epoch === 1,
      { timeoutMs: 30_000, what: 'the heartbeat with the first epoch' },
    );
    const leased = await w.rig.engine.get(job.id);
    child.child.kill('SIGKILL');
    await child.exited;
    // Its trainer runs in a process group of its own: the kill did not reach it.
    expect(alive(orphan)).toBe(true);

    // No heartbeat for longer than the lease ttl (the child leased on the wall clock): the sweep re-queues the job.
    w.rig.clock.advance(leased.lease!.expiresAtMs + 1 - w.rig.clock.now());
    await w.rig.engine.sweep();
    expect(await w.rig.engine.get(job.id)).toMatchObject({ state: 'queued', attempt: 2, errorCode: 'TRAINING_LEASE_LOST', lease: null });

    // A second worker on the same work directory cleans up after the first, then runs the real trainer.
    const events: WorkerEvent[] = [];
    await w.worker({ onEvent: (e) => events.push(e) });
    expect(alive(orphan)).toBe(false);
    const final = await waitFor(
      () => w.rig.engine.get(job.id),
      (j) => ['succeeded', 'failed', 'rejected'].includes(j.state),
      { timeoutMs: 90_000, what: 'the job to end' },
    );
    await w.rig.engine.settled();
    expect(final.state, final.reason).toBe('succeeded');
    expect(await w.rig.engine.get(job.id)).toMatchObject({ attempt: 2, resultVersion: 2, candidate: { attempt: 2 } });
    expect((await w.rig.registry.get('vibration')).versions.map((v) => v.version)).toEqual([1, 2]);
    expect(events.filter((e) => e.type === 'attempt-ended')).toEqual([expect.objectContaining({ attempt: 2, outcome: 'completed' })]);
    const audit = await w.rig.engine.audit(job.id);
    expect(audit.map((a) => a.action)).toContain('lease-expired');
    expect(existsSync(join(w.workDir, ATTEMPTS_DIR)) && readdirSync(join(w.workDir, ATTEMPTS_DIR))).toEqual([]);
  }, 120_000);
});
