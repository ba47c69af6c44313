import { statSync } from 'node:fs';
import { z } from 'zod';
import { argmax, isFloatType, probabilitiesOutput as chooseProbabilitiesOutput, PROBABILITIES_OUTPUT_KEY } from '../../common/classification.js';
import { systemClock, type Clock } from '../../common/clock.js';
import { asDriftlineError, DriftlineError, type ErrorCode } from '../../common/errors.js';
import { assertModelName } from '../../common/ids.js';
import { candidateExamples, describeExample, exampleInputsSchema, type ExampleInput, type ExampleInputs } from '../../common/onnx/example-inputs.js';
import type { Logger } from '../../common/logger.js';
import { RequestQueue, realTimers, type BatchingOptions, type BatchTimers, type RequestQueueStats } from './batcher.js';
import { DATATYPES, datatypeOf, isDatatype, toTensorData, type Datatype } from './datatypes.js';
import type {
  Batchability,
  BatchingOffReason,
  ModelRuntime,
  ProviderChoice,
  ProviderFailure,
  RuntimeSession,
  RuntimeTensor,
  TensorData,
  TensorSpec,
} from './model-runtime.js';

export type { BatchingOptions } from './batcher.js';

export { PROBABILITIES_OUTPUT_KEY } from '../../common/classification.js';
const DEFAULT_SHUTDOWN_GRACE_MS = 10_000;
/** Without a profile: no combining, one run at a time, a generous but finite queue. */
export const DEFAULT_BATCHING: Readonly<BatchingOptions> = Object.freeze({ defaultBatch: 1, maxBatch: 1, maxQueueDelayMs: 0, maxQueue: 1024, concurrency: 1 });

export interface ModelToLoad {
  name: string;
  version: number;
  path: string;
  sha256: string;
  /** Overrides the model's 'driftline.probabilities_output' metadata. */
  probabilitiesOutput?: string;
  /** Inputs the model is known to run on (from its manifest); without them warm-up tries sizes for dynamic dims. */
  examples?: ExampleInputs;
  /** This model's execution providers (the profile's inference.modelProviders rule); the engine's when absent. */
  providers?: readonly ProviderChoice[];
  /**
   * The model was admitted to the memory budget before (a restart restores what was serving):
   * it is loaded without the budget check, so a restart never refuses what ran before.
   */
  admitted?: boolean;
}

export interface ActiveModelInfo {
  name: string;
  version: number;
  sha256: string;
  provider: string;
  /** Preferred providers that could not load this model, and why: a fallback is never silent. */
  fallbacks: ProviderFailure[];
  /** Most rows one run combines; 1 when micro-batching is off for this model. */
  maxBatch: number;
  /** Whether requests are combined, and when not, a stable reason why. */
  batching: BatchingInfo;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  loadedAtMs: number;
  /**
   * Memory this model holds, measured across its load: the growth of the process's resident set
   * from before the session was created to after its warm-up, and never less than the model file's size.
   * The engine's first session also starts onnxruntime itself (tens of MiB that are no model's): it
   * counts its file's size only.
   */
  memoryBytes: number;
}

/**
 * Micro-batching for the active model. reason, when off: profile_max_batch_1 (the firmware
 * profile's maxBatch is 1), runtime_unreported (the runtime did not say), or what about the
 * model's shapes prevents it (see Batchability: scalar_tensor, fixed_leading_dimension, not_a_tensor).
 */
export type BatchingInfo =
  { enabled: true } | { enabled: false; reason: BatchingOffReason | 'profile_max_batch_1' | 'runtime_unreported'; tensor?: string; detail: string };

export interface InferInput {
  name: string;
  /** An Open Inference Protocol datatype name (FP32, INT64, ...). */
  datatype: string;
  shape: readonly number[];
  /** Flat row-major values, or a typed array of the datatype's kind (passed without a copy). */
  data: ArrayLike<unknown>;
}

export interface InferOutput {
  name: string;
  datatype: Datatype;
  shape: number[];
  data: TensorData;
}

export interface InferResult {
  model: string;
  version: number;
  provider: string;
  outputs: InferOutput[];
  /** For a one-row request to a model with a probabilities output: the argmax, and how many classes there are. */
  topClass?: number;
  classes?: number;
  /** The output the top class comes from (common/classification.ts), when the model has one: the drift monitor reads the same. */
  probabilities?: string;
}

