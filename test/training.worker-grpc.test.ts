/**
 * The GPU worker over the real gRPC API (`driftline serve`'s composition on an OS-chosen port,
 * SQLite, artifact store, onnxruntime gate, a ManualClock for leases): the worker loop through
 * its gRPC adapter, and `driftline worker` processes, one of them killed with SIGKILL mid-training.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { ModelServiceService } from '../common/proto/driftline/v1/models.js';
import { TrainingServiceService, type StartTrainingJobRequest } from '../common/proto/driftline/v1/learning.js';
import { ATTEMPTS_DIR, processAlive } from '../worker/attempt-files.js';
import { builtInTrainerCommand } from '../worker/built-in-trainers.js';
import { grpcWorkerApi } from '../worker/grpc/grpc-worker-api.js';
import { TrainingWorker, type WorkerEvent } from '../worker/training-worker.js';
import { startProcess, stopProcess, waitFor, type RunningProcess } from './helpers/processes.js';
import { drifted, startTrainingApi, type TrainingApiRig } from './helpers/training-api.js';

const LEASE_TTL_MS = 3_000;

/** Reports one epoch, then "trains" without printing (so it outlives a killed worker instead of dying on a closed pipe). */
const SLOW_TRAINER = `
process.stdout.write(JSON.stringify({ type: 'progress', epoch: 1, epochs: 100, loss: 0.9, metrics: {} }) + '\\n');
setInterval(() => {}, 1000);
`;

