import type { Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import type { RuntimeTensor, TensorData } from './model-runtime.js';
import { markOwnedTensorData } from './owned-tensors.js';

/** How requests for one model queue and combine; a firmware profile supplies it. */
export interface BatchingOptions {
  /** A batch runs as soon as this many rows wait (1: whenever a run slot is free). */
  defaultBatch: number;
  /** The most rows one run takes; 1 turns combining off. */
  maxBatch: number;
  /** How long the oldest waiting request may wait for company before a smaller batch runs. */
  maxQueueDelayMs: number;
  /** Waiting requests beyond which new ones are refused with INFERENCE_OVERLOADED. */
  maxQueue: number;
  /** Runs in flight at once. */
  concurrency: number;
}

/** The timer the queue waits on: a clock's (common/clock.ts), so a ManualClock drives it in tests. */
export interface BatchTimers extends Pick<Clock, 'now' | 'setTimeout'> {
  /** Runs fn once the callbacks already due have run (setImmediate). */
  defer?(fn: () => void): void;
}

export const realTimers: BatchTimers = {
  now: () => performance.now(),
  defer: (fn) => void setImmediate(fn),
  setTimeout(fn, ms) {
    const timer = setTimeout(fn, ms);
    return () => clearTimeout(timer);
  },
};

type Feeds = Record<string, RuntimeTensor>;
type Outputs = Record<string, RuntimeTensor>;

interface Pending {
  feeds: Feeds;
  rows: number;
  /** Requests combine only with others of the same key: the same dims after the first, per input. */
  key: string;
  enqueuedAt: number;
  resolve(outputs: Outputs): void;
  reject(err: unknown): void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

export interface RequestQueueStats {
  /** Requests waiting to run. */
  queued: number;
  /** Runs in flight. */
  running: number;
  /** The most requests that ever waited at once. */
  peakQueued: number;
  /** Session runs so far; fewer than requests when batches combined them. */
  runs: number;
  /** The most requests one run combined. */
  largestBatch: number;
}

/**
 * A bounded queue in front of one model session. With combining on (the model has a
 * dynamic batch dimension and maxBatch > 1), requests with the same inner dims are
 * concatenated along dim 0, run once, and the outputs split back by rows: under load the
 * model sees fewer, larger runs; a lone caller never waits longer than maxQueueDelayMs, and
 * not at all with defaultBatch 1. The queue never holds more than maxQueue requests: past
 * that, callers get INFERENCE_OVERLOADED at once instead of memory growing without bound.
 */
export class RequestQueue {
  private readonly waiting: Pending[] = [];
  private running = 0;
  private peak = 0;
  private runs = 0;
  private largestBatch = 0;
  private cancelTimer: (() => void) | undefined;
  /** The request whose delay the last timer ended: it runs now, whatever the clock reads. */
  private expired: Pending | undefined;

  constructor(
    private readonly run: (feeds: Feeds) => Promise<Outputs>,
    private readonly options: BatchingOptions,
    private readonly combine: boolean,
    private readonly abortError: (signal: AbortSignal) => Error,
    private readonly timers: BatchTimers = realTimers,
    /** Called whenever the queue empties and the last run finishes. */
    private readonly onIdle: () => void = () => undefined,
  ) {}

  stats(): RequestQueueStats {
    return { queued: this.waiting.length, running: this.running, peakQueued: this.peak, runs: this.runs, largestBatch: this.largestBatch };
  }

  /** True while anything waits or runs. */
  get busy(): boolean {
    return this.waiting.length > 0 || this.running > 0;
  }

  submit(feeds: Feeds, rows: number, signal?: AbortSignal): Promise<Outputs> {
    if (signal?.aborted) return Promise.reject(this.abortError(signal));
    // A free run slot and nothing waiting: run straight away, without queueing.
    if (this.running < this.options.concurrency && this.waiting.length === 0 && (!this.combine || rows >= this.options.defaultBatch)) {
      return this.runAlone(feeds, signal);
    }
    if (this.waiting.length >= this.options.maxQueue) {
      return Promise.reject(
        new DriftlineError(
          'INFERENCE_OVERLOADED',
          `the model is overloaded: ${this.waiting.length} requests are already waiting (limit ${this.options.maxQueue}); retry later`,
          {
            details: { queued: this.waiting.length, maxQueue: this.options.maxQueue },
          },
        ),
      );
    }
    return new Promise<Outputs>((resolve, reject) => {
      const pending: Pending = {
        feeds,
        rows,
        key: this.combine ? innerDimsKey(feeds) : '',
        enqueuedAt: this.timers.now(),
        resolve,
        reject,
        signal,
        onAbort: undefined,
      };
      if (signal) {
        // Waiting, the request leaves the queue; running, its caller stops waiting for the result.
        pending.onAbort = () => {
          const index = this.waiting.indexOf(pending);
          reject(this.abortError(signal));
          if (index >= 0) {
            this.waiting.splice(index, 1);
            this.idleCheck();
          }
        };
        signal.addEventListener('abort', pending.onAbort, { once: true });
      }
      this.waiting.push(pending);
      this.peak = Math.max(this.peak, this.waiting.length);
      this.pump();
    });
  }

  private runAlone(feeds: Feeds, signal: AbortSignal | undefined): Promise<Outputs> {
    this.running++;
    this.counted(1);
    const work = this.run(feeds);
    const done = () => {
      this.running--;
      this.afterRun();
    };
    work.then(done, done);
    return signal ? abortable(work, signal, this.abortError) : work;
  }

  private pump(): void {
    while (this.running < this.options.concurrency && this.waiting.length > 0) {
      const batch = this.takeBatch();
      if (batch === undefined) return;
      this.running++;
      this.counted(batch.length);
      void this.execute(batch).finally(() => {
        this.running--;
        this.afterRun();
      });
    }
  }

  /** The next batch to run, or undefined when it should wait for more rows (a timer is armed). */
  private takeBatch(): Pending[] | undefined {
    const head = this.waiting[0]!;
    if (!this.combine) {
      this.waiting.shift();
      return [head];
    }
    const batch: Pending[] = [];
    let rows = 0;
    for (const pending of this.waiting) {
      if (pending.key !== head.key) continue;
      if (batch.length > 0 && rows + pending.rows > this.options.maxBatch) break;
      batch.push(pending);
      rows += pending.rows;
    }
    const waited = this.timers.now() - head.enqueuedAt;
    if (rows < this.options.defaultBatch && waited < this.options.maxQueueDelayMs && this.expired !== head) {
      this.armTimer(head, this.options.maxQueueDelayMs - waited);
      return undefined;
    }
    this.expired = undefined;
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    for (const pending of batch) this.waiting.splice(this.waiting.indexOf(pending), 1);
    return batch;
  }

  /**
   * The next batch forms one event-loop turn after a run ends: callers that just got their
   * answer and ask again at once join it, instead of a batch of one leaving without them.
   */
  private afterRun(): void {
    if (this.waiting.length === 0) {
      this.idleCheck();
      return;
    }
    const next = () => {
      this.pump();
      this.idleCheck();
    };
    if (this.timers.defer) this.timers.defer(next);
    else setImmediate(next);
  }

  private counted(requests: number): void {
    this.runs++;
    this.largestBatch = Math.max(this.largestBatch, requests);
  }

  private idleCheck(): void {
    if (!this.busy) this.onIdle();
  }

  private armTimer(head: Pending, ms: number): void {
    if (this.cancelTimer) return;
    this.cancelTimer = this.timers.setTimeout(() => {
      this.cancelTimer = undefined;
      this.expired = head;
      this.pump();
    }, ms);
  }

  private async execute(batch: Pending[]): Promise<void> {
    try {
      if (batch.length === 1) {
        batch[0]!.resolve(await this.run(batch[0]!.feeds));
        return;
      }
      const outputs = await this.run(concatenate(batch));
      let parts: Outputs[];
      try {
        parts = split(
          outputs,
          batch.map((p) => p.rows),
        );
      } catch {
        // Batchability is judged from declared shapes; an output whose dynamic first dimension is
        // not the rows (a detector's variable box count) cannot be split, so each request runs alone.
        for (const pending of batch) await this.run(pending.feeds).then(pending.resolve, pending.reject);
        return;
      }
      batch.forEach((pending, i) => pending.resolve(parts[i]!));
    } catch (err) {
      for (const pending of batch) pending.reject(err);
    } finally {
      for (const pending of batch) if (pending.signal && pending.onAbort) pending.signal.removeEventListener('abort', pending.onAbort);
    }
  }
}

function innerDimsKey(feeds: Feeds): string {
  let key = '';
  for (const name of Object.keys(feeds).sort()) key += `${name}:${feeds[name]!.dims.slice(1).join('x')};`;
  return key;
}

/** One feed per input with the requests' rows one after another along dim 0. */
export function concatenate(batch: ReadonlyArray<{ feeds: Feeds; rows: number }>): Feeds {
  const first = batch[0]!.feeds;
  const rows = batch.reduce((n, p) => n + p.rows, 0);
  const out: Feeds = {};
  for (const [name, tensor] of Object.entries(first)) {
    const parts = batch.map((p) => p.feeds[name]!.data);
    out[name] = { type: tensor.type, dims: [rows, ...tensor.dims.slice(1)], data: concatData(parts) };
  }
  return out;
}

function concatData(parts: TensorData[]): TensorData {
  const head = parts[0]!;
  if (Array.isArray(head)) return (parts as string[][]).flat();
  const length = parts.reduce((n, p) => n + p.length, 0);
  const Ctor = head.constructor as new (length: number) => Exclude<TensorData, string[]>;
  const out = new Ctor(length);
  let offset = 0;
  for (const part of parts as Array<Exclude<TensorData, string[]>>) {
    (out as Float32Array).set(part as Float32Array, offset);
    offset += part.length;
  }
  // Nobody reads the concatenation once the run has it: a runtime on another thread takes it without a copy.
  return markOwnedTensorData(out);
}

/** Each output cut back into the requests' rows; an output without the batch rows on dim 0 cannot be split. */
export function split(outputs: Outputs, rows: readonly number[]): Outputs[] {
  const total = rows.reduce((n, r) => n + r, 0);
  const parts: Outputs[] = rows.map(() => ({}));
  for (const [name, tensor] of Object.entries(outputs)) {
    if (tensor.dims.length === 0 || tensor.dims[0] !== total) {
      throw new DriftlineError(
        'INFERENCE_FAILED',
        `output ${name} has dims [${tensor.dims.join(', ')}], not ${total} rows on its first dimension, so a batch cannot be split back`,
        {
          details: { output: name },
        },
      );
    }
    const inner = tensor.dims.slice(1);
    const perRow = inner.reduce((n, d) => n * d, 1);
    let offset = 0;
    rows.forEach((r, i) => {
      const end = offset + r * perRow;
      parts[i]![name] = { type: tensor.type, dims: [r, ...inner], data: tensor.data.slice(offset, end) as TensorData };
      offset = end;
    });
  }
  return parts;
}

/** onnxruntime cannot stop a run, so on abort the caller stops waiting and the run finishes unobserved. */
export function abortable<T>(work: Promise<T>, signal: AbortSignal, abortError: (signal: AbortSignal) => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
