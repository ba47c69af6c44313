/**
 * A federated head travels as one flat parameter vector: every layer's weights (row-major
 * [outputs][inputs]) then its bias, first layer first. Devices and the control plane agree on
 * the layout through the layers' shapes, which both read from the same FederatedHead artifact.
 */
import { DriftlineError } from '../errors.js';
import type { DenseLayer } from '../learning/dense-head.js';
import { FederatedHead } from '../proto/driftline/v1/device_link.js';

/** The shape of one layer, enough to lay out or check a vector. */
export interface LayerShape {
  inputs: number;
  outputs: number;
}

/** Parameters in a head of these shapes. */
export function headLength(shapes: readonly LayerShape[]): number {
  return shapes.reduce((sum, { inputs, outputs }) => sum + outputs * inputs + outputs, 0);
}

export function flattenHead(layers: readonly DenseLayer[]): Float32Array {
  const vector = new Float32Array(headLength(layers));
  let at = 0;
  for (const layer of layers) {
    vector.set(layer.weights, at);
    at += layer.weights.length;
    vector.set(layer.bias, at);
    at += layer.bias.length;
  }
  return vector;
}

/** The layers of a vector laid out as `shapes` (copies, so the vector can be reused). */
export function unflattenHead(vector: Float32Array, shapes: readonly LayerShape[]): DenseLayer[] {
  if (vector.length !== headLength(shapes)) {
    throw new DriftlineError('FEDERATED_UPDATE_SHAPE', `a head vector of ${vector.length} parameters does not fit layers of ${headLength(shapes)}`);
  }
  const layers: DenseLayer[] = [];
  let at = 0;
  for (const { inputs, outputs } of shapes) {
    const weights = vector.slice(at, at + outputs * inputs);
    at += weights.length;
    const bias = vector.slice(at, at + outputs);
    at += bias.length;
    layers.push({ inputs, outputs, weights, bias });
  }
  return layers;
}

const float32Bytes = (values: Float32Array): Buffer => Buffer.from(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));

function float32s(bytes: Uint8Array, count: number, what: string): Float32Array {
  if (bytes.length !== count * 4) throw new DriftlineError('MODEL_INVALID', `federated head: ${what} holds ${bytes.length} bytes, expected ${count * 4}`);
  const values = new Float32Array(count);
  new Uint8Array(values.buffer).set(bytes);
  return values;
}

/** The FederatedHead artifact of these layers (little-endian float32, as the wire says). */
export function encodeHead(layers: readonly DenseLayer[]): Uint8Array {
  return FederatedHead.encode({
    layers: layers.map((l) => ({ inputs: l.inputs, outputs: l.outputs, weights: float32Bytes(l.weights), bias: float32Bytes(l.bias) })),
  }).finish();
}

/** Limits a head artifact is checked against before its layers are allocated. */
export interface HeadLimits {
  maxLayers: number;
  maxParameters: number;
}

export const DEFAULT_HEAD_LIMITS: HeadLimits = { maxLayers: 8, maxParameters: 16 * 1024 * 1024 };

/** Decodes and checks a FederatedHead artifact: consecutive layers chain, every value finite. */
export function decodeHead(bytes: Uint8Array, limits: HeadLimits = DEFAULT_HEAD_LIMITS): DenseLayer[] {
  let head: FederatedHead;
  try {
    head = FederatedHead.decode(bytes);
  } catch (err) {
    throw new DriftlineError('MODEL_INVALID', 'federated head: not a FederatedHead message', { cause: err });
  }
  if (head.layers.length === 0 || head.layers.length > limits.maxLayers) {
    throw new DriftlineError('MODEL_INVALID', `federated head: ${head.layers.length} layers (1 to ${limits.maxLayers} allowed)`);
  }
  const shapes = head.layers.map(({ inputs, outputs }) => ({ inputs, outputs }));
  if (shapes.some((s) => !Number.isInteger(s.inputs) || !Number.isInteger(s.outputs) || s.inputs < 1 || s.outputs < 1)) {
    throw new DriftlineError('MODEL_INVALID', 'federated head: every layer needs at least one input and one output');
  }
  if (headLength(shapes) > limits.maxParameters) {
    throw new DriftlineError('MODEL_INVALID', `federated head: ${headLength(shapes)} parameters (at most ${limits.maxParameters})`);
  }
  for (let i = 1; i < shapes.length; i++) {
    if (shapes[i]!.inputs !== shapes[i - 1]!.outputs) {
      throw new DriftlineError('MODEL_INVALID', `federated head: layer ${i + 1} takes ${shapes[i]!.inputs} inputs, layer ${i} gives ${shapes[i - 1]!.outputs}`);
    }
  }
  return head.layers.map((layer, i) => {
    const weights = float32s(layer.weights, layer.outputs * layer.inputs, `layer ${i + 1}'s weights`);
    const bias = float32s(layer.bias, layer.outputs, `layer ${i + 1}'s bias`);
    if (!weights.every(Number.isFinite) || !bias.every(Number.isFinite)) {
      throw new DriftlineError('MODEL_INVALID', `federated head: layer ${i + 1} holds a value that is not finite`);
    }
    return { inputs: layer.inputs, outputs: layer.outputs, weights, bias };
  });
}
