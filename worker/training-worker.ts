/**
 * The GPU worker (`driftline worker`): registers what this host offers, leases one training
 * attempt at a time, and for each one downloads the base model and the dataset by content hash
 * (verified as they stream), runs the trainer (worker/trainer-process.ts), heartbeats its
 * progress and log lines, stops it when the job is cancelled or the lease is lost, and hands in
 * model.onnx and its metrics, or fails the attempt with the trainer's stable code.
 *
 * The lease queue is the only scheduling: a worker that dies simply stops heartbeating, its
 * lease expires, and the job goes back to the queue for another worker. A worker that is told to
 * stop (shutdown) takes no new lease and gives the attempt it runs a grace to finish; past it the
 * trainer is stopped and the attempt fails with WORKER_SHUTDOWN (the job is queued again).
 */
import { createReadStream } from 'node:fs';
import { mkdir, rm, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { systemClock, type CancelTimer, type Clock } from '../common/clock.js';
import { asDriftlineError, DriftlineError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import {
  ATTEMPTS_DIR,
  TRAINER_PID_FILE,
  attemptDirName,
  cleanLeftovers,
  downloadVerified,
  extractDataset,
  lockWorkDir,
  sha256OfFile,
} from './attempt-files.js';
import type { WorkerResources } from './resources.js';
import type { ModelLoadCheck } from './trainer-output.js';
import { runTrainer, type TrainerCommand, type TrainerEvent, type TrainerLimits } from './trainer-process.js';
import type { HeartbeatReport, WorkerApi, WorkerLease, WorkerProgress, WorkerSession } from './worker-api.js';

export type WorkerState = 'created' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

/** How an attempt ended, as this worker saw it. */
export type AttemptOutcome = 'completed' | 'failed' | 'cancelled' | 'lease-lost' | 'shutdown';

export type WorkerEvent =
  | { type: 'registered'; session: WorkerSession }
  | { type: 'leased'; lease: WorkerLease }
  | { type: 'trainer-started'; jobId: string; attempt: number; pid: number }
  | { type: 'attempt-ended'; jobId: string; attempt: number; outcome: AttemptOutcome; errorCode?: string; message?: string }
  | { type: 'unreachable'; code: string; message: string; retryInMs: number };

export interface TrainingWorkerOptions {
  api: WorkerApi;
  /** Registered under this name; registering again keeps the worker's id. */
  name: string;
  /** Holds the per-attempt folders; one worker per directory (a lock file says whose). */
  workDir: string;
  /** The trainers offered, by name, each resolved to its command when a lease needs it. */
  trainers: Readonly<Record<string, () => Promise<TrainerCommand>>>;
  resources: WorkerResources;
  version: string;
  /** Run at most one attempt: stop after it, or at once when the first lease call finds nothing. */
  once?: boolean;
  clock?: Clock;
  logger: Logger;
  /** The trainer's limits; a lease's max duration overrides maxDurationMs. */
  trainerLimits?: Partial<TrainerLimits>;
  loadCheck?: ModelLoadCheck;
  /** Waits after a call that could not reach the control plane: doubled from initialMs up to maxMs. */
  retry?: { initialMs: number; maxMs: number };
  onEvent?: (event: WorkerEvent) => void;
  /** Free bytes where the work directory is (statfs); replaceable for tests. */
  freeBytes?: (dir: string) => Promise<number>;
}

/** Log lines kept for the next heartbeat when the control plane is slow to answer; the oldest go first. */
const MAX_PENDING_LINES = 1000;
/** What one heartbeat carries (WorkerService's own cap). */
const LINES_PER_HEARTBEAT = 200;
const LINE_CHARS = 1000;
const DEFAULT_RETRY = { initialMs: 500, maxMs: 30_000 };
/** Codes after which registering or leasing again cannot help: a wrong token, a refused role, a bad registration. */
const FATAL_KINDS = new Set(['unauthenticated', 'forbidden', 'invalid']);

type StopReason = 'cancelled' | 'lease-lost' | 'shutdown';

interface RunningAttempt {
  lease: WorkerLease;
  stop(reason: StopReason): void;
  done: Promise<void>;
}

export class TrainingWorker {
  private stateValue: WorkerState = 'created';
  private session: WorkerSession | undefined;
  private current: RunningAttempt | undefined;
  private stopping = false;
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private releaseLock: (() => Promise<void>) | undefined;
  private readonly clock: Clock;
  private readonly retry: { initialMs: number; maxMs: number };

  private constructor(private readonly options: TrainingWorkerOptions) {
    this.clock = options.clock ?? systemClock;
    this.retry = options.retry ?? DEFAULT_RETRY;
  }

  static create(options: TrainingWorkerOptions): TrainingWorker {
    if (Object.keys(options.trainers).length === 0) throw new DriftlineError('REQUEST_INVALID', 'a worker needs at least one trainer to offer');
    return new TrainingWorker(options);
  }

  get state(): WorkerState {
    return this.stateValue;
  }

  get workerId(): string | undefined {
    return this.session?.workerId;
  }

  /**
   * Takes the work directory (cleaning what a killed worker left), registers (retrying while
   * the control plane cannot be reached) and starts leasing. Resolves once registered; the loop
   * goes on until shutdown() (or, with `once`, one attempt), and finished() resolves then.
   */
  async run(): Promise<void> {
    if (this.stateValue !== 'created') throw new DriftlineError('INTERNAL', `the worker cannot run: it is ${this.stateValue}`);
    this.stateValue = 'starting';
    try {
      this.releaseLock = await lockWorkDir(this.options.workDir);
      const removed = await cleanLeftovers(this.options.workDir, this.options.logger);
      if (removed.length > 0) this.options.logger.info({ removed: removed.length }, 'removed attempt folders an earlier worker left');
      await this.register();
    } catch (err) {
      this.stateValue = 'failed';
      await this.releaseLock?.();
      throw err;
    }
    if (this.stopping) {
      this.stateValue = 'stopped';
      await this.releaseLock?.();
      this.loop = Promise.resolve();
      return;
    }
    this.stateValue = 'running';
    this.loop = this.leaseLoop().then(
      async () => {
        this.stateValue = 'stopped';
        await this.releaseLock?.();
      },
      async (err: unknown) => {
        this.stateValue = 'failed';
        await this.releaseLock?.();
        throw err;
      },
    );
    // Whoever awaits finished() sees a failure; nobody awaiting must not crash the process.
    this.loop.catch(() => undefined);
  }

  /** Resolves when the loop has ended (shutdown, or `once` done); rejects with what stopped it otherwise. */
  finished(): Promise<void> {
    return this.loop ?? Promise.reject(new DriftlineError('INTERNAL', 'the worker was never run'));
  }

  /**
   * Takes no new lease; gives a running attempt graceMs to finish, then stops its trainer and
   * fails the attempt with WORKER_SHUTDOWN. Resolves when the loop has ended. Idempotent.
   */
  async shutdown(graceMs: number): Promise<void> {
    this.stopping = true;
    if (this.stateValue === 'running' || this.stateValue === 'starting') this.stateValue = 'stopping';
    this.wake?.();
    const attempt = this.current;
    if (attempt) {
      let cancel: CancelTimer | undefined;
      const expired = new Promise<'expired'>((resolve) => (cancel = this.clock.setTimeout(() => resolve('expired'), Math.max(0, graceMs))));
      const outcome = await Promise.race([attempt.done.then(() => 'done' as const), expired]);
      cancel?.();
      if (outcome === 'expired') {
        this.options.logger.warn({ job: attempt.lease.jobId, attempt: attempt.lease.attempt, graceMs }, 'shutdown grace over: stopping the trainer');
        attempt.stop('shutdown');
        await attempt.done;
      }
    }
    await this.loop?.catch(() => undefined);
  }

  private emit(event: WorkerEvent): void {
    try {
      this.options.onEvent?.(event);
    } catch (err) {
      this.options.logger.warn({ err }, 'worker event listener failed');
    }
  }

  /** Waits ms on the clock, or less when shutdown() wakes it. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const cancel = this.clock.setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms);
      this.wake = () => {
        cancel();
        this.wake = undefined;
        resolve();
      };
    });
  }

  /** Runs a call, retrying with backoff while the control plane cannot be reached; fatal codes throw. */
  private async withRetry<T>(what: string, call: () => Promise<T>): Promise<T | undefined> {
    let waitMs = this.retry.initialMs;
    for (;;) {
      if (this.stopping) return undefined;
      try {
        return await call();
      } catch (err) {
        const error = asDriftlineError(err);
        if (FATAL_KINDS.has(error.kind)) throw error;
        if (error.code === 'TRAINING_WORKER_NOT_FOUND') throw error;
        this.options.logger.warn({ code: error.code, err: error.message, retryInMs: waitMs }, `${what} failed; retrying`);
        this.emit({ type: 'unreachable', code: error.code, message: error.message, retryInMs: waitMs });
        await this.sleep(waitMs);
        waitMs = Math.min(waitMs * 2, this.retry.maxMs);
      }
    }
  }

  private async register(): Promise<void> {
    const { api, name, resources, version, trainers } = this.options;
    const session = await this.withRetry('registering', () => api.register({ name, ...resources, trainers: Object.keys(trainers), version }));
    if (!session) return;
    this.session = session;
    this.options.logger.info({ worker: session.workerId, name, gpus: resources.gpus.length, trainers: Object.keys(trainers) }, 'worker registered');
    this.emit({ type: 'registered', session });
  }

  private async leaseLoop(): Promise<void> {
    const { api } = this.options;
    while (!this.stopping) {
      let lease: WorkerLease | undefined;
      try {
        lease = await this.withRetry('leasing', () => api.lease(this.session!.workerId));
      } catch (err) {
        // The control plane forgot this worker (its store was reset): register again.
        if (asDriftlineError(err).code !== 'TRAINING_WORKER_NOT_FOUND') throw err;
        this.options.logger.warn('the control plane does not know this worker: registering again');
        await this.register();
        continue;
      }
      if (this.stopping) {
        // Leased as the stop came: handed back at once (the lease would otherwise hold the job until it expires).
        if (lease) {
          await api.fail(lease.leaseId, 'WORKER_SHUTDOWN', 'the worker was stopped as it leased this attempt').catch(() => undefined);
          this.emit({ type: 'attempt-ended', jobId: lease.jobId, attempt: lease.attempt, outcome: 'shutdown', errorCode: 'WORKER_SHUTDOWN' });
        }
        break;
      }
      if (!lease) {
        if (this.options.once) return;
        await this.sleep(this.session!.pollIntervalMs);
        continue;
      }
      const attempt = this.startAttempt(lease);
      this.current = attempt;
      await attempt.done;
      this.current = undefined;
      if (this.options.once) return;
    }
  }

  private startAttempt(lease: WorkerLease): RunningAttempt {
    const abort = new AbortController();
    let reason: StopReason | undefined;
    const stop = (why: StopReason): void => {
      if (reason) return;
      reason = why;
      abort.abort();
    };
    const done = this.runAttempt(lease, abort.signal, () => reason, stop).catch((err: unknown) => {
      // runAttempt reports every outcome itself; this is a bug's last line of defence.
      this.options.logger.error({ err, job: lease.jobId }, 'training attempt failed unexpectedly');
    });
    return { lease, stop, done };
  }

  private async runAttempt(lease: WorkerLease, signal: AbortSignal, stopReason: () => StopReason | undefined, stop: (why: StopReason) => void): Promise<void> {
    const { api, logger } = this.options;
    const log = logger.child({ job: lease.jobId, attempt: lease.attempt });
    log.info({ model: lease.model, trainer: lease.trainer, dataset: lease.datasetId }, 'leased a training attempt');
    this.emit({ type: 'leased', lease });
    const dir = join(this.options.workDir, ATTEMPTS_DIR, attemptDirName(lease.jobId, lease.attempt));
    const beats = new Heartbeats(api, lease.leaseId, this.session!.heartbeatIntervalMs, this.clock, log, {
      cancelled: () => stop('cancelled'),
      leaseLost: () => stop('lease-lost'),
    });
    beats.start();
    const ended = (outcome: AttemptOutcome, errorCode?: string, message?: string): void => {
      log.info({ outcome, code: errorCode, reason: message }, 'training attempt ended');
      this.emit({ type: 'attempt-ended', jobId: lease.jobId, attempt: lease.attempt, outcome, errorCode, message });
    };
    try {
      const resolve = this.options.trainers[lease.trainer];
      if (!resolve) throw new DriftlineError('TRAINER_UNAVAILABLE', `this worker does not offer the trainer ${lease.trainer}`);
      const command = await resolve();
      const files = {
        dataset: join(dir, 'dataset'),
        baseModel: join(dir, 'base.onnx'),
        hyperparameters: join(dir, 'hyperparameters.json'),
        output: join(dir, 'output'),
      };
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await this.checkRoom(dir, lease);
      await downloadVerified(api.download(lease.leaseId, lease.baseModel.sha256), lease.baseModel, files.baseModel, 'base model', signal);
      const tar = join(dir, 'dataset.tar');
      await downloadVerified(api.download(lease.leaseId, lease.dataset.sha256), lease.dataset, tar, 'dataset', signal);
      await extractDataset(tar, files.dataset);
      await rm(tar, { force: true });
      await writeFile(files.hyperparameters, lease.hyperparametersJson || '{}');
      const outcome = await runTrainer({
        trainer: command,
        files,
        limits: { ...this.options.trainerLimits, ...(lease.maxDurationMs > 0 ? { maxDurationMs: lease.maxDurationMs } : {}) },
        signal,
        loadCheck: this.options.loadCheck,
        onEvent: (event) => beats.record(event),
        onStart: (pid) => {
          // Kept so that a worker started after this one was killed can stop a trainer left running.
          void writeFile(join(dir, TRAINER_PID_FILE), `${pid}\n`).catch(() => undefined);
          this.emit({ type: 'trainer-started', jobId: lease.jobId, attempt: lease.attempt, pid });
        },
      });
      await beats.stop();
      if (stopReason()) throw new DriftlineError('TRAINER_CANCELLED', 'the attempt was stopped after its trainer finished');
      // The trainer's last lines reach the job's log before the candidate does.
      await beats.flush();
      if (stopReason()) throw new DriftlineError('TRAINER_CANCELLED', 'the attempt was stopped after its trainer finished');
      const declared = await sha256OfFile(outcome.modelPath);
      if (declared.sizeBytes > lease.maxCandidateBytes) {
        throw new DriftlineError(
          'TRAINER_OUTPUT_TOO_LARGE',
          `model.onnx is ${declared.sizeBytes} bytes; the control plane takes candidates of at most ${lease.maxCandidateBytes} (training.maxCandidateBytes)`,
          { details: { sizeBytes: declared.sizeBytes, maxCandidateBytes: lease.maxCandidateBytes } },
        );
      }
      const { candidateId } = await api.upload(lease.leaseId, declared, createReadStream(outcome.modelPath, { highWaterMark: 64 * 1024 }));
      const metrics = Object.fromEntries(Object.entries(outcome.metrics).filter((entry): entry is [string, number] => typeof entry[1] === 'number'));
      await api.complete(lease.leaseId, candidateId, metrics);
      ended('completed');
    } catch (err) {
      await beats.stop();
      const error = diskFull(err, this.options.workDir) ?? asDriftlineError(err);
      const why = stopReason();
      if (why === 'lease-lost' || error.code === 'TRAINING_LEASE_LOST') {
        ended('lease-lost', 'TRAINING_LEASE_LOST', error.message);
      } else if (why === 'cancelled') {
        // The job is cancelled already: nothing more is called for it.
        ended('cancelled', 'TRAINER_CANCELLED', error.message);
      } else {
        const code = why === 'shutdown' ? 'WORKER_SHUTDOWN' : error.code;
        const message = why === 'shutdown' ? `the worker was stopped (SIGTERM) and its shutdown grace ran out: ${error.message}` : error.message;
        // The trainer's last lines reach the job's log before the failure does.
        await beats.flush();
        await api.fail(lease.leaseId, code, message.slice(0, 2000)).catch((failErr: unknown) => {
          log.warn({ err: asDriftlineError(failErr).message }, 'the failed attempt could not be reported; its lease will expire');
        });
        ended(why === 'shutdown' ? 'shutdown' : 'failed', code, message);
      }
    } finally {
      await rm(dir, { recursive: true, force: true }).catch((err: unknown) => log.warn({ err }, 'the attempt folder could not be removed'));
    }
  }

  /**
   * The downloads (base model, dataset tar, then the extracted dataset beside it) must fit
   * before they start, with room for the trainer's output: WORKER_DISK_FULL rather than a
   * half-written dataset.
   */
  private async checkRoom(dir: string, lease: WorkerLease): Promise<void> {
    // The candidate is about the base model's size (the same graph, new weights).
    const needed = 2 * lease.baseModel.sizeBytes + 2 * lease.dataset.sizeBytes;
    const free = await (this.options.freeBytes ?? freeBytesOf)(dir).catch(() => Number.POSITIVE_INFINITY);
    if (free < needed) {
      throw new DriftlineError(
        'WORKER_DISK_FULL',
        `the work directory ${this.options.workDir} has ${free} bytes free; this attempt needs about ${needed} (base model, dataset and its extraction, the candidate): free space or point --work-dir elsewhere`,
        { details: { freeBytes: free, neededBytes: needed } },
      );
    }
  }
}

async function freeBytesOf(dir: string): Promise<number> {
  const stats = await statfs(dir);
  return stats.bavail * stats.bsize;
}

/** A write that failed for want of space, as the worker's stable code. */
function diskFull(err: unknown, workDir: string): DriftlineError | undefined {
  let code: unknown;
  // The tar extractor's and the runner's errors carry the file system's as their cause.
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT') code = e.code;
  }
  if (!code) return undefined;
  return new DriftlineError('WORKER_DISK_FULL', `the work directory ${workDir} filled up (${String(code)}): free space or point --work-dir elsewhere`, {
    cause: err,
  });
}

/**
 * One attempt's heartbeats: every interval, the newest progress and the log lines since the
 * last one (at most LINES_PER_HEARTBEAT a beat, MAX_PENDING_LINES kept). One beat at a time; a
 * beat that cannot reach the control plane keeps its lines for the next (the lease lasts
 * several intervals).
 */
class Heartbeats {
  private lines: string[] = [];
  private dropped = 0;
  private progress: WorkerProgress | null = null;
  private cancelTimer: CancelTimer | undefined;
  private inFlight: Promise<void> | undefined;
  private over = false;

  constructor(
    private readonly api: WorkerApi,
    private readonly leaseId: string,
    private readonly intervalMs: number,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly on: { cancelled(): void; leaseLost(): void },
  ) {}

  start(): void {
    this.cancelTimer = this.clock.setInterval(() => void this.beat(), Math.max(10, this.intervalMs));
  }

  record(event: TrainerEvent): void {
    if (event.type === 'progress') {
      this.progress = { epoch: event.epoch, loss: event.loss, metrics: { ...event.metrics, epochs: event.epochs } };
      const metrics = Object.entries(event.metrics)
        .map(([k, v]) => `${k} ${Number(v.toFixed(4))}`)
        .join(' ');
      this.push(`epoch ${event.epoch}/${event.epochs} loss ${Number(event.loss.toFixed(6))}${metrics ? ` ${metrics}` : ''}`);
    } else {
      this.push(event.source === 'runner' ? `[worker] ${event.message}` : event.message);
    }
  }

  private push(line: string): void {
    this.lines.push(line.slice(0, LINE_CHARS));
    if (this.lines.length > MAX_PENDING_LINES) {
      this.lines.shift();
      this.dropped++;
    }
  }

  /** Sends what is pending now (after the beat in flight, if any). */
  async flush(): Promise<void> {
    await this.inFlight;
    if (this.lines.length > 0 || this.dropped > 0) await this.send();
  }

  /** No more beats; waits for the one in flight. */
  async stop(): Promise<void> {
    this.over = true;
    this.cancelTimer?.();
    await this.inFlight;
  }

  private beat(): Promise<void> {
    if (this.inFlight || this.over) return this.inFlight ?? Promise.resolve();
    return this.send();
  }

  private send(): Promise<void> {
    if (this.dropped > 0) {
      this.lines.unshift(`[worker] ${this.dropped} log lines were dropped while the control plane could not be reached`);
      this.dropped = 0;
    }
    const lines = this.lines.splice(0, LINES_PER_HEARTBEAT);
    const report: HeartbeatReport = { progress: this.progress, logLines: lines };
    this.inFlight = this.api
      .heartbeat(this.leaseId, report)
      .then((answer) => {
        if (answer.cancel) {
          this.log.info('the job was cancelled: stopping the trainer');
          this.on.cancelled();
        }
      })
      .catch((err: unknown) => {
        const error = asDriftlineError(err);
        if (error.code === 'TRAINING_LEASE_LOST' || error.code === 'TRAINING_STATE_INVALID') {
          this.log.warn({ code: error.code }, 'the lease is lost: stopping the trainer, uploading nothing');
          this.on.leaseLost();
          return;
        }
        // Not delivered: back to the front of the queue for the next beat.
        this.lines.unshift(...lines);
        while (this.lines.length > MAX_PENDING_LINES) {
          this.lines.shift();
          this.dropped++;
        }
        this.log.warn({ code: error.code, err: error.message }, 'heartbeat failed; retrying at the next one');
      })
      .finally(() => {
        this.inFlight = undefined;
      });
    return this.inFlight;
  }
}