export interface InferOptions {
  /** Serve only if this version is the active one. */
  version?: number;
  /** Return only these outputs (all when absent). */
  outputs?: readonly string[];
  timeoutMs?: number;
  signal?: AbortSignal;
  /** The response's id (the local API's): the sample capture names it, so a label can later be joined to the sample. */
  requestId?: string;
}

/** One per request that reached a loaded model, whatever its outcome. */
export interface InferenceRecord {
  model: string;
  version: number;
  provider: string;
  latencyMs: number;
  ok: boolean;
  errorCode?: ErrorCode;
  /** Argmax of row 0 of the probabilities output, when the model has one. */
  topClass?: number;
  confidence?: number;
  /** Rows run; 0 when the request was refused before running. */
  batchSize: number;
}

export interface InferenceObserver {
  onInference(record: InferenceRecord): void;
}

/** What callers of the engine (the local API) depend on. */
export interface InferenceService {
  /** The first model served (the one of an agent serving a single model). */
  active(): ActiveModelInfo | undefined;
  /** Every model served, in the order they were first loaded. */
  models(): ActiveModelInfo[];
  /** The model served under this name. */
  model(name: string): ActiveModelInfo | undefined;
  infer(model: string, inputs: readonly InferInput[], options?: InferOptions): Promise<InferResult>;
  /** Requests waiting and running on one model, or on all of them together when no name is given. */
  queueStats(model?: string): RequestQueueStats;
}

export interface InferenceEngineOptions {
  runtime: ModelRuntime;
  /** Execution providers in order of preference, from the device profile. */
  providers: readonly ProviderChoice[];
  logger: Logger;
  observer?: InferenceObserver;
  clock?: Clock;
  intraOpThreads?: number;
  interOpThreads?: number;
  /** Queueing and micro-batching, from the device profile; DEFAULT_BATCHING when absent. */
  batching?: BatchingOptions;
  /** Timers for the batching delay; tests swap them. */
  timers?: BatchTimers;
  /**
   * Memory the models may use together (the firmware profile's inference.memoryBudget): a model
   * whose measured memory does not fit beside the others is refused with MODEL_SET_OVER_BUDGET
   * and the others keep serving. No check when absent.
   */
  memoryBudgetBytes?: number;
  /** The resident set size of the process; tests swap it. */
  residentBytes?: () => number;
}

const ModelToLoadSchema = z.object({
  name: z.string(),
  version: z.number().int().positive(),
  path: z.string().min(1),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits'),
  probabilitiesOutput: z.string().min(1).optional(),
  examples: exampleInputsSchema.optional(),
  providers: z.array(z.unknown()).min(1).optional(),
  admitted: z.boolean().optional(),
});

const EMPTY_STATS: RequestQueueStats = { queued: 0, running: 0, peakQueued: 0, runs: 0, largestBatch: 0 };

/**
 * Serves a set of models by name, each with its own session and request queue, and swaps one
 * model's version without dropping a request, its own or another model's: the new version
 * loads and warms up beside the current one, the swap is a single assignment in the map of
 * models, and the old session is released once the runs already started on it have finished.
 */
export class InferenceEngine implements InferenceService {
  private readonly slots = new Map<string, Slot>();
  private readonly retiring = new Set<Slot>();
  private loading: Promise<unknown> = Promise.resolve();
  private state: 'running' | 'stopping' | 'stopped' = 'running';
  private readonly clock: Clock;
  /** Whether a session was ever created: the first creation also starts the runtime itself (tens of MiB that are no model's). */
  private runtimeStarted = false;

  private constructor(private readonly options: InferenceEngineOptions) {
    this.clock = options.clock ?? systemClock;
  }

  static create(options: InferenceEngineOptions): InferenceEngine {
    if (options.providers.length === 0) throw new DriftlineError('CONFIG_INVALID', 'the inference engine needs at least one execution provider');
    return new InferenceEngine(options);
  }

  active(): ActiveModelInfo | undefined {
    return this.slots.values().next().value?.info;
  }

  models(): ActiveModelInfo[] {
    return [...this.slots.values()].map((s) => s.info);
  }

  model(name: string): ActiveModelInfo | undefined {
    return this.slots.get(name)?.info;
  }

