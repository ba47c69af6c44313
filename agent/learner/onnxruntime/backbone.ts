import { readFile } from 'node:fs/promises';
import ort from 'onnxruntime-node';
import { asDriftlineError, DriftlineError } from '../../../common/errors.js';
import { sha256Hex } from '../../../common/hashing.js';
import { findClassifierHead, withHeadInputAsOutput, type ClassifierHead } from '../../../common/onnx/classifier-head.js';
import type { SampleTensor } from '../../../common/proto/driftline/v1/device_link.js';
import type { Backbone, BackboneSource } from '../ports.js';

/** The model file the device serves for a name and version, or undefined when it serves another (or none). */
export type ServedModelFile = (model: string, version: number) => { path: string; sha256: string } | undefined;

/** Local API datatypes a sample's inputs carry, as onnxruntime tensors. */
const TENSOR_TYPES = {
  FP32: ['float32', Float32Array],
  FP64: ['float64', Float64Array],
  INT64: ['int64', BigInt64Array],
  INT32: ['int32', Int32Array],
  INT16: ['int16', Int16Array],
  INT8: ['int8', Int8Array],
  UINT8: ['uint8', Uint8Array],
  BOOL: ['bool', Uint8Array],
} as const;

/**
 * Opens a served model's frozen backbone in onnxruntime-node, with the head's input exposed
 * as an extra graph output (withHeadInputAsOutput): one run of a sample gives the embedding the
 * head takes. The session runs on one intra-op thread: the learner's work must leave the cores
 * to the models that serve requests.
 */
export class OnnxBackboneSource implements BackboneSource {
  constructor(private readonly served: ServedModelFile) {}

  async open(model: string, version: number, headLayers: number): Promise<Backbone> {
    const file = this.served(model, version);
    if (!file) throw new DriftlineError('LEARNER_NO_HEAD', `this device does not serve ${model} v${version}`, { details: { model, version } });
    const bytes = await readFile(file.path);
    // The file the engine loaded was verified when it was installed; a file changed since is not trained on.
    if (sha256Hex(bytes) !== file.sha256)
      throw new DriftlineError('MODEL_CHECKSUM_MISMATCH', `the model file of ${model} v${version} no longer matches its sha256`);
    let head: ClassifierHead;
    try {
      head = findClassifierHead(bytes, { maxLayers: headLayers });
    } catch (err) {
      const error = asDriftlineError(err);
      throw new DriftlineError('LEARNER_NO_HEAD', `${model} v${version} has no trainable head: ${error.message}`, { cause: err });
    }
    const features = head.layers[0]!.inputs;
    if (head.inputIsGraphInput) return new InputBackbone(file.sha256, head, features);
    const session = await ort.InferenceSession.create(withHeadInputAsOutput(bytes, head), {
      logSeverityLevel: 3,
      intraOpNumThreads: 1,
      interOpNumThreads: 1,
    });
    return new SessionBackbone(file.sha256, head, features, session);
  }
}

class SessionBackbone implements Backbone {
  readonly head;

  constructor(
    readonly modelSha256: string,
    private readonly found: ClassifierHead,
    readonly features: number,
    private readonly session: ort.InferenceSession,
  ) {
    this.head = found.layers;
  }

  async embed(inputs: readonly SampleTensor[]): Promise<Float32Array> {
    const feeds: Record<string, ort.Tensor> = {};
    for (const name of this.session.inputNames) {
      const input = inputs.find((i) => i.name === name);
      if (!input) throw new DriftlineError('DATASET_INVALID', `a kept sample has no input ${name}`);
      feeds[name] = toTensor(input);
    }
    const result = await this.session.run(feeds, [this.found.input]);
    const embedding = result[this.found.input]!;
    if (embedding.type !== 'float32' || embedding.data.length !== this.features) {
      throw new DriftlineError(
        'MODEL_HEAD_UNSUPPORTED',
        `the head's input ${this.found.input} holds ${embedding.data.length} ${embedding.type} values for one sample, not the ${this.features} floats its first layer takes`,
      );
    }
    return Float32Array.from(embedding.data as Float32Array);
  }

  close(): Promise<void> {
    return this.session.release();
  }
}

/** A head that starts at the graph input: no body to run, the embedding is the input row itself. */
class InputBackbone implements Backbone {
  readonly head;

  constructor(
    readonly modelSha256: string,
    private readonly found: ClassifierHead,
    readonly features: number,
  ) {
    this.head = found.layers;
  }

  async embed(inputs: readonly SampleTensor[]): Promise<Float32Array> {
    const input = inputs.find((i) => i.name === this.found.input);
    if (!input) throw new DriftlineError('DATASET_INVALID', `a kept sample has no input ${this.found.input}`);
    const tensor = toTensor(input);
    if (tensor.type !== 'float32' || tensor.data.length !== this.features) {
      throw new DriftlineError(
        'DATASET_INVALID',
        `a kept sample's ${this.found.input} holds ${tensor.data.length} ${tensor.type} values, not ${this.features} floats`,
      );
    }
    return Float32Array.from(tensor.data as Float32Array);
  }

  async close(): Promise<void> {}
}

function toTensor(input: SampleTensor): ort.Tensor {
  const entry = TENSOR_TYPES[input.datatype as keyof typeof TENSOR_TYPES];
  if (!entry) throw new DriftlineError('DATASET_INVALID', `a kept sample's input ${input.name} is ${input.datatype}, which the learner cannot feed`);
  const [type, Typed] = entry;
  const elements = input.shape.reduce((a, b) => a * b, 1);
  if (input.data.length !== elements * Typed.BYTES_PER_ELEMENT) {
    throw new DriftlineError('DATASET_INVALID', `a kept sample's input ${input.name} holds ${input.data.length} bytes for shape [${input.shape.join(', ')}]`);
  }
  // Copied into an aligned buffer: the bytes are a view into a decoded protobuf.
  const values = new Typed(elements);
  new Uint8Array(values.buffer).set(input.data);
  return new ort.Tensor(type, values as never, input.shape.map(Number));
}
