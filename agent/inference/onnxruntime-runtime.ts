import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Worker } from 'node:worker_threads';
import { arch, platform } from 'node:os';
import { dirname, join } from 'node:path';
import ort from 'onnxruntime-node';
import { DriftlineError } from '../../common/errors.js';
import { describeRuntimeFailure, explainRuntimeFailure } from '../../common/onnx/runtime-errors.js';
import type { ExecutionProvider } from '../../common/firmware-profile.js';
import type { Logger } from '../../common/logger.js';
import { missingProviderFact } from '../profiles/detect.js';
import type {
  Batchability,
  ModelRuntime,
  ProviderChoice,
  ProviderFailure,
  RuntimeLoadOptions,
  RuntimeSession,
  RuntimeTensor,
  TensorSpec,
  TensorType,
} from './model-runtime.js';
import { readOnnxMetadata } from './onnx-metadata.js';
import { OnnxRuntimeThread } from './onnxruntime-thread.js';
import { isOwnedTensorData } from './owned-tensors.js';

/** Only fatal native logs: provider fallbacks are reported through our own logger instead. */
const ORT_LOG_FATAL = 4;

export interface OnnxRuntime extends ModelRuntime {
  /** Providers this onnxruntime build can actually run here. */
  availableProviders(): string[];
  /**
   * Lets the runs in flight finish (for at most graceMs when given), then stops the runtime's
   * thread; runs cut off and later loads and runs get SHUTTING_DOWN.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

export interface OnnxRuntimeOptions {
  logger: Logger;
  /** Where a device-specific onnxruntime was loaded from, for error messages. */
  libraryPath?: string;
  /**
   * Where sessions run. 'main' (the default): on the calling thread, which onnxruntime-node's
   * synchronous run blocks for the whole inference. 'worker': on one worker thread, so the
   * caller's event loop keeps serving while a model runs (see onnxruntime-thread.ts).
   */
  thread?: 'main' | 'worker';
  /** With thread 'worker': called with each worker thread started (tests stop one to see a crash handled). */
  onThread?: (worker: Worker) => void;
  /**
   * Whether onnxruntime's thread pools spin-wait for work (its default, true). Spinning buys
   * a little latency on idle cores; beside an event loop that has work of its own (HTTP, the
   * buffer, the uplink) the spinning threads take the cores it needs and burn CPU between runs.
   */
  spinning?: boolean;
}

/** A session as the runtime sees it, wherever it runs. */
interface OrtSession {
  readonly inputMetadata: readonly ort.InferenceSession.ValueMetadata[];
  readonly outputMetadata: readonly ort.InferenceSession.ValueMetadata[];
  run(feeds: Readonly<Record<string, RuntimeTensor>>): Promise<Record<string, RuntimeTensor>>;
  release(): Promise<void>;
}

type SessionFactory = (path: string, options: ort.InferenceSession.SessionOptions) => Promise<OrtSession>;

