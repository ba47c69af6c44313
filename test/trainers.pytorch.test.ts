import { readFileSync, rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { readModelSignature } from '../common/onnx/signature.js';
import { builtInTrainerCommand, findTorchPython } from '../worker/built-in-trainers.js';
import { runTrainer, type TrainerEvent } from '../worker/trainer-process.js';
import { driftedVibrationJob, onnxAccuracy, type TrainerJobFiles } from './helpers/trainer-datasets.js';

// CI installs Debian's python3-torch and python3-onnx (.ci/run): there this never skips.
const python = await findTorchPython().catch(() => undefined);
const jobs: TrainerJobFiles[] = [];
afterAll(() => jobs.forEach((job) => rmSync(job.dir, { recursive: true, force: true })));

describe('trainers - the PyTorch trainer end to end', () => {
  it.skipIf(!python)(
    'trains the demo classifier on CPU through the trainer runner (skipped only where no python3 can import torch and onnx): same signature, metadata kept, better on the drifted test split',
    async () => {
      const job = driftedVibrationJob({ rows: 2500, severity: 2, hyperparameters: { epochs: 15, learning_rate: 0.005, seed: 3 } });
      jobs.push(job);
      const events: TrainerEvent[] = [];
      const outcome = await runTrainer({
        trainer: await builtInTrainerCommand('pytorch'),
        files: { dataset: job.dataset, baseModel: job.baseModel, hyperparameters: job.hyperparameters, output: job.output },
        onEvent: (event) => events.push(event),
      });
      expect(outcome.badLines).toBe(0);
      expect(outcome.progressLines).toBeGreaterThan(0);
      expect(outcome.metrics.device).toBe('cpu');
      const before = await onnxAccuracy(job.baseModel, job.splits.test, 8);
      const after = await onnxAccuracy(outcome.modelPath, job.splits.test, 8);
      expect(before).toBeLessThan(0.8);
      expect(after).toBeGreaterThan(before + 0.1);
      const base = readModelSignature(readFileSync(job.baseModel));
      const candidate = readModelSignature(readFileSync(outcome.modelPath));
      expect(candidate.inputs).toEqual(base.inputs);
      expect(candidate.outputs).toEqual(base.outputs);
      expect(candidate.metadata).toMatchObject(base.metadata);
    },
    180_000,
  );
});