  queueStats(model?: string): RequestQueueStats {
    if (model !== undefined) return this.slots.get(model)?.queue.stats() ?? { ...EMPTY_STATS };
    const all = [...this.slots.values()].map((s) => s.queue.stats());
    return all.reduce(
      (sum, s) => ({
        queued: sum.queued + s.queued,
        running: sum.running + s.running,
        peakQueued: Math.max(sum.peakQueued, s.peakQueued),
        runs: sum.runs + s.runs,
        largestBatch: Math.max(sum.largestBatch, s.largestBatch),
      }),
      { ...EMPTY_STATS },
    );
  }

  /** Loads serialize (across models too, so each load's memory is measured alone): two pushes in a row end with the second one active. */
  load(model: ModelToLoad): Promise<ActiveModelInfo> {
    const next = this.loading.then(() => this.swapIn(model));
    this.loading = next.catch(() => undefined);
    return next;
  }

  /**
   * Stops serving a model (the desired state no longer lists it): new requests for it get
   * MODEL_NOT_FOUND, the runs already started on it finish, then its session is released. The
   * other models are not touched. false when no model of that name was served.
   */
  unload(name: string): Promise<boolean> {
    const next = this.loading.then(() => {
      const slot = this.slots.get(name);
      if (!slot) return false;
      this.slots.delete(name);
      this.retire(slot);
      this.options.logger.info({ model: slot.describe() }, 'model unloaded');
      return true;
    });
    this.loading = next.catch(() => undefined);
    return next;
  }

  async infer(modelName: string, inputs: readonly InferInput[], options: InferOptions = {}): Promise<InferResult> {
    if (this.state !== 'running') throw new DriftlineError('SHUTTING_DOWN', 'the inference engine is shutting down');
    const slot = this.route(modelName, options.version);
    const started = performance.now();
    let batchSize = 0;
    try {
      const { feeds, rows } = slot.feeds(inputs);
      const wanted = slot.selectOutputs(options.outputs);
      const signal = deadline(options);
      batchSize = rows;
      // Nothing awaits between routing and submit(), so a swap cannot release this session first.
      const raw = await slot.queue.submit(feeds, rows, signal);
      const outputs = wanted.map((name) => toOutput(name, raw));
      const { classes, ...top } = slot.topClass(raw);
      this.record(slot, { latencyMs: performance.now() - started, ok: true, batchSize, ...top });
      const answer = batchSize === 1 && top.topClass !== undefined ? { topClass: top.topClass, classes } : {};
      const probabilities = slot.probabilitiesName === undefined ? {} : { probabilities: slot.probabilitiesName };
      return { model: slot.info.name, version: slot.info.version, provider: slot.info.provider, outputs, ...answer, ...probabilities };
    } catch (err) {
      const error = asDriftlineError(err, 'INFERENCE_FAILED');
      this.record(slot, { latencyMs: performance.now() - started, ok: false, errorCode: error.code, batchSize });
      throw error;
    }
  }