/** The ModelRuntime over onnxruntime-node. */
export function createOnnxRuntime({ logger, libraryPath, thread = 'main', onThread, spinning = true }: OnnxRuntimeOptions): OnnxRuntime {
  const available = availableProviders(libraryPath);
  // The process-wide native log level, fixed when the first session is created: a provider that
  // fails to load is reported through our logger with the fact behind it, not as native noise.
  ort.env.logLevel = 'fatal';
  let closed = false;
  const worker = thread === 'worker' ? new OnnxRuntimeThread(createRequire(import.meta.url).resolve('onnxruntime-node'), logger, onThread) : undefined;
  const createSession: SessionFactory = worker ? (path, options) => threadSession(worker, path, options) : mainThreadSession;
  return {
    availableProviders: () => [...available],
    async close(options) {
      closed = true;
      await worker?.close(options);
    },
    async load(path, options) {
      if (closed) throw new DriftlineError('SHUTTING_DOWN', 'the inference runtime is shutting down');
      const metadata = await readModelMetadata(path);
      const failures: ProviderFailure[] = [];
      for (const choice of options.providers) {
        const provider = providerName(choice);
        let session: OrtSession;
        try {
          session = await createSession(path, sessionOptions(choice, options, spinning));
        } catch (err) {
          // The runtime itself failing (its thread died, it is shutting down) is no provider's fault.
          if (err instanceof DriftlineError) throw err;
          const message = err instanceof Error ? err.message : String(err);
          // Say which fact applies when the provider is not in this onnxruntime at all.
          const reason = available.includes(provider)
            ? message
            : `${message} (${missingProviderFact(provider, { arch: arch(), platform: platform() }, libraryPath).message})`;
          failures.push({ provider, reason });
          logger.warn({ path, provider, reason }, 'execution provider failed to load the model, trying the next one');
          // CPU is always present, so when it fails the model itself is at fault.
          if (provider === 'cpu')
            throw new DriftlineError('MODEL_INVALID', `onnxruntime cannot load ${path}: ${message}`, { cause: err, details: { failures } });
          continue;
        }
        try {
          return new OnnxRuntimeSession(session, provider, metadata, failures);
        } catch (err) {
          await session.release();
          throw err;
        }
      }
      throw new DriftlineError(
        'PROVIDER_UNAVAILABLE',
        `none of the execution providers [${options.providers.map(providerName).join(', ')}] could load ${path}: ${failures.map((f) => `${f.provider}: ${f.reason}`).join('; ')}`,
        {
          details: { failures },
        },
      );
    },
  };
}

/** A session on the calling thread: onnxruntime reads the caller's buffers in place. */
async function mainThreadSession(path: string, options: ort.InferenceSession.SessionOptions): Promise<OrtSession> {
  const session = await ort.InferenceSession.create(path, options);
  return {
    inputMetadata: session.inputMetadata,
    outputMetadata: session.outputMetadata,
    async run(feeds) {
      const ortFeeds: Record<string, ort.Tensor> = {};
      for (const [name, tensor] of Object.entries(feeds)) ortFeeds[name] = new ort.Tensor(tensor.type, tensor.data, tensor.dims);
      const results = await session.run(ortFeeds);
      const out: Record<string, RuntimeTensor> = {};
      for (const [name, value] of Object.entries(results)) {
        const tensor = value as ort.Tensor;
        out[name] = { type: tensor.type as TensorType, dims: tensor.dims, data: tensor.data as RuntimeTensor['data'] };
      }
      return out;
    },
    release: () => session.release(),
  };
}

/**
 * A session on the runtime's worker thread. After the thread died, the next run creates the
 * session again in the new thread (from the same file and options) before running.
 */
async function threadSession(thread: OnnxRuntimeThread, path: string, options: ort.InferenceSession.SessionOptions): Promise<OrtSession> {
  let created = await thread.create(path, options);
  let reloading: Promise<void> | undefined;
  const reload = async (): Promise<number> => {
    while (!thread.alive(created.generation)) {
      reloading ??= thread.create(path, options).then(
        (again) => {
          created = again;
          reloading = undefined;
        },
        (err: unknown) => {
          reloading = undefined;
          throw err;
        },
      );
      await reloading;
    }
    return created.handle;
  };
  return {
    inputMetadata: created.inputMetadata as ort.InferenceSession.ValueMetadata[],
    outputMetadata: created.outputMetadata as ort.InferenceSession.ValueMetadata[],
    // Posted in the caller's turn when the thread lives (a close() that follows lets it finish).
    run: (feeds) =>
      thread.alive(created.generation)
        ? thread.run(created.handle, feeds, isOwnedTensorData)
        : reload().then((handle) => thread.run(handle, feeds, isOwnedTensorData)),
    release: () => thread.release(created.handle, created.generation),
  };
}

function providerName(choice: ProviderChoice): string {
  return typeof choice === 'string' ? choice : choice.name;
}

/**
 * onnxruntime-node lists CUDA and TensorRT on linux-x64 even when their provider libraries
 * were never downloaded (they come only from onnxruntime-node's install script run with ONNXRUNTIME_NODE_INSTALL=cuda12; see the README), so a
 * provider counts as available when it is bundled or its library is on disk.
 */
