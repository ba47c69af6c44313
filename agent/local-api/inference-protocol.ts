import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import { parseJsonBody } from '../../common/http/body.js';
import { DRIFTLINE_VERSION } from '../../common/version.js';
import { datatypeOf, toJsonValues } from '../inference/datatypes.js';
import type { ActiveModelInfo, InferInput, InferOutput, InferResult } from '../inference/engine.js';
import type { TensorSpec } from '../inference/model-runtime.js';
import { BINARY_HEADER, decodeBinaryTensor, encodeBinaryTensor } from './binary-tensors.js';
import { parseRequestJson } from './request-json.js';

/**
 * The Open Inference Protocol v2 (KServe) as the local API speaks it, without the HTTP: request
 * bodies to engine inputs, engine results and model info to response bodies. Pure; routes.ts
 * does the reading and writing.
 */

const SERVER_NAME = 'driftline-agent';

/** GET /v2: the server's metadata. */
export function serverMetadata(): Record<string, unknown> {
  return { name: SERVER_NAME, version: DRIFTLINE_VERSION, extensions: ['binary_tensor_data', 'model_repository'] };
}

const binaryDataSize = z.number().int().nonnegative();

const InferRequestSchema = z.object({
  id: z.string().optional(),
  parameters: z.object({ binary_data_output: z.boolean().optional() }).loose().optional(),
  inputs: z
    .array(
      z
        .object({
          name: z.string(),
          shape: z.array(z.number()),
          datatype: z.string(),
          parameters: z.object({ binary_data_size: binaryDataSize.optional() }).loose().optional(),
          // Elements are checked once, by the engine, against the model's datatype; numeric data arrives as one Float32Array (FP32) or Float64Array.
          data: z
            .custom<unknown[] | Float32Array | Float64Array>(
              (v) => Array.isArray(v) || v instanceof Float32Array || v instanceof Float64Array,
              'expected an array',
            )
            .optional(),
        })
        .refine((i) => (i.data === undefined) !== (i.parameters?.binary_data_size === undefined), {
          message: 'give either data or parameters.binary_data_size (with the bytes after the JSON header)',
        }),
    )
    .min(1),
  outputs: z.array(z.object({ name: z.string(), parameters: z.object({ binary_data: z.boolean().optional() }).loose().optional() })).optional(),
});
export type InferRequest = z.infer<typeof InferRequestSchema>;

/** An inference request from its body: the JSON part, and with the binary extension (its header's value) the bytes after it. */
export function parseInferRequest(body: Buffer, binaryHeader: string | string[] | undefined): { request: InferRequest; inputs: InferInput[] } {
  const { json, binary } = splitBody(body, binaryHeader);
  const parsed = InferRequestSchema.safeParse(json);
  if (!parsed.success)
    throw new DriftlineError('REQUEST_INVALID', `inference request is invalid: ${z.prettifyError(parsed.error)}`, { details: { issues: parsed.error.issues } });
  return { request: parsed.data, inputs: toInputs(parsed.data, binary) };
}

const MODEL_ROUTE = /^\/v2\/models\/([^/]+)(?:\/versions\/([^/]+))?(\/ready|\/infer|\/feedback)?$/;

export interface ModelRoute {
  name: string;
  version: number | undefined;
  action: '/ready' | '/infer' | '/feedback' | undefined;
}

/** /v2/models/{name}[/versions/{version}][/ready|/infer|/feedback]; undefined for any other path. */
export function parseModelRoute(path: string): ModelRoute | undefined {
  const route = MODEL_ROUTE.exec(path);
  if (!route) return undefined;
  return {
    name: decodeSegment(route[1]!),
    version: route[2] === undefined ? undefined : parseVersion(decodeSegment(route[2])),
    action: route[3] as ModelRoute['action'],
  };
}

/** GET /v2/models/{name}: the loaded model's metadata. */
export function modelMetadata(model: ActiveModelInfo): Record<string, unknown> {
  return {
    name: model.name,
    versions: [String(model.version)],
    platform: 'onnxruntime',
    inputs: model.inputs.map(tensorMetadata),
    outputs: model.outputs.map(tensorMetadata),
    provider: model.provider,
    provider_fallbacks: model.fallbacks,
    max_batch_size: model.maxBatch,
    batching: model.batching,
    sha256: model.sha256,
  };
}

