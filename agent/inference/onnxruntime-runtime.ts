import ort from 'onnxruntime-node';
import { DriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { ModelRuntime, RuntimeLoadOptions, RuntimeSession, RuntimeTensor, TensorSpec, TensorType } from './model-runtime.js';
import { readOnnxMetadata } from './onnx-metadata.js';

/** Only fatal native logs: provider fallbacks are reported through our own logger instead. */
const ORT_LOG_FATAL = 4;

/** The ModelRuntime over onnxruntime-node. */
export function createOnnxRuntime({ logger }: { logger: Logger }): ModelRuntime {
  return {
    async load(path, options) {
      const metadata = await readModelMetadata(path);
      const failures: Array<{ provider: string; reason: string }> = [];
      for (const provider of options.providers) {
        let session: ort.InferenceSession;
        try {
          session = await ort.InferenceSession.create(path, sessionOptions(provider, options));
        } catch (err) {
          const reason = err instanceof Error ? err.message : String(err);
          failures.push({ provider, reason });
          logger.warn({ path, provider, reason }, 'execution provider failed to load the model, trying the next one');
          // CPU is always present, so when it fails the model itself is at fault.
          if (provider === 'cpu') throw new DriftlineError('MODEL_INVALID', `onnxruntime cannot load ${path}: ${reason}`, { cause: err, details: { failures } });
          continue;
        }
        try {
          return new OnnxRuntimeSession(session, provider, metadata);
        } catch (err) {
          await session.release();
          throw err;
        }
      }
      throw new DriftlineError('PROVIDER_UNAVAILABLE', `none of the execution providers [${options.providers.join(', ')}] could load ${path}`, { details: { failures } });
    },
  };
}

async function readModelMetadata(path: string): Promise<Record<string, string>> {
  try {
    return await readOnnxMetadata(path);
  } catch (err) {
    throw new DriftlineError('MODEL_INVALID', `cannot read ONNX metadata from ${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

function sessionOptions(provider: string, options: RuntimeLoadOptions): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [provider],
    logSeverityLevel: ORT_LOG_FATAL,
    ...(options.intraOpThreads === undefined ? {} : { intraOpNumThreads: options.intraOpThreads }),
    ...(options.interOpThreads === undefined ? {} : { interOpNumThreads: options.interOpThreads }),
  };
}

class OnnxRuntimeSession implements RuntimeSession {
  readonly inputs: TensorSpec[];
  readonly outputs: TensorSpec[];

  constructor(
    private readonly session: ort.InferenceSession,
    readonly provider: string,
    readonly metadata: Readonly<Record<string, string>>,
  ) {
    this.inputs = session.inputMetadata.map((m) => toSpec(m, 'input'));
    this.outputs = session.outputMetadata.map((m) => toSpec(m, 'output'));
  }

  async run(feeds: Readonly<Record<string, RuntimeTensor>>): Promise<Record<string, RuntimeTensor>> {
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, tensor] of Object.entries(feeds)) {
      ortFeeds[name] = new ort.Tensor(tensor.type, tensor.data, tensor.dims);
    }
    const results = await this.session.run(ortFeeds);
    const out: Record<string, RuntimeTensor> = {};
    for (const [name, value] of Object.entries(results)) {
      const tensor = value as ort.Tensor;
      out[name] = { type: tensor.type as TensorType, dims: tensor.dims, data: tensor.data as RuntimeTensor['data'] };
    }
    return out;
  }

  release(): Promise<void> {
    return this.session.release();
  }
}

function toSpec(meta: ort.InferenceSession.ValueMetadata, role: 'input' | 'output'): TensorSpec {
  if (!meta.isTensor) {
    throw new DriftlineError('MODEL_INVALID', `${role} ${meta.name} is not a tensor (a sequence or map, such as a ZipMap); export the model with tensor ${role}s only`);
  }
  // Symbolic dimensions ('batch') are dynamic; TensorSpec marks those with -1.
  return { name: meta.name, type: meta.type, shape: meta.shape.map((d) => (typeof d === 'number' ? d : -1)) };
}