describe('training worker - over the gRPC WorkerService', () => {
  let dir: string;
  let rig: TrainingApiRig;
  let dataset: { id: string; sha256: string };
  const processes: RunningProcess[] = [];
  const workers: TrainingWorker[] = [];
  let orphan: number | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-worker-grpc-'));
    rig = await startTrainingApi(dir, { training: { minSplitRows: 20, leaseTtl: `${LEASE_TTL_MS}ms`, sweepInterval: '1s', workerPollInterval: '200ms' } });
    dataset = await drifted(rig, { rows: 600 });
  });
  afterEach(async () => {
    for (const p of processes.splice(0)) await stopProcess(p, 'SIGKILL');
    await Promise.all(workers.splice(0).map((w) => w.shutdown(0)));
    if (orphan && processAlive(orphan)) process.kill(-orphan, 'SIGKILL');
    await rig.cp.training.settled();
  });
  afterAll(async () => {
    await rig?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const training = () => rig.operator.service(TrainingServiceService);
  const start = (over: Partial<StartTrainingJobRequest> = {}) =>
    training().startTrainingJob({
      model: 'vibration',
      baseVersion: 1,
      clientRequestId: '',
      datasetId: dataset.id,
      trainer: 'typescript',
      hyperparametersJson: '{"epochs": 8, "learning_rate": 0.005, "seed": 3}',
      resources: undefined,
      maxDurationSeconds: 0,
      maxAttempts: 0,
      gates: ['accuracy-delta>=0.01'],
      ...over,
    });
  const versions = async () => (await rig.viewer.service(ModelServiceService).getModel({ name: 'vibration' })).versions.map((v) => v.version);
  const until = (id: string, accept: (state: string) => boolean, what: string) =>
    waitFor(
      () => training().getTrainingJob({ id }),
      (j) => accept(j.state),
      { timeoutMs: 90_000, what },
    );

  function worker(token: string, workDir: string, events: WorkerEvent[] = []): TrainingWorker {
    const w = TrainingWorker.create({
      api: grpcWorkerApi({ address: rig.cp.addresses.grpc, token }),
      name: `in-process-${workers.length + 1}`,
      workDir,
      trainers: { typescript: () => builtInTrainerCommand('typescript') },
      resources: { gpus: [], cpu: 2, memoryBytes: 4e9 },
      version: 'test',
      logger: silentLogger(),
      retry: { initialMs: 50, maxMs: 200 },
      onEvent: (e) => events.push(e),
    });
    workers.push(w);
    return w;
  }

  it('runs a job through its gRPC adapter (register, lease, download, heartbeat, upload, complete): v2 is registered, the log holds the epochs', async () => {
    const before = await versions();
    const job = await start();
    const events: WorkerEvent[] = [];
    await worker(rig.tokens.worker, mkdtempSync(join(dir, 'work-')), events).run();
    const done = await until(job.id, (s) => ['succeeded', 'failed', 'rejected'].includes(s), 'the job to end');
    await rig.cp.training.settled();
    const final = await training().getTrainingJob({ id: job.id });
    expect(done.state, final.reason).toBe('succeeded');
    expect(final.resultVersion).toBe(Math.max(...before) + 1);
    expect(await versions()).toEqual([...before, final.resultVersion]);
    expect(events.filter((e) => e.type === 'attempt-ended')).toEqual([expect.objectContaining({ outcome: 'completed' })]);
    const { lines } = await rig.viewer.service(TrainingServiceService).getTrainingJobLogs({ id: job.id, attempt: 0, tail: 0 });
    expect(lines.some((l) => /^epoch \d+\/8 loss /.test(l.text))).toBe(true);
    expect(final.progress?.metrics.epochs).toBe(8);
  }, 120_000);

  it('is refused with an operator token (ROLE_INSUFFICIENT): registering fails at once, without retrying', async () => {
    const w = worker(rig.tokens.operator, mkdtempSync(join(dir, 'work-')));
    await expect(w.run()).rejects.toMatchObject({ code: 'ROLE_INSUFFICIENT' });
    expect(w.state).toBe('failed');
  });

  it('SIGTERM to a `driftline worker` mid-training: past its --shutdown-grace the trainer is stopped, the attempt fails with WORKER_SHUTDOWN, the job is queued again, exit 0', async () => {
    const job = await start({ hyperparametersJson: '{"epochs": 8, "seed": 6}' });
    const workDir = mkdtempSync(join(dir, 'work-'));
    const tokenFile = join(dir, 'worker.token');
    writeFileSync(tokenFile, `${rig.tokens.worker}\n`, { mode: 0o600 });
    const slow = join(dir, 'slow-trainer.mjs');
    writeFileSync(slow, SLOW_TRAINER);
    const args = ['worker', '--server', rig.cp.addresses.grpc, '--token-file', tokenFile, '--work-dir', workDir, '--trainers', 'typescript'];
    const w = await startProcess(
      'bin/driftline.js',
      [...args, '--trainer', `typescript=${process.execPath} ${slow}`, '--shutdown-grace', '300ms'],
      /trainer running \(pid (\d+)\)/,
      {
        timeoutMs: 60_000,
      },
    );
    processes.push(w);
    const trainer = Number(w.ready[1]);
    w.child.kill('SIGTERM');
    expect(await w.exited).toBe(0);
    expect(processAlive(trainer)).toBe(false);
    expect(w.stdoutLines.join('\n')).toMatch(new RegExp(`job ${job.id} attempt 1: shutdown WORKER_SHUTDOWN`));
    expect(await training().getTrainingJob({ id: job.id })).toMatchObject({ state: 'queued', attempt: 2, errorCode: 'WORKER_SHUTDOWN' });
    await training().cancelTrainingJob({ id: job.id, clientRequestId: '', reason: 'test over' });
  }, 90_000);

  it('kill -9 of a `driftline worker` mid-training: the lease expires, the job is queued again, a second `driftline worker --once` finishes it, exactly one version is registered', async () => {
    const before = await versions();
    // Another seed than the first test's: the same candidate bytes would be the same version.
    const job = await start({ hyperparametersJson: '{"epochs": 8, "learning_rate": 0.005, "seed": 4}' });
    const workDir = mkdtempSync(join(dir, 'work-'));
    const tokenFile = join(dir, 'worker.token');
    writeFileSync(tokenFile, `${rig.tokens.worker}\n`, { mode: 0o600 });
    const slow = join(dir, 'slow-trainer.mjs');
    writeFileSync(slow, SLOW_TRAINER);
    const common = ['--server', rig.cp.addresses.grpc, '--token-file', tokenFile, '--work-dir', workDir, '--trainers', 'typescript'];
    // The first worker's `typescript` is a trainer that never ends (your own command replaces a built-in of the same name).
    const doomed = await startProcess(
      'bin/driftline.js',
      ['worker', ...common, '--name', 'doomed', '--trainer', `typescript=${process.execPath} ${slow}`],
      /trainer running \(pid (\d+)\)/,
      {
        timeoutMs: 60_000,
      },
    );
    processes.push(doomed);
    orphan = Number(doomed.ready[1]);
    await waitFor(
      () => training().getTrainingJob({ id: job.id }),
      (j) => j.state === 'running' && j.progress?.epoch === 1,
      { timeoutMs: 30_000, what: 'the heartbeat carrying the first epoch' },
    );
    doomed.child.kill('SIGKILL');
    await doomed.exited;
    expect(processAlive(orphan)).toBe(true);

    // No heartbeat for longer than the lease ttl: the sweeper (on the control plane's clock) re-queues the job.
    await rig.clock.advanceAsync(LEASE_TTL_MS + 2_000);
    const requeued = await waitFor(
      () => training().getTrainingJob({ id: job.id }),
      (j) => j.state === 'queued',
      { timeoutMs: 10_000, what: 'the job to be queued again' },
    );
    expect(requeued).toMatchObject({ attempt: 2, errorCode: 'TRAINING_LEASE_LOST', workerId: '' });

    const second = await startProcess('bin/driftline.js', ['worker', ...common, '--name', 'second', '--once'], /registered as/, { timeoutMs: 60_000 });
    processes.push(second);
    expect(await second.exited).toBe(0);
    expect(second.stdoutLines.join('\n')).toMatch(new RegExp(`job ${job.id} attempt 2: completed`));
    // It stopped the trainer the killed worker left running, and removed its folder.
    expect(processAlive(orphan)).toBe(false);
    expect(readdirSync(join(workDir, ATTEMPTS_DIR))).toEqual([]);
    await rig.cp.training.settled();
    const final = await until(job.id, (s) => ['succeeded', 'failed', 'rejected'].includes(s), 'the job to end');
    expect(final.state, final.reason).toBe('succeeded');
    expect(final).toMatchObject({ attempt: 2, candidate: { attempt: 2 } });
    expect(await versions()).toEqual([...before, final.resultVersion]);
  }, 150_000);
});
