import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { buildMaintenanceModel } from '../demo/model/maintenance-model.js';
import { runTrainer, type RunTrainerOptions, type TrainerEvent } from '../worker/trainer-process.js';
import { REPO_ROOT } from './helpers/processes.js';
import { driftedVibrationJob } from './helpers/trainer-datasets.js';

const scratch = mkdtempSync(join(tmpdir(), 'driftline-trainer-process-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const baseModel = join(scratch, 'base.onnx');
writeFileSync(baseModel, buildDemoModel().bytes);
const otherSignature = join(scratch, 'other.onnx');
writeFileSync(otherSignature, buildMaintenanceModel());
const hyperparameters = join(scratch, 'hyperparameters.json');
writeFileSync(hyperparameters, '{}\n');

/**
 * One fake trainer for every behaviour, chosen by FAKE_MODE: it parses the contract's
 * arguments, prints lines, and writes (or does not write) the output a real one would.
 */
const fakeTrainer = join(scratch, 'fake-trainer.mjs');
writeFileSync(
  fakeTrainer,
  `
import { copyFileSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
const arg = (name) => process.argv[process.argv.indexOf(name) + 1];
const out = arg('--output');
const mode = process.env.FAKE_MODE;
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const goodMetrics = '{"train_loss":0.4,"validation_loss":0.5,"train_accuracy":0.9,"validation_accuracy":0.85,"device":"cpu"}';
if (mode === 'hang' || mode === 'hang-ignoring-term') {
  if (mode === 'hang-ignoring-term') process.on('SIGTERM', () => {});
  // A grandchild in the same process group: stopping the trainer must stop it too.
  spawn('sleep', ['1000'], { stdio: 'ignore' });
  say({ type: 'progress', epoch: 1, epochs: 10, loss: 1.5, metrics: {} });
  setInterval(() => {}, 1000);
} else if (mode === 'crash') {
  say({ type: 'log', message: 'loading' });
  process.stderr.write('Traceback: something broke\\n');
  process.exit(3);
} else if (mode === 'segfault') {
  process.kill(process.pid, 'SIGSEGV');
} else {
  if (mode === 'garbage') {
    process.stdout.write('x'.repeat(3 * 1024 * 1024) + '\\n');
    process.stdout.write('plain text, not JSON\\n');
    process.stdout.write('{"type":"progress","epoch":"one"}\\n');
  }
  say({ type: 'progress', epoch: 1, epochs: 2, loss: 0.9, metrics: { validation_accuracy: 0.7 } });
  say({ type: 'progress', epoch: 2, epochs: 2, loss: 0.5, metrics: { validation_accuracy: 0.85 } });
  if (mode === 'invalid-onnx') writeFileSync(join(out, 'model.onnx'), 'this is not a model');
  else if (mode === 'other-signature') copyFileSync(process.env.FAKE_OTHER_MODEL, join(out, 'model.onnx'));
  else copyFileSync(arg('--base-model'), join(out, 'model.onnx'));
  if (mode === 'too-large') writeFileSync(join(out, 'checkpoint.bin'), Buffer.alloc(2 * 1024 * 1024));
  writeFileSync(join(out, 'metrics.json'), mode === 'nan-metrics' ? goodMetrics.replace('0.5', 'NaN') : mode === 'no-accuracy' ? '{"train_loss":0.1,"validation_loss":0.2}' : goodMetrics);
}
`,
);

let runs = 0;
function options(mode: string, extra: Partial<RunTrainerOptions> = {}): RunTrainerOptions & { events: TrainerEvent[]; pids: number[] } {
  const events: TrainerEvent[] = [];
  const pids: number[] = [];
  const output = join(scratch, `out-${++runs}`);
  return {
    trainer: { command: process.execPath, args: [fakeTrainer], env: { FAKE_MODE: mode, FAKE_OTHER_MODEL: otherSignature } },
    files: { dataset: scratch, baseModel, hyperparameters, output },
    limits: { maxOutputBytes: 1024 * 1024 },
    onEvent: (event) => events.push(event),
    onStart: (pid) => pids.push(pid),
    events,
    pids,
    ...extra,
  };
}

async function codeOf(run: Promise<unknown>): Promise<string> {
  try {
    await run;
  } catch (error) {
    return error instanceof DriftlineError ? error.code : `not a DriftlineError: ${String(error)}`;
  }
  return 'resolved';
}

/** Processes still alive (not zombies) in a process group, from /proc. */
function aliveInGroup(pgid: number): number[] {
  const alive: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the last ')'.
      const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(pgrp) === pgid && state !== 'Z') alive.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return alive;
}

describe('trainers - the trainer process runner', () => {
  it('a trainer that follows the contract: its progress lines arrive as events and its checked output comes back', async () => {
    const run = options('ok');
    const outcome = await runTrainer(run);
    expect(outcome.metrics).toMatchObject({ validation_accuracy: 0.85, device: 'cpu' });
    expect(outcome.progressLines).toBe(2);
    expect(outcome.badLines).toBe(0);
    expect(existsSync(outcome.modelPath)).toBe(true);
    expect(run.events.filter((e) => e.type === 'progress').map((e) => (e.type === 'progress' ? e.epoch : 0))).toEqual([1, 2]);
  });

  it('a trainer that exits non-zero fails with TRAINER_CRASHED and the tail of its stderr', async () => {
    const error = await runTrainer(options('crash')).catch((e: DriftlineError) => e);
    expect(error).toBeInstanceOf(DriftlineError);
    expect((error as DriftlineError).code).toBe('TRAINER_CRASHED');
    expect((error as DriftlineError).details).toMatchObject({ exitCode: 3 });
    expect(String((error as DriftlineError).details?.stderrTail)).toContain('Traceback: something broke');
  });

  it('a trainer killed by a signal it was not sent fails with TRAINER_CRASHED naming the signal', async () => {
    const error = (await runTrainer(options('segfault')).catch((e: DriftlineError) => e)) as DriftlineError;
    expect(error.code).toBe('TRAINER_CRASHED');
    expect(error.details).toMatchObject({ signal: 'SIGSEGV' });
  });

  it('a trainer that hangs past its maximum duration, ignoring SIGTERM, is killed after the grace: TRAINER_TIMED_OUT and nothing of its process group is left', async () => {
    const clock = new ManualClock();
    const run = options('hang-ignoring-term', { clock, limits: { maxDurationMs: 60_000, killGraceMs: 5_000 } });
    const result = codeOf(runTrainer(run));
    await vi.waitFor(() => expect(run.events.some((e) => e.type === 'progress')).toBe(true), { timeout: 20_000 });
    const pid = run.pids[0]!;
    expect(aliveInGroup(pid).length).toBeGreaterThanOrEqual(2); // the trainer and its sleep
    clock.advance(60_000);
    // SIGTERM took the sleep; the trainer ignores it and lives on until the grace ends.
    await vi.waitFor(() => expect(aliveInGroup(pid)).toEqual([pid]), { timeout: 20_000 });
    clock.advance(5_000);
    expect(await result).toBe('TRAINER_TIMED_OUT');
    await vi.waitFor(() => expect(aliveInGroup(pid)).toEqual([]), { timeout: 20_000 });
  });

  it('cancelling through the AbortSignal stops the trainer and its children: TRAINER_CANCELLED and the process group is gone', async () => {
    const controller = new AbortController();
    const run = options('hang', { signal: controller.signal });
    const result = codeOf(runTrainer(run));
    await vi.waitFor(() => expect(run.events.some((e) => e.type === 'progress')).toBe(true), { timeout: 20_000 });
    const pid = run.pids[0]!;
    controller.abort();
    expect(await result).toBe('TRAINER_CANCELLED');
    await vi.waitFor(() => expect(aliveInGroup(pid)).toEqual([]), { timeout: 20_000 });
  });

  it('a model.onnx that is not a model fails with TRAINER_OUTPUT_INVALID', async () => {
    expect(await codeOf(runTrainer(options('invalid-onnx')))).toBe('TRAINER_OUTPUT_INVALID');
  });

  it("a valid model whose inputs and outputs are not the base model's fails with TRAINER_OUTPUT_INVALID", async () => {
    const error = (await runTrainer(options('other-signature')).catch((e: DriftlineError) => e)) as DriftlineError;
    expect(error.code).toBe('TRAINER_OUTPUT_INVALID');
    expect(error.message).toContain('signature');
  });

  it('NaN in metrics.json fails with TRAINER_METRICS_INVALID, and so do metrics without accuracy', async () => {
    expect(await codeOf(runTrainer(options('nan-metrics')))).toBe('TRAINER_METRICS_INVALID');
    expect(await codeOf(runTrainer(options('no-accuracy')))).toBe('TRAINER_METRICS_INVALID');
  });

  it('an output folder over the size cap fails with TRAINER_OUTPUT_TOO_LARGE', async () => {
    expect(await codeOf(runTrainer(options('too-large')))).toBe('TRAINER_OUTPUT_TOO_LARGE');
  });

  it('an endless line, plain text and lines outside the contract are counted and surfaced as log events, and the run still succeeds', async () => {
    const run = options('garbage', { limits: { maxOutputBytes: 1024 * 1024, maxLineBytes: 4096 } });
    const outcome = await runTrainer(run);
    expect(outcome.badLines).toBe(3);
    expect(outcome.progressLines).toBe(2);
    const runnerLogs = run.events.filter((e) => e.type === 'log' && e.source === 'runner').map((e) => (e.type === 'log' ? e.message : ''));
    expect(runnerLogs).toHaveLength(3);
    expect(runnerLogs[0]).toContain('over 4096 bytes');
    expect(runnerLogs.every((m) => m.length < 600)).toBe(true);
  });

  it('a trainer command that does not exist fails with TRAINER_UNAVAILABLE', async () => {
    const run = options('ok');
    expect(await codeOf(runTrainer({ ...run, trainer: { command: join(scratch, 'no-such-trainer'), args: [] } }))).toBe('TRAINER_UNAVAILABLE');
  });

  it('a job cancelled before its trainer starts fails with TRAINER_CANCELLED without starting it', async () => {
    const controller = new AbortController();
    controller.abort();
    const run = options('ok', { signal: controller.signal });
    expect(await codeOf(runTrainer(run))).toBe('TRAINER_CANCELLED');
    expect(existsSync(run.files.output)).toBe(false);
  });

  it("the README's minimal Python trainer passes the runner's checks", async () => {
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
    const code = /### Bring your own trainer[\s\S]*?```python\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(code).toBeDefined();
    const script = join(scratch, 'readme-trainer.py');
    writeFileSync(script, code!);
    const job = driftedVibrationJob({ rows: 100, severity: 1, hyperparameters: { epochs: 2 } });
    try {
      const python = process.env.DRIFTLINE_PYTHON ?? '/usr/bin/python3';
      const outcome = await runTrainer({
        trainer: { command: existsSync(python) ? python : 'python3', args: [script] },
        files: { dataset: job.dataset, baseModel: job.baseModel, hyperparameters: job.hyperparameters, output: job.output },
      });
      expect(outcome.progressLines).toBe(2);
      expect(outcome.metrics.validation_accuracy).toBe(0.88);
    } finally {
      rmSync(job.dir, { recursive: true, force: true });
    }
  });
});
