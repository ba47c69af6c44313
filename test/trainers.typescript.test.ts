import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { builtInTrainerCommand } from '../worker/built-in-trainers.js';
import { runTrainer, type TrainerEvent } from '../worker/trainer-process.js';
import { readModelSignature } from '../common/onnx/signature.js';
import { readFileSync } from 'node:fs';
import { driftedVibrationJob, onnxAccuracy, type TrainerJobFiles } from './helpers/trainer-datasets.js';

const jobs: TrainerJobFiles[] = [];
afterAll(() => jobs.forEach((job) => rmSync(job.dir, { recursive: true, force: true })));

describe('trainers - the TypeScript trainer end to end', () => {
  it('fine-tunes the demo classifier on a drifted cohort through the trainer runner: the candidate keeps the signature and is clearly better on the test split', async () => {
    const job = driftedVibrationJob({ rows: 2500, severity: 2, hyperparameters: { epochs: 15, learning_rate: 0.005, seed: 3 } });
    jobs.push(job);
    const events: TrainerEvent[] = [];
    const outcome = await runTrainer({
      trainer: await builtInTrainerCommand('typescript'),
      files: { dataset: job.dataset, baseModel: job.baseModel, hyperparameters: job.hyperparameters, output: job.output },
      onEvent: (event) => events.push(event),
    });
    expect(outcome.badLines).toBe(0);
    expect(outcome.progressLines).toBeGreaterThan(0);
    expect(events.filter((e) => e.type === 'progress').at(-1)).toMatchObject({ epochs: 15 });
    const before = await onnxAccuracy(job.baseModel, job.splits.test, 8);
    const after = await onnxAccuracy(outcome.modelPath, job.splits.test, 8);
    expect(before).toBeLessThan(0.8);
    expect(after).toBeGreaterThan(before + 0.1);
    expect(outcome.metrics.test_accuracy).toBeCloseTo(after, 2);
    expect(outcome.metrics.base_test_accuracy).toBeCloseTo(before, 2);
    expect(readModelSignature(readFileSync(outcome.modelPath)).outputs).toEqual(readModelSignature(readFileSync(job.baseModel)).outputs);
  }, 60_000);

  it('refuses unknown hyperparameters with HYPERPARAMETERS_INVALID: the runner reports a crash carrying the code', async () => {
    const job = driftedVibrationJob({ rows: 200, severity: 1, hyperparameters: { epoch: 3 } });
    jobs.push(job);
    const error = await runTrainer({
      trainer: await builtInTrainerCommand('typescript'),
      files: { dataset: job.dataset, baseModel: job.baseModel, hyperparameters: job.hyperparameters, output: job.output },
    }).catch((e: { code: string; message: string }) => e);
    expect(error).toMatchObject({ code: 'TRAINER_CRASHED' });
    expect((error as { message: string }).message).toContain('HYPERPARAMETERS_INVALID');
  }, 60_000);
});