  /** Refuses new work, lets runs in flight finish for up to graceMs, then releases every session. */
  async shutdown({ graceMs = DEFAULT_SHUTDOWN_GRACE_MS }: { graceMs?: number } = {}): Promise<void> {
    if (this.state !== 'running') return;
    this.state = 'stopping';
    await this.loading;
    for (const slot of this.slots.values()) this.retire(slot);
    this.slots.clear();
    const slots = [...this.retiring];
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, graceMs);
    });
    await Promise.race([Promise.all(slots.map((s) => s.released)), graceOver]);
    clearTimeout(timer);
    const forced = slots.filter((s) => s.queue.busy);
    if (forced.length > 0) this.options.logger.warn({ models: forced.map((s) => s.describe()) }, 'releasing sessions with runs still in flight');
    await Promise.all(slots.map((s) => s.release()));
    this.state = 'stopped';
  }

  private route(modelName: string, version: number | undefined): Slot {
    if (this.slots.size === 0) throw new DriftlineError('MODEL_NOT_LOADED', 'no model is loaded yet');
    const slot = this.slots.get(modelName);
    if (!slot) {
      throw new DriftlineError(
        'MODEL_NOT_FOUND',
        `model ${JSON.stringify(modelName)} is not served here; the models served are ${[...this.slots.keys()].join(', ')}`,
      );
    }
    if (version !== undefined && version !== slot.info.version) {
      throw new DriftlineError('MODEL_NOT_FOUND', `version ${version} of ${modelName} is not active; version ${slot.info.version} is`);
    }
    return slot;
  }

  private async swapIn(model: ModelToLoad): Promise<ActiveModelInfo> {
    if (this.state !== 'running') throw new DriftlineError('SHUTTING_DOWN', 'the inference engine is shutting down');
    const parsed = ModelToLoadSchema.safeParse(model);
    if (!parsed.success)
      throw new DriftlineError('MODEL_INVALID', `model to load is invalid: ${z.prettifyError(parsed.error)}`, { details: { issues: parsed.error.issues } });
    const spec = parsed.data;
    assertModelName(spec.name);
    const { logger } = this.options;
    const resident = this.options.residentBytes ?? (() => process.memoryUsage.rss());
    const residentBefore = resident();
    let session: RuntimeSession;
    try {
      session = await this.options.runtime.load(spec.path, {
        providers: (model.providers as ProviderChoice[] | undefined) ?? this.options.providers,
        intraOpThreads: this.options.intraOpThreads,
        interOpThreads: this.options.interOpThreads,
      });
    } catch (err) {
      throw asDriftlineError(err, 'MODEL_INVALID');
    }
    let slot: Slot;
    const batching = this.options.batching ?? DEFAULT_BATCHING;
    const batchingInfo = batchingOf(session.batchability, batching.maxBatch);
    try {
      const info: ActiveModelInfo = {
        name: spec.name,
        version: spec.version,
        sha256: spec.sha256,
        provider: session.provider,
        fallbacks: (session.fallbacks ?? []).map((f) => ({ ...f })),
        maxBatch: batchingInfo.enabled ? batching.maxBatch : 1,
        batching: batchingInfo,
        inputs: session.inputs.map(copySpec),
        outputs: session.outputs.map(copySpec),
        loadedAtMs: this.clock.now(),
        memoryBytes: 0,
      };
      slot = new Slot(
        info,
        session,
        session.inputDimNames ?? {},
        probabilitiesOutput(session, spec.probabilitiesOutput),
        logger,
        batching,
        this.options.timers ?? realTimers,
      );
      await warmUp(session, spec);
      info.memoryBytes = Math.max(fileBytes(spec.path), this.runtimeStarted ? resident() - residentBefore : 0);
      this.checkBudget(info, spec.admitted === true);
    } catch (err) {
      this.runtimeStarted = true;
      await session.release().catch((releaseErr: unknown) => logger.warn({ err: releaseErr }, 'releasing a model that failed to load failed'));
      if (err instanceof DriftlineError) throw err;
      throw new DriftlineError('MODEL_INVALID', `${spec.name} v${spec.version} could not be prepared: ${err instanceof Error ? err.message : String(err)}`, {
        cause: err,
      });
    }
    this.runtimeStarted = true;
    if (this.state !== 'running') {
      await session.release();
      throw new DriftlineError('SHUTTING_DOWN', 'the inference engine shut down while the model was loading');
    }
    const previous = this.slots.get(spec.name);
    // A replaced model keeps its place in the order; a new one goes last.
    this.slots.set(spec.name, slot);
    if (previous) this.retire(previous);
    logger.info(
      {
        model: spec.name,
        version: spec.version,
        provider: session.provider,
        fallbacks: slot.info.fallbacks,
        maxBatch: slot.info.maxBatch,
        batching: slot.info.batching,
        memoryBytes: slot.info.memoryBytes,
        previous: previous?.describe(),
      },
      'model active',
    );
    return slot.info;
  }

  /** The models that stay beside this one (a new version of the same model replaces the old) must fit the budget with it. */
  private checkBudget(info: ActiveModelInfo, admitted: boolean): void {
    const budget = this.options.memoryBudgetBytes;
    if (budget === undefined || admitted) return;
    const others = [...this.slots.values()].filter((s) => s.info.name !== info.name);
    const othersBytes = others.reduce((n, s) => n + s.info.memoryBytes, 0);
    if (othersBytes + info.memoryBytes <= budget) return;
    throw new DriftlineError(
      'MODEL_SET_OVER_BUDGET',
      `${info.name} v${info.version} needs ${info.memoryBytes} bytes once loaded; with the ${others.length} model(s) serving (${othersBytes} bytes) that exceeds the memory budget of ${budget} bytes; the running models stay`,
      { details: { model: info.name, version: info.version, memoryBytes: info.memoryBytes, othersBytes, budgetBytes: budget } },
    );
  }

  private retire(slot: Slot): void {
    this.retiring.add(slot);
    void slot.released.then(() => this.retiring.delete(slot));
    slot.retire();
  }

  private record(slot: Slot, outcome: Omit<InferenceRecord, 'model' | 'version' | 'provider'>): void {
    const observer = this.options.observer;
    if (!observer) return;
    try {
      observer.onInference({ model: slot.info.name, version: slot.info.version, provider: slot.info.provider, ...outcome });
    } catch (err) {
      this.options.logger.warn({ err }, 'inference observer failed');
    }
  }
}

