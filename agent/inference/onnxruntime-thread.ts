import { Worker } from 'node:worker_threads';
import { DriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { RuntimeTensor, TensorData } from './model-runtime.js';

/**
 * onnxruntime-node's session.run is synchronous under its promise: the binding runs the
 * model from a setImmediate on the calling thread. On the agent's main thread every
 * inference therefore stops HTTP parsing, JSON, SQLite and the uplink for its whole
 * duration. This runs the sessions on one worker thread instead: inputs are copied once into
 * buffers that are transferred (not cloned) to it, outputs are transferred back.
 *
 * The worker's code is plain CommonJS evaluated from a string (it requires onnxruntime-node
 * by its resolved path), so the same code runs under tsx, vitest and the dist/js build
 * without a separate entry file to locate. The single executable keeps the main thread (see
 * agent.ts): there onnxruntime-node's JavaScript exists only inside the embedded bundle,
 * which a worker cannot load.
 */
const WORKER_SOURCE = String.raw`
'use strict';
const { parentPort, workerData } = require('node:worker_threads');
const ort = require(workerData.ortPath);
ort.env.logLevel = 'fatal';
const sessions = new Map();
let nextHandle = 1;
const whole = (a) => a.byteOffset === 0 && a.byteLength === a.buffer.byteLength && !(a.buffer instanceof SharedArrayBuffer);
const fail = (id, err) => parentPort.postMessage({ id, ok: false, message: err && err.message !== undefined ? err.message : String(err) });
parentPort.on('message', async (m) => {
  // Ends the thread between runs: JavaScript runs here only when no session.run is in native code.
  if (m.op === 'exit') process.exit(0);
  try {
    if (m.op === 'create') {
      const session = await ort.InferenceSession.create(m.path, m.options);
      const handle = nextHandle++;
      sessions.set(handle, session);
      parentPort.postMessage({ id: m.id, ok: true, handle, inputMetadata: session.inputMetadata, outputMetadata: session.outputMetadata });
    } else if (m.op === 'run') {
      const session = sessions.get(m.handle);
      if (session === undefined) throw new Error('the session was released');
      const feeds = {};
      for (const name of Object.keys(m.feeds)) {
        const t = m.feeds[name];
        feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
      }
      const results = await session.run(feeds);
      const outputs = {};
      const transfer = [];
      for (const name of Object.keys(results)) {
        const value = results[name];
        let data = value.data;
        if (ArrayBuffer.isView(data)) {
          if (!whole(data)) data = data.slice();
          transfer.push(data.buffer);
        }
        outputs[name] = { type: value.type, dims: Array.from(value.dims), data };
      }
      try {
        parentPort.postMessage({ id: m.id, ok: true, outputs }, transfer);
      } catch {
        // A buffer onnxruntime does not let go of is cloned instead.
        parentPort.postMessage({ id: m.id, ok: true, outputs });
      }
    } else if (m.op === 'release') {
      const session = sessions.get(m.handle);
      sessions.delete(m.handle);
      if (session !== undefined) await session.release();
      parentPort.postMessage({ id: m.id, ok: true });
    }
  } catch (err) {
    fail(m.id, err);
  }
});
`;

/** What onnxruntime says about a session's inputs and outputs (InferenceSession.ValueMetadata), as cloned from the worker. */
export interface ThreadValueMetadata {
  name: string;
  isTensor: boolean;
  type?: string;
  shape?: ReadonlyArray<number | string>;
}

interface Pending {
  resolve(value: Reply): void;
  reject(err: unknown): void;
}

interface Reply {
  id: number;
  ok: boolean;
  message?: string;
  handle?: number;
  inputMetadata?: ThreadValueMetadata[];
  outputMetadata?: ThreadValueMetadata[];
  outputs?: Record<string, RuntimeTensor>;
}

/** Copy a typed array's elements into a buffer of their own, unless they already own it (and the caller handed it over). */
function transferable(data: TensorData, owned: boolean): { data: TensorData; buffer?: ArrayBuffer } {
  if (Array.isArray(data)) return { data };
  const view = data as Exclude<TensorData, string[]>;
  const buffer = view.buffer;
  if (owned && buffer instanceof ArrayBuffer && view.byteOffset === 0 && view.byteLength === buffer.byteLength) return { data: view, buffer };
  const copy = view.slice() as Exclude<TensorData, string[]>;
  return { data: copy, buffer: copy.buffer as ArrayBuffer };
}

/**
 * The worker thread and the requests in flight on it. A thread that dies (an uncaught error
 * or an exit of its own; a native crash ends the whole process, as on the main thread) fails
 * what was in flight with INFERENCE_RUNTIME_CRASHED and bumps the generation: sessions created in an earlier generation are created again, from their file,
 * before their next run (the model reloads). close() lets what is in flight finish, then
 * ends the thread; later calls get SHUTTING_DOWN.
 */
export class OnnxRuntimeThread {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private state: 'open' | 'closing' | 'closed' = 'open';
  private drained: (() => void) | undefined;
  /** Bumped each time a thread starts: a session remembers the generation it was created in. */
  generation = 0;

  constructor(
    private readonly ortPath: string,
    private readonly logger: Logger,
    /** Called with each thread started (tests end one to see a crash handled). */
    private readonly onThread?: (worker: Worker) => void,
  ) {}

  create(
    path: string,
    options: unknown,
  ): Promise<{ handle: number; generation: number; inputMetadata: ThreadValueMetadata[]; outputMetadata: ThreadValueMetadata[] }> {
    return this.call({ op: 'create', path, options }, []).then((reply) => ({
      handle: reply.handle!,
      generation: this.generation,
      inputMetadata: reply.inputMetadata!,
      outputMetadata: reply.outputMetadata!,
    }));
  }

  /** owned: the feeds' buffers belong to this run alone (the batcher's concatenation) and may be handed over without a copy. */
  async run(handle: number, feeds: Readonly<Record<string, RuntimeTensor>>, owned: (data: TensorData) => boolean): Promise<Record<string, RuntimeTensor>> {
    const message: Record<string, RuntimeTensor> = {};
    const transfer: ArrayBuffer[] = [];
    const seen = new Set<ArrayBuffer>();
    for (const [name, tensor] of Object.entries(feeds)) {
      let { data, buffer } = transferable(tensor.data, owned(tensor.data));
      // Two inputs over one buffer: the second one gets its own copy, a buffer is transferred once.
      if (buffer !== undefined && seen.has(buffer)) ({ data, buffer } = transferable(tensor.data, false));
      if (buffer !== undefined) {
        seen.add(buffer);
        transfer.push(buffer);
      }
      message[name] = { type: tensor.type, dims: [...tensor.dims], data };
    }
    const reply = await this.call({ op: 'run', handle, feeds: message }, transfer);
    return reply.outputs!;
  }

  /** Whether sessions created in this generation still live (their thread has not died since). */
  alive(generation: number): boolean {
    return generation === this.generation && this.worker !== undefined;
  }

  async release(handle: number, generation: number): Promise<void> {
    // A session of a thread that is gone went with it.
    if (!this.alive(generation)) return;
    await this.call({ op: 'release', handle }, [], { whileClosing: true });
  }

  /**
   * Lets the calls in flight finish (for at most graceMs when given), then ends the thread;
   * calls still in flight then fail with SHUTTING_DOWN. The thread is asked to exit, never
   * terminated: terminating it in the middle of a native run aborts the whole process
   * (onnxruntime-node's binding throws into a JavaScript environment that is going away). A
   * run cut off finishes on the thread, unobserved, before the thread ends; it keeps no
   * process alive meanwhile.
   */
  async close({ graceMs }: { graceMs?: number } = {}): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'closing';
    if (this.pending.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.drained = resolve;
        if (graceMs !== undefined) timer = setTimeout(resolve, Math.max(0, graceMs));
      });
      clearTimeout(timer);
    }
    this.state = 'closed';
    const worker = this.worker;
    this.worker = undefined;
    const cut = this.pending.size > 0;
    for (const id of [...this.pending.keys()]) {
      this.settle(id)?.reject(new DriftlineError('SHUTTING_DOWN', 'the inference runtime shut down with this request in flight'));
    }
    if (!worker) return;
    worker.unref();
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    worker.postMessage({ op: 'exit' });
    if (!cut) await exited;
  }

  private call(message: Record<string, unknown>, transfer: ArrayBuffer[], { whileClosing = false } = {}): Promise<Reply> {
    if (this.state === 'closed' || (this.state === 'closing' && !whileClosing)) {
      return Promise.reject(new DriftlineError('SHUTTING_DOWN', 'the inference runtime is shutting down'));
    }
    const worker = this.thread();
    const id = this.nextId++;
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) worker.ref();
      try {
        worker.postMessage({ ...message, id }, transfer);
      } catch (err) {
        this.settle(id);
        reject(
          new DriftlineError('INFERENCE_FAILED', `cannot hand the request to the inference thread: ${err instanceof Error ? err.message : String(err)}`, {
            cause: err,
          }),
        );
      }
    }).then((reply) => {
      if (reply.ok) return reply;
      throw new Error(reply.message ?? 'the inference thread failed');
    });
  }

  private settle(id: number): Pending | undefined {
    const pending = this.pending.get(id);
    this.pending.delete(id);
    if (this.pending.size === 0) {
      this.worker?.unref();
      this.drained?.();
      this.drained = undefined;
    }
    return pending;
  }

  private thread(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { ortPath: this.ortPath } });
    this.worker = worker;
    this.generation++;
    // Idle, the thread keeps nothing alive; a call in flight refs it (call(), settle()).
    worker.unref();
    worker.on('message', (reply: Reply) => this.settle(reply.id)?.resolve(reply));
    let failure: Error | undefined;
    worker.on('error', (err) => (failure = err));
    worker.on('exit', (exitCode) => {
      if (this.worker === worker) this.worker = undefined;
      if (this.state === 'closed') return;
      const reason = failure?.message ?? `exit code ${exitCode}`;
      this.logger.error({ exitCode, err: failure, inFlight: this.pending.size }, 'the inference thread died; its models load again on their next request');
      for (const id of [...this.pending.keys()]) {
        this.settle(id)?.reject(
          new DriftlineError(
            'INFERENCE_RUNTIME_CRASHED',
            `the inference thread died (${reason}) while this request was in flight; the model loads again on the next one`,
            {
              cause: failure,
              details: { exitCode },
            },
          ),
        );
      }
    });
    this.onThread?.(worker);
    return worker;
  }
}
