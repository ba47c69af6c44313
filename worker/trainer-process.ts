/**
 * Runs one trainer (common/learning/trainer-contract.ts) the way a GPU worker must: in its own
 * process group, so stopping it stops everything it started; within a maximum duration
 * (SIGTERM, then SIGKILL after a grace); cancellable through an AbortSignal; its stdout read as
 * bounded progress lines; and its output judged (size cap, model, metrics) before the caller
 * sees a success. Every failure is a DriftlineError with a TRAINER_* code.
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { systemClock, type CancelTimer, type Clock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { trainerArgv, type TrainerArguments, type TrainerMetrics } from '../common/learning/trainer-contract.js';
import { onnxRuntimeLoadCheck } from './onnxruntime/model-load-check.js';
import { checkTrainerOutput, type ModelLoadCheck } from './trainer-output.js';
import { StreamTail, TrainerLineReader, type TrainerEvent } from './trainer-lines.js';

export type { TrainerEvent } from './trainer-lines.js';

/** A trainer command: the contract's arguments are appended to args. */
export interface TrainerCommand {
  command: string;
  args: readonly string[];
  /** Added to the worker's environment. */
  env?: Readonly<Record<string, string>>;
  cwd?: string;
}

export interface TrainerLimits {
  maxDurationMs: number;
  /** Between SIGTERM and SIGKILL, when the trainer is stopped. */
  killGraceMs: number;
  maxOutputBytes: number;
  maxOutputFiles: number;
  /** A stdout line longer than this is dropped (and counted as a bad line). */
  maxLineBytes: number;
  /** How much of stderr a crash report carries. */
  stderrTailBytes: number;
}

export const DEFAULT_TRAINER_LIMITS: TrainerLimits = {
  maxDurationMs: 6 * 60 * 60 * 1000,
  killGraceMs: 10_000,
  maxOutputBytes: 2 * 1024 * 1024 * 1024,
  maxOutputFiles: 1000,
  maxLineBytes: 64 * 1024,
  stderrTailBytes: 8 * 1024,
};

export interface RunTrainerOptions {
  trainer: TrainerCommand;
  /** Where the dataset, base model and hyperparameters are, and the output folder (created when missing). */
  files: TrainerArguments;
  limits?: Partial<TrainerLimits>;
  /** Aborting stops the trainer: TRAINER_CANCELLED once its process group is gone. */
  signal?: AbortSignal;
  clock?: Clock;
  /** Each progress or log line, as it arrives. */
  onEvent?: (event: TrainerEvent) => void;
  /** Called once the trainer runs, with its pid (its process group's id): a worker can record it to stop a group its crash left behind. */
  onStart?: (pid: number) => void;
  /** Defaults to loading the candidate in onnxruntime-node. */
  loadCheck?: ModelLoadCheck;
}

export interface TrainerOutcome {
  modelPath: string;
  metricsPath: string;
  metrics: TrainerMetrics;
  outputBytes: number;
  progressLines: number;
  /** Stdout lines that were not contract lines (each was also surfaced as a log event). */
  badLines: number;
  durationMs: number;
  stderrTail: string;
  /** The trainer's process id, which was also its process group's id. */
  pid: number;
}

type StopReason = 'timeout' | 'cancel';

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch (err) {
    // ESRCH: the group is already gone.
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

export async function runTrainer(options: RunTrainerOptions): Promise<TrainerOutcome> {
  const limits = { ...DEFAULT_TRAINER_LIMITS, ...options.limits };
  const clock = options.clock ?? systemClock;
  const emit = options.onEvent ?? (() => {});
  const { signal } = options;
  if (signal?.aborted) throw new DriftlineError('TRAINER_CANCELLED', 'the training job was cancelled before its trainer started');
  const baseModel = await readFile(options.files.baseModel);
  await mkdir(options.files.output, { recursive: true });

  const started = clock.now();
  const lines = new TrainerLineReader(limits.maxLineBytes, emit);
  const stderr = new StreamTail(limits.stderrTailBytes);
  const { trainer } = options;
  // detached: the trainer leads a new process group (and session), which is what is signalled.
  const child = spawn(trainer.command, [...trainer.args, ...trainerArgv(options.files)], {
    cwd: trainer.cwd,
    env: { ...process.env, ...trainer.env },
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });

  let stopReason: StopReason | undefined;
  const timers: CancelTimer[] = [];
  const stop = (reason: StopReason): void => {
    if (stopReason || child.pid === undefined) return;
    stopReason = reason;
    emit({
      type: 'log',
      source: 'runner',
      message: reason === 'timeout' ? `the trainer ran past ${limits.maxDurationMs} ms: stopping it` : 'the job was cancelled: stopping the trainer',
    });
    killGroup(child.pid, 'SIGTERM');
    timers.push(clock.setTimeout(() => killGroup(child.pid!, 'SIGKILL'), limits.killGraceMs));
  };
  const onAbort = (): void => stop('cancel');

  const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null } | { error: Error }>((resolve) => {
    child.once('error', (error) => resolve({ error }));
    child.once('spawn', () => {
      timers.push(clock.setTimeout(() => stop('timeout'), limits.maxDurationMs));
      signal?.addEventListener('abort', onAbort, { once: true });
      options.onStart?.(child.pid!);
    });
    child.stdout!.on('data', (chunk: Buffer) => lines.push(chunk));
    child.stderr!.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.once('exit', (code, sig) => {
      // Whatever the trainer left running in its group goes with it.
      if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
      resolve({ code, signal: sig });
    });
  });
  const pipes = [child.stdout!, child.stderr!];
  if ('error' in exit) {
    for (const pipe of pipes) pipe.destroy();
    for (const cancel of timers) cancel();
    signal?.removeEventListener('abort', onAbort);
    throw new DriftlineError('TRAINER_UNAVAILABLE', `the trainer ${trainer.command} could not start: ${exit.error.message}`, { cause: exit.error });
  }
  // The pipes close once every process that held them is gone (the group was just killed); one
  // that left the group (setsid) and keeps them open is cut off after the grace.
  timers.push(clock.setTimeout(() => pipes.forEach((pipe) => pipe.destroy()), limits.killGraceMs));
  await Promise.all(pipes.map((pipe) => (pipe.closed ? undefined : new Promise((resolve) => pipe.once('close', resolve)))));
  lines.end();
  for (const cancel of timers) cancel();
  signal?.removeEventListener('abort', onAbort);
  const durationMs = clock.now() - started;
  const details = { pid: child.pid, durationMs, stderrTail: stderr.text() };

  if (stopReason === 'cancel') throw new DriftlineError('TRAINER_CANCELLED', 'the training job was cancelled; its trainer was stopped', { details });
  if (stopReason === 'timeout') {
    throw new DriftlineError('TRAINER_TIMED_OUT', `the trainer ran past its maximum duration of ${limits.maxDurationMs} ms and was stopped`, { details });
  }
  if (exit.code !== 0) {
    const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
    const tail = details.stderrTail.trim();
    throw new DriftlineError('TRAINER_CRASHED', `the trainer ${how}${tail ? `: ${tail.slice(-500)}` : ''}`, {
      details: { ...details, exitCode: exit.code, signal: exit.signal },
    });
  }
  const output = await checkTrainerOutput(options.files.output, baseModel, limits, options.loadCheck ?? onnxRuntimeLoadCheck);
  if (signal?.aborted) throw new DriftlineError('TRAINER_CANCELLED', 'the training job was cancelled while its output was checked', { details });
  return { ...output, progressLines: lines.progressLines, badLines: lines.badLines, durationMs, stderrTail: details.stderrTail, pid: child.pid! };
}