/** A loaded session and the requests queued and running on it. */
class Slot {
  readonly queue: RequestQueue;
  private retired = false;
  private releasing: Promise<void> | undefined;
  readonly released: Promise<void>;
  private markReleased!: () => void;
  private readonly inputs = new Map<string, TensorSpec>();

  constructor(
    readonly info: ActiveModelInfo,
    private readonly session: RuntimeSession,
    private readonly dimNames: Readonly<Record<string, readonly string[]>>,
    private readonly probabilities: string | undefined,
    private readonly logger: Logger,
    batching: BatchingOptions,
    timers: BatchTimers,
  ) {
    for (const input of info.inputs) this.inputs.set(input.name, input);
    this.queue = new RequestQueue(
      (feeds) => session.run(feeds),
      batching,
      info.maxBatch > 1,
      abortError,
      timers,
      () => {
        if (this.retired) void this.release();
      },
    );
    this.released = new Promise((resolve) => {
      this.markReleased = resolve;
    });
  }

  describe(): string {
    return `${this.info.name}@${this.info.version}`;
  }

  retire(): void {
    this.retired = true;
    if (!this.queue.busy) void this.release();
  }

  release(): Promise<void> {
    this.releasing ??= this.session
      .release()
      .catch((err: unknown) => this.logger.warn({ err, model: this.describe() }, 'releasing a model session failed'))
      .then(() => this.markReleased());
    return this.releasing;
  }

  /** Checks every input against the model's signature before anything runs. */
  feeds(inputs: readonly InferInput[]): { feeds: Record<string, RuntimeTensor>; rows: number } {
    const feeds: Record<string, RuntimeTensor> = {};
    const seen = new Set<string>();
    for (const input of inputs) {
      const spec = this.inputs.get(input.name);
      if (!spec) invalid(input.name, `unknown input ${JSON.stringify(input.name)}; the model's inputs are ${[...this.inputs.keys()].join(', ')}`);
      if (seen.has(spec.name)) invalid(spec.name, `input ${spec.name} is given more than once`);
      seen.add(spec.name);
      feeds[spec.name] = toTensor(input, spec);
    }
    for (const spec of this.inputs.values()) {
      if (!seen.has(spec.name)) invalid(spec.name, `missing input ${spec.name} (${datatypeOf(spec.type) ?? spec.type} ${formatShape(spec.shape)})`);
    }
    this.checkDimensionsAgree(feeds);
    const first = feeds[this.info.inputs[0]?.name ?? ''];
    return { feeds, rows: first && first.dims.length > 0 ? first.dims[0] : 1 };
  }

  /**
   * What the signature alone cannot say: inputs sharing a symbolic dimension ('batch') agree on
   * its size, and with micro-batching every input has the same rows, since runs combine along
   * dimension 0. onnxruntime would otherwise fail deep inside a kernel, or not at all.
   */
  private checkDimensionsAgree(feeds: Record<string, RuntimeTensor>): void {
    const seen = new Map<string, { input: string; size: number }>();
    for (const spec of this.info.inputs) {
      const dims = feeds[spec.name]!.dims;
      (this.dimNames[spec.name] ?? []).forEach((symbol, i) => {
        if (symbol === '') return;
        const earlier = seen.get(symbol);
        if (!earlier) seen.set(symbol, { input: spec.name, size: dims[i]! });
        else if (earlier.size !== dims[i]) {
          shapeInvalid(
            spec.name,
            `input ${spec.name} has ${dims[i]} for dimension ${JSON.stringify(symbol)} but ${earlier.input} has ${earlier.size}; inputs that share a dimension must agree on its size`,
          );
        }
      });
    }
    if (this.info.maxBatch <= 1) return;
    const [head, ...rest] = this.info.inputs;
    for (const spec of rest) {
      const rows = feeds[spec.name]!.dims[0];
      const headRows = feeds[head!.name]!.dims[0];
      if (rows !== headRows)
        shapeInvalid(
          spec.name,
          `input ${spec.name} has ${rows} rows (dimension 0) but ${head!.name} has ${headRows}; every input needs the same number of rows`,
        );
    }
  }

