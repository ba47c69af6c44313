/**
 * The trainers that ship with Driftline, as the commands a worker runs (the trainer contract's
 * arguments are appended by the runner), and the one place that finds a Python for PyTorch.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DriftlineError } from '../common/errors.js';
import type { TrainerCommand } from './trainer-process.js';

export type BuiltInTrainer = 'typescript' | 'pytorch';
export const BUILT_IN_TRAINERS: readonly BuiltInTrainer[] = ['typescript', 'pytorch'];

const fromRoot = (path: string): string => fileURLToPath(new URL(`../${path}`, import.meta.url));

/** Interpreters tried in order when DRIFTLINE_PYTHON is not set: pyenv's python3 often lacks torch, Debian's python3-torch lives in /usr/bin. */
export const PYTHON_CANDIDATES = ['python3', '/usr/bin/python3'] as const;
const PYTHON_PROBE = 'import torch, onnx';
const PROBE_TIMEOUT_MS = 60_000;

function canImportTorch(python: string): Promise<{ ok: true } | { ok: false; reason: string }> {
  return new Promise((resolve) => {
    execFile(python, ['-c', PYTHON_PROBE], { timeout: PROBE_TIMEOUT_MS }, (err, _stdout, stderr) => {
      if (!err) resolve({ ok: true });
      else resolve({ ok: false, reason: (stderr.trim().split('\n').pop() ?? '') || err.message });
    });
  });
}

/**
 * The Python that runs the PyTorch trainer: DRIFTLINE_PYTHON when set (and it must import torch
 * and onnx), else the first of PYTHON_CANDIDATES that can. TRAINER_UNAVAILABLE when none can.
 */
export async function findTorchPython(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const chosen = env.DRIFTLINE_PYTHON;
  if (chosen) {
    const probe = await canImportTorch(chosen);
    if (probe.ok) return chosen;
    throw new DriftlineError('TRAINER_UNAVAILABLE', `DRIFTLINE_PYTHON=${chosen} cannot ${PYTHON_PROBE}: ${probe.reason}`);
  }
  const reasons: string[] = [];
  for (const python of PYTHON_CANDIDATES) {
    const probe = await canImportTorch(python);
    if (probe.ok) return python;
    reasons.push(`${python}: ${probe.reason}`);
  }
  throw new DriftlineError(
    'TRAINER_UNAVAILABLE',
    `no Python here can ${PYTHON_PROBE} (install python3-torch and python3-onnx, or pip install torch onnx, or set DRIFTLINE_PYTHON): ${reasons.join('; ')}`,
  );
}

/**
 * The command for a built-in trainer. The TypeScript trainer runs compiled (dist/js/, from
 * `npm run build`) like bin/driftline.js, or from source through tsx with DRIFTLINE_FROM_SOURCE=1
 * or when there is no build.
 */
export async function builtInTrainerCommand(name: BuiltInTrainer, env: NodeJS.ProcessEnv = process.env): Promise<TrainerCommand> {
  if (name === 'pytorch') return { command: await findTorchPython(env), args: [fromRoot('trainers/pytorch/train.py')] };
  const compiled = fromRoot('dist/js/driftline-trainer.js');
  if (env.DRIFTLINE_FROM_SOURCE !== '1' && existsSync(compiled)) return { command: process.execPath, args: [compiled] };
  return { command: process.execPath, args: ['--import', 'tsx', fromRoot('trainers/typescript/main.ts')], cwd: fromRoot('') };
}
