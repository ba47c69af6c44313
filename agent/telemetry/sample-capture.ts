import type { SampleRecord, SampleTensor } from '../../common/proto/driftline/v1/device_link.js';
import { isDatatype, toTensorData } from '../inference/datatypes.js';
import type { InferInput, InferOutput } from '../inference/engine.js';
import { encodeBinaryTensor } from '../local-api/binary-tensors.js';

export interface CapturePolicy {
  /** Share of successful requests whose inputs are kept, 0 to 1. */
  sampleRate: number;
  /** Keep the inputs of requests that failed (a wrong input is kept too: it shows what callers send). */
  errors: boolean;
  /** Larger samples are skipped (counted), so one big tensor cannot crowd out the buffer. */
  maxSampleBytes: number;
}

export interface CaptureOutcome {
  model: string;
  version: number;
  /** The answer of a request that succeeded; undefined when it failed. */
  outputs?: readonly InferOutput[] | undefined;
  errorCode?: string | undefined;
  /** The response's id; the label posted for it later is joined to this sample by it. */
  requestId?: string | undefined;
}

/**
 * Decides which requests' raw inputs go upstream and turns them into SampleRecords. The
 * random draw is injectable so tests can make the policy deterministic.
 */
export class SampleCapture {
  /** Samples skipped because they were larger than maxSampleBytes. */
  oversized = 0;

  constructor(
    private readonly policy: Readonly<CapturePolicy>,
    private readonly random: () => number = Math.random,
  ) {}

  get enabled(): boolean {
    return this.policy.sampleRate > 0 || this.policy.errors;
  }

  /** The record to buffer for this request, or undefined when the policy keeps nothing. */
  consider(inputs: readonly InferInput[], outcome: CaptureOutcome): SampleRecord | undefined {
    const ok = outcome.outputs !== undefined;
    const reason = ok
      ? this.policy.sampleRate > 0 && this.random() < this.policy.sampleRate
        ? 'sampled'
        : undefined
      : this.policy.errors
        ? 'error'
        : undefined;
    if (!reason) return undefined;
    const budget = { bytes: this.policy.maxSampleBytes };
    const inputTensors = inputs.map((input) => inputTensor(input, budget));
    const outputTensors = (outcome.outputs ?? []).map((output) => tensor(output.name, output.datatype, output.shape, encodeBinaryTensor(output.data), budget));
    if (budget.bytes < 0) {
      this.oversized++;
      return undefined;
    }
    return {
      model: outcome.model,
      version: outcome.version,
      reason,
      inputs: inputTensors,
      outputs: outputTensors,
      errorCode: outcome.errorCode ?? '',
      requestId: outcome.requestId ?? '',
    };
  }
}

function inputTensor(input: InferInput, budget: { bytes: number }): SampleTensor {
  const data = isDatatype(input.datatype) ? toTensorData(input.datatype, input.data) : undefined;
  if (data !== undefined && typeof data !== 'string') return tensor(input.name, input.datatype, input.shape, encodeBinaryTensor(data), budget);
  // What does not fit its declared datatype (a failed request) is kept as JSON text: it shows what the caller sent.
  const json = Buffer.from(JSON.stringify(Array.from(input.data as ArrayLike<unknown>)));
  return tensor(input.name, 'JSON', input.shape, json, budget);
}

function tensor(name: string, datatype: string, shape: readonly number[], bytes: Uint8Array, budget: { bytes: number }): SampleTensor {
  budget.bytes -= bytes.length;
  // Copied: the bytes may be a view on a caller's tensor that is reused after this returns.
  return { name, datatype, shape: [...shape], data: budget.bytes >= 0 ? Buffer.from(bytes) : Buffer.alloc(0) };
}