function availableProviders(libraryPath: string | undefined): string[] {
  const bindingDir = dirname(
    createRequire(import.meta.url).resolve(`onnxruntime-node/bin/napi-v6/${process.platform}/${process.arch}/onnxruntime_binding.node`),
  );
  const folders = [bindingDir, ...(libraryPath === undefined ? [] : [libraryPath])];
  return ort
    .listSupportedBackends()
    .filter((b) => b.bundled || folders.some((dir) => existsSync(join(dir, `libonnxruntime_providers_${b.name}.so`))))
    .map((b) => b.name);
}

async function readModelMetadata(path: string): Promise<Record<string, string>> {
  try {
    return await readOnnxMetadata(path);
  } catch (err) {
    throw new DriftlineError('MODEL_INVALID', `cannot read ONNX metadata from ${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

/**
 * The session options a runtime created with `spinning` gives onnxruntime for one provider
 * choice. Exported so a benchmark's bare onnxruntime baseline can run with exactly the
 * options the agent uses (bench/inference.ts).
 */
export function sessionOptions(choice: ProviderChoice, options: RuntimeLoadOptions, spinning: boolean): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [typeof choice === 'string' ? choice : providerOptions(choice)],
    logSeverityLevel: ORT_LOG_FATAL,
    ...(options.intraOpThreads === undefined ? {} : { intraOpNumThreads: options.intraOpThreads }),
    ...(options.interOpThreads === undefined ? {} : { interOpNumThreads: options.interOpThreads }),
    // onnxruntime's documented session config keys (onnxruntime_session_options_config_keys.h).
    ...(spinning ? {} : { extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } } }),
  };
}

/**
 * The profile's provider options as onnxruntime names them. onnxruntime-node passes only
 * deviceId through to TensorRT, so the rest also go in the TensorRT provider's documented
 * ORT_TENSORRT_* environment overrides, which it reads when a session is created.
 */
function providerOptions(provider: ExecutionProvider): ort.InferenceSession.ExecutionProviderConfig {
  if (provider.name === 'tensorrt') {
    const env: Record<string, string | undefined> = {
      ORT_TENSORRT_FP16_ENABLE: provider.fp16 ? '1' : '0',
      ORT_TENSORRT_MAX_WORKSPACE_SIZE: provider.workspaceSize === undefined ? undefined : String(provider.workspaceSize),
      ORT_TENSORRT_ENGINE_CACHE_ENABLE: provider.engineCacheDir === undefined ? undefined : '1',
      ORT_TENSORRT_CACHE_PATH: provider.engineCacheDir,
    };
    for (const [name, value] of Object.entries(env)) if (value !== undefined) process.env[name] = value;
    return {
      name: 'tensorrt',
      deviceId: provider.deviceId,
      trt_fp16_enable: provider.fp16,
      ...(provider.workspaceSize === undefined ? {} : { trt_max_workspace_size: provider.workspaceSize }),
      ...(provider.engineCacheDir === undefined ? {} : { trt_engine_cache_enable: true, trt_engine_cache_path: provider.engineCacheDir }),
    } as ort.InferenceSession.ExecutionProviderConfig;
  }
  if (provider.name === 'cuda') {
    return {
      name: 'cuda',
      deviceId: provider.deviceId,
      ...(provider.memoryLimit === undefined ? {} : { gpu_mem_limit: provider.memoryLimit }),
    } as ort.InferenceSession.ExecutionProviderConfig;
  }
  return { name: 'cpu' };
}

class OnnxRuntimeSession implements RuntimeSession {
  readonly inputs: TensorSpec[];
  readonly outputs: TensorSpec[];
  readonly batchability: Batchability;
  readonly inputDimNames: Readonly<Record<string, readonly string[]>>;

  constructor(
    private readonly session: OrtSession,
    readonly provider: string,
    readonly metadata: Readonly<Record<string, string>>,
    readonly fallbacks: readonly ProviderFailure[],
  ) {
    this.inputs = session.inputMetadata.map((m) => toSpec(m, 'input'));
    this.outputs = session.outputMetadata.map((m) => toSpec(m, 'output'));
    this.batchability = batchabilityOf(session.inputMetadata, session.outputMetadata);
    this.inputDimNames = Object.fromEntries(session.inputMetadata.map((m) => [m.name, m.isTensor ? m.shape.map((d) => (typeof d === 'string' ? d : '')) : []]));
  }

  async run(feeds: Readonly<Record<string, RuntimeTensor>>): Promise<Record<string, RuntimeTensor>> {
    try {
      return await this.session.run(feeds);
    } catch (err) {
      throw runFailure(err, feeds);
    }
  }

  release(): Promise<void> {
    return this.session.release();
  }
}

/**
 * Batchable when every input and output has a dynamic first dimension. Exported models often
 * name it per tensor ('images', 'N', 'batch_size') or leave it unnamed (''), so the names
 * are not compared; the batcher still refuses to split an output without the batch's rows.
 */
export function batchabilityOf(inputs: readonly ort.InferenceSession.ValueMetadata[], outputs: readonly ort.InferenceSession.ValueMetadata[]): Batchability {
  const tensors = [...inputs.map((v) => ['input', v] as const), ...outputs.map((v) => ['output', v] as const)];
  for (const [role, value] of tensors) {
    const tensor = `${role} ${value.name}`;
    if (!value.isTensor) return { batchable: false, reason: 'not_a_tensor', tensor: value.name, detail: `${tensor} is not a tensor` };
    // onnxruntime reports a tensor of undeclared rank with an empty shape too.
    const shape = value.shape;
    if (shape.length === 0)
      return { batchable: false, reason: 'scalar_tensor', tensor: value.name, detail: `${tensor} has no dimensions (a scalar, or its rank is not declared)` };
    const first = shape[0];
    if (typeof first === 'number' && first >= 0) {
      return { batchable: false, reason: 'fixed_leading_dimension', tensor: value.name, detail: `${tensor} has a fixed first dimension of ${first}` };
    }
  }
  return { batchable: true };
}

/**
 * A run failure with a stable code: INPUT_SHAPE_INVALID when onnxruntime's message is about
 * the shapes fed (a caller's error), INFERENCE_FAILED otherwise; either way in the model's
 * own words (operator, node, message) rather than raw native text.
 */
function runFailure(err: unknown, feeds: Readonly<Record<string, RuntimeTensor>>): DriftlineError {
  // The runtime's own failures (its thread died, it is shutting down) keep their codes.
  if (err instanceof DriftlineError) return err;
  const failure = explainRuntimeFailure(err instanceof Error ? err.message : String(err));
  const shapes = Object.entries(feeds)
    .map(([name, t]) => `${name} [${t.dims.join(', ')}]`)
    .join(', ');
  const details = {
    ...(failure.op ? { op: failure.op, node: failure.node } : {}),
    shapes: Object.fromEntries(Object.entries(feeds).map(([name, t]) => [name, [...t.dims]])),
  };
  if (failure.inputShape) {
    return new DriftlineError('INPUT_SHAPE_INVALID', `the model cannot take inputs of these shapes (${shapes}): ${describeRuntimeFailure(failure)}`, {
      cause: err,
      details,
    });
  }
  return new DriftlineError('INFERENCE_FAILED', `the model failed to run: ${describeRuntimeFailure(failure)}`, { cause: err, details });
}

function toSpec(meta: ort.InferenceSession.ValueMetadata, role: 'input' | 'output'): TensorSpec {
  if (!meta.isTensor) {
    throw new DriftlineError(
      'MODEL_INVALID',
      `${role} ${meta.name} is not a tensor (a sequence or map, such as a ZipMap); export the model with tensor ${role}s only`,
    );
  }
  // Symbolic dimensions ('batch') are dynamic; TensorSpec marks those with -1.
  return { name: meta.name, type: meta.type, shape: meta.shape.map((d) => (typeof d === 'number' ? d : -1)) };
}