  selectOutputs(requested: readonly string[] | undefined): string[] {
    const names = this.info.outputs.map((o) => o.name);
    if (requested === undefined) return names;
    for (const name of requested) {
      if (!names.includes(name))
        throw new DriftlineError('REQUEST_INVALID', `unknown output ${JSON.stringify(name)}; the model's outputs are ${names.join(', ')}`, {
          details: { output: name },
        });
    }
    return [...requested];
  }

  topClass(outputs: Record<string, RuntimeTensor>): { topClass?: number; confidence?: number; classes?: number } {
    const tensor = this.probabilities === undefined ? undefined : outputs[this.probabilities];
    if (!tensor || tensor.dims.length !== 2 || tensor.dims[0] < 1 || tensor.dims[1] < 1) return {};
    const row = tensor.data as Float32Array | Float64Array;
    const best = argmax(row, 0, tensor.dims[1]);
    return { topClass: best, confidence: row[best], classes: tensor.dims[1] };
  }

  get probabilitiesName(): string | undefined {
    return this.probabilities;
  }
}

function fileBytes(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

function toTensor(input: InferInput, spec: TensorSpec): RuntimeTensor {
  const expected = datatypeOf(spec.type);
  if (expected === undefined) invalid(spec.name, `input ${spec.name} has element type ${spec.type}, which the inference API cannot carry`);
  if (!isDatatype(input.datatype) || input.datatype !== expected) {
    invalid(spec.name, `input ${spec.name} has datatype ${JSON.stringify(input.datatype)}; expected ${expected}`);
  }
  const shape = input.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    invalid(spec.name, `input ${spec.name} has shape ${JSON.stringify(shape)}; expected a list of non-negative integers`);
  }
  const fits = shape.length === spec.shape.length && spec.shape.every((d, i) => d < 0 || d === shape[i]);
  if (!fits) invalid(spec.name, `input ${spec.name} has shape ${formatShape(shape)}; expected ${formatShape(spec.shape)} (-1 is any size)`);
  const zero = shape.findIndex((d, i) => d === 0 && spec.shape[i] !== 0);
  if (zero >= 0)
    shapeInvalid(spec.name, `input ${spec.name} has shape ${formatShape(shape)}: dimension ${zero} is 0, and the model declares no empty dimension there`);
  const elements = shape.reduce((n, d) => n * d, 1);
  const data = input.data;
  if (!Array.isArray(data) && !ArrayBuffer.isView(data)) invalid(spec.name, `input ${spec.name} has no data array`);
  if (data.length !== elements) {
    invalid(spec.name, `input ${spec.name} has ${data.length} values; shape ${formatShape(shape)} needs ${elements}`);
  }
  const converted = toTensorData(expected, data);
  if (typeof converted === 'string') invalid(spec.name, `input ${spec.name}: ${converted}; expected ${expected}`);
  return { type: DATATYPES[expected], dims: shape, data: converted };
}

function invalid(input: string, message: string): never {
  throw new DriftlineError('INFERENCE_INPUT_INVALID', message, { details: { input } });
}

function shapeInvalid(input: string, message: string): never {
  throw new DriftlineError('INPUT_SHAPE_INVALID', message, { details: { input } });
}

function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

function toOutput(name: string, raw: Record<string, RuntimeTensor>): InferOutput {
  const tensor = raw[name];
  const datatype = tensor && datatypeOf(tensor.type);
  if (!tensor || !datatype) throw new DriftlineError('INFERENCE_FAILED', `output ${name} is missing or has an element type the inference API cannot carry`);
  return { name, datatype, shape: [...tensor.dims], data: tensor.data };
}

function batchingOf(shapes: Batchability | undefined, maxBatch: number): BatchingInfo {
  if (shapes === undefined) return { enabled: false, reason: 'runtime_unreported', detail: 'the model runtime does not say whether the model can be batched' };
  if (!shapes.batchable) return { enabled: false, reason: shapes.reason, tensor: shapes.tensor, detail: shapes.detail };
  if (maxBatch <= 1) return { enabled: false, reason: 'profile_max_batch_1', detail: 'the firmware profile sets inference.batching.maxBatch to 1' };
  return { enabled: true };
}

function copySpec(spec: TensorSpec): TensorSpec {
  return { name: spec.name, type: spec.type, shape: [...spec.shape] };
}

