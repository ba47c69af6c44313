/**
 * `driftline training start|list|status [--watch]|cancel|logs` against a real control plane
 * (gRPC on an OS-chosen port, SQLite, onnxruntime gate), with a GPU worker loop running the
 * job through the gRPC WorkerService.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { builtInTrainerCommand } from '../worker/built-in-trainers.js';
import { grpcWorkerApi } from '../worker/grpc/grpc-worker-api.js';
import { TrainingWorker } from '../worker/training-worker.js';
import { drifted, startTrainingApi, type TrainingApiRig } from './helpers/training-api.js';

const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));

describe('driftline training - the job commands end to end', () => {
  let dir: string;
  let rig: TrainingApiRig;
  let dataset: { id: string };
  let worker: TrainingWorker | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-training-cli-'));
    rig = await startTrainingApi(dir, { training: { minSplitRows: 20, leaseTtl: '3s', workerPollInterval: '200ms' } });
    dataset = await drifted(rig, { rows: 600 });
  });
  afterAll(async () => {
    await worker?.shutdown(0);
    await rig?.cp.training.settled();
    await rig?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const env = (): NodeJS.ProcessEnv => {
    const e: NodeJS.ProcessEnv = { ...process.env, DRIFTLINE_SERVER: rig.cp.addresses.grpc, DRIFTLINE_TOKEN: rig.tokens.operator };
    return e;
  };
  const driftline = (...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      execFile(process.execPath, [BIN, ...args], { cwd: dir, env: env() }, (error, stdout, stderr) =>
        resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
      );
    });
  const startArgs = (...more: string[]) => [
    'training',
    'start',
    '--model',
    'vibration',
    '--base-version',
    '1',
    '--dataset',
    dataset.id,
    '--trainer',
    'typescript',
    ...more,
  ];

  it('starts a job, lists it, follows it with status --watch to its new version, and prints its log', async () => {
    const started = await driftline(...startArgs('--param', 'epochs=6', '--param', 'seed=5', '--gate', 'accuracy-delta>=0.01', '--json'));
    expect(started.code, started.stderr).toBe(0);
    const job = JSON.parse(started.stdout) as { id: string; state: string; hyperparametersJson: string; gates: string[] };
    expect(job).toMatchObject({ state: 'queued', hyperparametersJson: '{"epochs":6,"seed":5}', gates: ['accuracy-delta>=0.01'] });

    const list = await driftline('training', 'list');
    expect(list.code).toBe(0);
    expect(list.stdout.split('\n')[0]).toMatch(/^ID\s+MODEL\s+BASE\s+TRAINER\s+TRIGGER\s+STATE\s+ATTEMPT\s+PROGRESS\s+RESULT\s+UPDATED\s+REASON$/);
    expect(list.stdout).toMatch(new RegExp(`^${job.id}\\s+vibration\\s+v1\\s+typescript\\s+-\\s+queued\\s+1/3\\s+-`, 'm'));

    // status --watch on a pipe: one line per change until the job ends, then the job's table.
    const watcher = spawn(process.execPath, [BIN, 'training', 'status', job.id, '--watch'], { cwd: dir, env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
    let watched = '';
    watcher.stdout.on('data', (chunk: Buffer) => (watched += chunk.toString()));
    const watchExit = new Promise<number | null>((resolve) => watcher.once('exit', (code) => resolve(code)));
    await new Promise<void>((resolve) => watcher.stdout.once('data', () => resolve()));

    worker = TrainingWorker.create({
      api: grpcWorkerApi({ address: rig.cp.addresses.grpc, token: rig.tokens.worker }),
      name: 'cli-test',
      workDir: join(dir, 'work'),
      trainers: { typescript: () => builtInTrainerCommand('typescript') },
      resources: { gpus: [], cpu: 2, memoryBytes: 4e9 },
      version: 'test',
      logger: silentLogger(),
    });
    await worker.run();
    expect(await watchExit).toBe(0);
    const lines = watched.split('\n');
    expect(lines[0]).toMatch(/^queued attempt 1\/3$/);
    expect(watched).toMatch(/^running attempt 1\/3 epoch \d\/6 loss [\d.]+ worker tw_\w+$/m);
    expect(watched).toMatch(/^succeeded attempt 1\/3 epoch 6\/6/m);
    // The stream's last update already names the version (the server holds it back until it is recorded).
    expect(watched).toMatch(/^succeeded attempt 1\/3 epoch 6\/6 loss [\d.]+ -> v2$/m);
    expect(watched).not.toMatch(/^succeeded attempt 1\/3 epoch 6\/6 loss [\d.]+$/m);
    expect(watched).toMatch(/^state\s+succeeded$/m);
    expect(watched).toMatch(/^result\s+vibration v2$/m);
    expect(watched).toMatch(/^accuracy-delta>=0\.01\s+pass\s/m);

    const status = await driftline('training', 'status', job.id, '--json');
    expect(JSON.parse(status.stdout)).toMatchObject({ id: job.id, state: 'succeeded', resultVersion: 2 });

    const logs = await driftline('training', 'logs', job.id);
    expect(logs.code).toBe(0);
    expect(logs.stdout).toMatch(/^\S+Z \[1\] epoch 6\/6 loss /m);
    const tail = await driftline('training', 'logs', job.id, '--tail', '1', '--json');
    expect((JSON.parse(tail.stdout) as { lines: unknown[] }).lines).toHaveLength(1);

    // On a terminal (script(1) gives it one): a progress bar with the state, epoch of epochs and loss, then the table.
    const tty = await new Promise<string>((resolve) => {
      const command = [process.execPath, BIN, 'training', 'status', job.id, '--watch'].map((a) => `'${a}'`).join(' ');
      execFile('script', ['-qec', command, '/dev/null'], { cwd: dir, env: env() }, (_error, stdout) => resolve(stdout));
    });
    expect(tty).toMatch(/succeeded \(attempt 1\/3\) \[[^\]]+\] epoch 6\/6 loss [\d.]+/);
    expect(tty).toMatch(/result\s+vibration v2/);

    // An ended job cannot be cancelled (exit 6, the state's code).
    const late = await driftline('training', 'cancel', job.id);
    expect(late.code).toBe(6);
    expect(late.stderr).toMatch(/^error \[TRAINING_STATE_INVALID\]: /);
  }, 120_000);

  it('cancels a queued job with its reason, filters the list by state, and names a missing job (exit 4)', async () => {
    await worker?.shutdown(0);
    const started = await driftline(...startArgs('--json'));
    const { id } = JSON.parse(started.stdout) as { id: string };
    const cancelled = await driftline('training', 'cancel', id, '--reason', 'wrong dataset');
    expect(cancelled.code, cancelled.stderr).toBe(0);
    expect(cancelled.stdout.trim()).toBe(`training job ${id} cancelled: wrong dataset`);
    const list = await driftline('training', 'list', '--state', 'cancelled', '--json');
    expect((JSON.parse(list.stdout) as { jobs: Array<{ id: string }> }).jobs.map((j) => j.id)).toEqual([id]);
    const table = await driftline('training', 'list', '--state', 'cancelled');
    expect(table.stdout).toMatch(new RegExp(`^${id}\\s.*cancelled\\s.*wrong dataset$`, 'm'));
    const missing = await driftline('training', 'status', 'tj_nosuchjob');
    expect(missing.code).toBe(4);
    expect(missing.stderr).toMatch(/^error \[TRAINING_JOB_NOT_FOUND\]: .*`driftline training list` shows the jobs/);
    expect((await driftline('training', 'status', 'tj_nosuchjob', '--watch')).code).toBe(4);
    const noData = await driftline('training', 'start', '--model', 'vibration', '--base-version', '1', '--dataset', 'f'.repeat(64), '--trainer', 'typescript');
    expect(noData.code).toBe(4);
    expect(noData.stderr).toMatch(/^error \[DATASET_NOT_FOUND\]: .*driftline datasets list/);
    const none = await driftline('training', 'list', '--model', 'no-such-model');
    expect(none.stdout.trim()).toBe('No training jobs found matching the filters');
  }, 60_000);
});