/**
 * An inference response: all JSON, or with the binary extension the JSON header and each binary
 * output's bytes after it, in order (outputs asked for as binary, by name or all of them).
 */
export type InferResponse = { kind: 'json'; body: Record<string, unknown> } | { kind: 'binary'; header: Buffer; parts: Uint8Array[] };

export function inferResponse(request: InferRequest, result: InferResult, id: string): InferResponse {
  const header = { model_name: result.model, model_version: String(result.version), id };
  const binaryOut = new Set(
    result.outputs
      .filter((o) => request.outputs?.find((r) => r.name === o.name)?.parameters?.binary_data ?? request.parameters?.binary_data_output === true)
      .map((o) => o.name),
  );
  if (binaryOut.size === 0) return { kind: 'json', body: { ...header, outputs: result.outputs.map(jsonOutput) } };
  const parts: Uint8Array[] = [];
  const outputs = result.outputs.map((o) => {
    if (!binaryOut.has(o.name)) return jsonOutput(o);
    const bytes = encodeBinaryTensor(o.data);
    parts.push(bytes);
    return { name: o.name, shape: o.shape, datatype: o.datatype, parameters: { binary_data_size: bytes.length } };
  });
  return { kind: 'binary', header: Buffer.from(JSON.stringify({ ...header, outputs })), parts };
}

function tensorMetadata(spec: TensorSpec): { name: string; datatype: string; shape: number[] } {
  return { name: spec.name, datatype: datatypeOf(spec.type) ?? spec.type, shape: spec.shape };
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch (err) {
    throw new DriftlineError('REQUEST_INVALID', `path segment ${JSON.stringify(segment)} is not valid percent-encoding`, { cause: err });
  }
}

function parseVersion(text: string): number {
  const version = Number(text);
  if (!Number.isSafeInteger(version) || version < 1)
    throw new DriftlineError('REQUEST_INVALID', `model version ${JSON.stringify(text)} is not a positive integer`);
  return version;
}

function jsonOutput(o: InferOutput): Record<string, unknown> {
  return { name: o.name, shape: o.shape, datatype: o.datatype, data: toJsonValues(o.datatype, o.data) };
}

/** The JSON part of a body, and with the binary extension the bytes after it. */
function splitBody(body: Buffer, headerLength: string | string[] | undefined): { json: unknown; binary: Buffer } {
  if (headerLength === undefined) return { json: parseRequestJson(body), binary: Buffer.alloc(0) };
  const length = Number(headerLength);
  if (typeof headerLength !== 'string' || !Number.isSafeInteger(length) || length < 0 || length > body.length) {
    throw new DriftlineError(
      'REQUEST_INVALID',
      `${BINARY_HEADER} is ${JSON.stringify(headerLength)}; expected the JSON header's byte length, at most the body's ${body.length} bytes`,
    );
  }
  return { json: parseJsonBody(body.subarray(0, length)), binary: body.subarray(length) };
}

/** Inputs with JSON data, or cut in order from the binary part by their binary_data_size. */
function toInputs(request: InferRequest, binary: Buffer): InferInput[] {
  let offset = 0;
  const inputs = request.inputs.map((i): InferInput => {
    const size = i.parameters?.binary_data_size;
    if (size === undefined) return { name: i.name, datatype: i.datatype, shape: i.shape, data: flatten(i.data ?? []) };
    if (offset + size > binary.length) {
      throw new DriftlineError(
        'INFERENCE_INPUT_INVALID',
        `input ${i.name} declares ${size} binary bytes but only ${binary.length - offset} follow the JSON header`,
        { details: { input: i.name } },
      );
    }
    const data = decodeBinaryTensor(i.name, i.datatype, binary.subarray(offset, offset + size));
    offset += size;
    return { name: i.name, datatype: i.datatype, shape: i.shape, data };
  });
  if (offset !== binary.length) {
    throw new DriftlineError('REQUEST_INVALID', `${binary.length - offset} bytes after the inputs' binary data belong to no input`);
  }
  return inputs;
}

/** The protocol allows nested row-major arrays; the engine takes flat ones (numeric data is flat already). */
function flatten(data: unknown[] | Float32Array | Float64Array): ArrayLike<unknown> {
  return Array.isArray(data) && data.length > 0 && Array.isArray(data[0]) ? data.flat(Infinity) : data;
}