/** The output holding class probabilities by the rule in common/classification.ts; one the release or metadata names must exist. */
function probabilitiesOutput(session: RuntimeSession, override: string | undefined): string | undefined {
  const named = override ?? session.metadata[PROBABILITIES_OUTPUT_KEY];
  if (named !== undefined && !session.outputs.some((o) => o.name === named))
    throw new DriftlineError('MODEL_INVALID', `probabilities output ${named} is not an output of the model`);
  return chooseProbabilitiesOutput(
    session.outputs.map((o) => ({ name: o.name, float: isFloatType(o.type), shape: o.shape })),
    named,
  );
}

/**
 * One inference before the model takes traffic, so the first real request does not pay for
 * lazy initialization and a model that cannot run is refused before the swap. With example
 * inputs every one must run; without, the first of the candidate sizes for dynamic dims that
 * runs will do (a sequence model may need a length far above 1). A failure is
 * MODEL_WARMUP_FAILED in the model's own words, with every shape tried.
 */
async function warmUp(session: RuntimeSession, spec: z.output<typeof ModelToLoadSchema>): Promise<void> {
  const given = spec.examples !== undefined;
  const examples = spec.examples ?? candidateExamples(session.inputs);
  const attempts: Array<{ inputs: string; code: ErrorCode; message: string }> = [];
  for (const example of examples) {
    try {
      await session.run(exampleFeeds(example, session.inputs));
      if (!given) return;
      continue;
    } catch (err) {
      const error = asDriftlineError(err, 'INFERENCE_FAILED');
      attempts.push({ inputs: describeExample(example), code: error.code, message: error.message });
      if (given || error.code === 'MODEL_INVALID') break;
    }
  }
  if (attempts.length === 0) return;
  const last = attempts[attempts.length - 1]!;
  const tried = given ? `its example input ${last.inputs}` : `every size tried for its dynamic dimensions (${attempts.map((a) => `[${a.inputs}]`).join('; ')})`;
  throw new DriftlineError(
    'MODEL_WARMUP_FAILED',
    `${spec.name} v${spec.version} failed its warm-up inference on ${tried}: ${last.message}${given ? '' : '; give the release example inputs (models push --examples) it can run on'}`,
    {
      details: { attempts },
    },
  );
}

/** An example as feeds: every input the model declares, with the example's values or zeros. */
function exampleFeeds(example: ExampleInput, inputs: readonly TensorSpec[]): Record<string, RuntimeTensor> {
  const feeds: Record<string, RuntimeTensor> = {};
  for (const spec of inputs) {
    const tensor = Object.hasOwn(example, spec.name) ? example[spec.name] : undefined;
    if (!tensor) throw new DriftlineError('MODEL_INVALID', `the example inputs give no ${spec.name}, which the model needs`);
    const datatype = datatypeOf(spec.type);
    if (!datatype) throw new DriftlineError('MODEL_INVALID', `input ${spec.name} has element type ${spec.type}, which the inference API cannot carry`);
    if (tensor.type !== spec.type) throw new DriftlineError('MODEL_INVALID', `the example input ${spec.name} is ${tensor.type}; the model takes ${spec.type}`);
    const elements = tensor.dims.reduce((n, d) => n * d, 1);
    const values = tensor.data ?? new Array(elements).fill(datatype === 'BYTES' ? '' : datatype === 'BOOL' ? false : 0);
    const data = toTensorData(datatype, values);
    if (typeof data === 'string') throw new DriftlineError('MODEL_INVALID', `the example input ${spec.name}: ${data}`);
    feeds[spec.name] = { type: spec.type as RuntimeTensor['type'], dims: tensor.dims, data };
  }
  return feeds;
}

function deadline({ timeoutMs, signal }: InferOptions): AbortSignal | undefined {
  if (timeoutMs === undefined) return signal;
  const timeout = AbortSignal.timeout(timeoutMs);
  return signal ? AbortSignal.any([signal, timeout]) : timeout;
}

function abortError(signal: AbortSignal): DriftlineError {
  const reason: unknown = signal.reason;
  if (reason instanceof DOMException && reason.name === 'TimeoutError') {
    return new DriftlineError('INFERENCE_TIMEOUT', 'inference did not finish before its deadline', { cause: reason });
  }
  return new DriftlineError('INFERENCE_CANCELLED', 'inference was cancelled by the caller', { cause: reason });
}
