/**
 * ONNX surgery for head training: find the dense layers at the end of a classifier (Gemm, or
 * MatMul then Add, with ReLU between them, possibly followed by Softmax), read their weights,
 * expose the tensor the head takes as an extra graph output (so onnxruntime computes the
 * frozen body's embeddings in one pass), and write trained weights back into the initializers.
 * Only initializer contents (and Gemm's alpha/beta, folded into them) change: the graph, its
 * inputs and its outputs stay as they were, so the candidate keeps the base model's signature.
 * Pure: bytes in, bytes out, through onnx-proto.
 */
import onnxProto from 'onnx-proto';
import type { onnx as OnnxSchema } from 'onnx-proto';
import { DriftlineError } from '../errors.js';
import type { DenseLayer } from '../learning/dense-head.js';

const { onnx } = onnxProto;
const FLOAT = onnx.TensorProto.DataType.FLOAT;

/** Where one dense layer's parameters live in the graph. */
export interface HeadLayerSource {
  /** The Gemm, or the MatMul then the Add. */
  nodes: string[];
  weight: string;
  /** Absent for a Gemm without C: writing the head back adds one. */
  bias?: string;
  /** [outputs][inputs] (Gemm transB=1) or [inputs][outputs] (Gemm transB=0, MatMul). */
  layout: 'out-in' | 'in-out';
}

export interface ClassifierHead {
  /** The tensor the head takes: a graph input (nothing frozen before it) or the frozen body's last value. */
  input: string;
  inputIsGraphInput: boolean;
  /** The head's weights as the base model has them, first layer first; ReLU between layers. */
  layers: DenseLayer[];
  sources: HeadLayerSource[];
  /** The graph value the head ends in: the Softmax's output, or the logits when there is none. */
  output: string;
  softmax: boolean;
}

export interface FindHeadOptions {
  /** Train at most this many final dense layers (the rest becomes frozen body). Default: every dense layer in the chain. */
  maxLayers?: number;
}

type Node = OnnxSchema.INodeProto;
type Tensor = OnnxSchema.ITensorProto;

interface GraphIndex {
  model: OnnxSchema.ModelProto;
  graph: OnnxSchema.IGraphProto;
  producer: Map<string, Node>;
  consumers: Map<string, number>;
  initializers: Map<string, Tensor>;
  inputs: Set<string>;
  outputs: Set<string>;
}

function decode(bytes: Uint8Array): OnnxSchema.ModelProto {
  try {
    return onnx.ModelProto.decode(bytes);
  } catch (cause) {
    throw new DriftlineError('MODEL_INVALID', 'bytes are not an ONNX model', { cause });
  }
}

function index(model: OnnxSchema.ModelProto): GraphIndex {
  const graph = model.graph;
  if (!graph) throw new DriftlineError('MODEL_INVALID', 'the ONNX model has no graph');
  const producer = new Map<string, Node>();
  const consumers = new Map<string, number>();
  for (const node of graph.node ?? []) {
    for (const out of node.output ?? []) producer.set(out, node);
    for (const input of node.input ?? []) if (input) consumers.set(input, (consumers.get(input) ?? 0) + 1);
  }
  const initializers = new Map((graph.initializer ?? []).map((t) => [t.name ?? '', t]));
  const inputs = new Set((graph.input ?? []).map((v) => v.name ?? '').filter((name) => !initializers.has(name)));
  const outputs = new Set((graph.output ?? []).map((v) => v.name ?? ''));
  for (const out of outputs) consumers.set(out, (consumers.get(out) ?? 0) + 1);
  return { model, graph, producer, consumers, initializers, inputs, outputs };
}

const unsupported = (message: string): DriftlineError => new DriftlineError('MODEL_HEAD_UNSUPPORTED', message);

const toNumber = (value: number | { toNumber(): number } | null | undefined): number =>
  value == null ? 0 : typeof value === 'number' ? value : value.toNumber();

function attribute(node: Node, name: string): OnnxSchema.IAttributeProto | undefined {
  return (node.attribute ?? []).find((a) => a.name === name);
}
const intAttribute = (node: Node, name: string, fallback: number): number => {
  const a = attribute(node, name);
  return a ? toNumber(a.i) : fallback;
};
const floatAttribute = (node: Node, name: string, fallback: number): number => attribute(node, name)?.f ?? fallback;

function dimsOf(tensor: Tensor): number[] {
  return (tensor.dims ?? []).map(toNumber);
}

/** A float32 initializer's values (raw_data little-endian, or float_data). */
function floatValues(tensor: Tensor): Float32Array {
  if (tensor.dataType !== FLOAT) throw unsupported(`initializer ${tensor.name} is not float32; the head trainers train float32 weights only`);
  if (tensor.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL) throw unsupported(`initializer ${tensor.name} keeps its data in an external file`);
  const count = dimsOf(tensor).reduce((a, b) => a * b, 1);
  const raw = tensor.rawData;
  if (raw && raw.length > 0) {
    if (raw.length !== count * 4) throw new DriftlineError('MODEL_INVALID', `initializer ${tensor.name} holds ${raw.length} bytes for ${count} floats`);
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    return Float32Array.from({ length: count }, (_, i) => view.getFloat32(i * 4, true));
  }
  const values = tensor.floatData ?? [];
  if (values.length !== count) throw new DriftlineError('MODEL_INVALID', `initializer ${tensor.name} holds ${values.length} floats for ${count}`);
  return Float32Array.from(values);
}

/** An initializer used by exactly one node: training it changes nothing but this layer. */
function ownInitializer(g: GraphIndex, name: string | null | undefined): Tensor | undefined {
  if (!name) return undefined;
  const tensor = g.initializers.get(name);
  if (!tensor || (g.consumers.get(name) ?? 0) !== 1 || g.inputs.has(name)) return undefined;
  return tensor;
}

interface FoundLayer {
  layer: DenseLayer;
  source: HeadLayerSource;
  input: string;
}

/** The dense layer producing value, or undefined when it is something else. */
function denseLayerProducing(g: GraphIndex, value: string): FoundLayer | undefined {
  const node = g.producer.get(value);
  if (!node) return undefined;
  if (node.opType === 'Gemm' && (node.domain ?? '') === '') return gemmLayer(g, node);
  if (node.opType === 'Add' && (node.domain ?? '') === '') return matMulAddLayer(g, node);
  return undefined;
}

function gemmLayer(g: GraphIndex, node: Node): FoundLayer | undefined {
  const [a, b, c] = node.input ?? [];
  const weight = ownInitializer(g, b);
  if (!a || !weight || intAttribute(node, 'transA', 0) !== 0) return undefined;
  const dims = dimsOf(weight);
  if (dims.length !== 2) return undefined;
  const transB = intAttribute(node, 'transB', 0) === 1;
  const [outputs, inputs] = transB ? [dims[0]!, dims[1]!] : [dims[1]!, dims[0]!];
  const alpha = floatAttribute(node, 'alpha', 1);
  const beta = floatAttribute(node, 'beta', 1);
  const biasTensor = c ? ownInitializer(g, c) : undefined;
  if (c && !biasTensor) return undefined;
  const bias = biasTensor ? broadcastBias(biasTensor, outputs) : new Float32Array(outputs);
  if (!bias) return undefined;
  const stored = floatValues(weight);
  const weights = transB ? stored : transpose(stored, inputs, outputs);
  for (let i = 0; i < weights.length; i++) weights[i]! *= alpha;
  for (let i = 0; i < bias.length; i++) bias[i]! *= beta;
  return {
    layer: { inputs, outputs, weights, bias },
    source: { nodes: [node.name ?? ''], weight: b!, ...(c ? { bias: c } : {}), layout: transB ? 'out-in' : 'in-out' },
    input: a,
  };
}

function matMulAddLayer(g: GraphIndex, add: Node): FoundLayer | undefined {
  const [left, right] = add.input ?? [];
  for (const [product, biasName] of [
    [left, right],
    [right, left],
  ] as const) {
    const matMul = product ? g.producer.get(product) : undefined;
    const biasTensor = ownInitializer(g, biasName);
    if (!matMul || matMul.opType !== 'MatMul' || !biasTensor || (g.consumers.get(product!) ?? 0) !== 1) continue;
    const [a, w] = matMul.input ?? [];
    const weight = ownInitializer(g, w);
    if (!a || !weight) continue;
    const dims = dimsOf(weight);
    if (dims.length !== 2) continue;
    const [inputs, outputs] = [dims[0]!, dims[1]!];
    const bias = broadcastBias(biasTensor, outputs);
    if (!bias) continue;
    return {
      layer: { inputs, outputs, weights: transpose(floatValues(weight), inputs, outputs), bias },
      source: { nodes: [matMul.name ?? '', add.name ?? ''], weight: w!, bias: biasName!, layout: 'in-out' },
      input: a,
    };
  }
  return undefined;
}

/** A bias of shape [outputs] or [1, outputs]; a scalar bias is spread to every output. */
function broadcastBias(tensor: Tensor, outputs: number): Float32Array | undefined {
  const values = floatValues(tensor);
  if (values.length === outputs) return values;
  if (values.length === 1) return new Float32Array(outputs).fill(values[0]!);
  return undefined;
}

/** rows × cols row-major → cols × rows row-major. */
function transpose(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c]!;
  return out;
}

/** The value the head ends in: the model's declared probabilities output, else its first float output. */
function headOutput(g: GraphIndex): string {
  const declared = g.model.metadataProps.find((p) => p.key === 'driftline.probabilities_output')?.value;
  if (declared && g.outputs.has(declared)) return declared;
  const floats = (g.graph.output ?? []).filter((v) => v.type?.tensorType?.elemType === FLOAT).map((v) => v.name ?? '');
  const found = floats.find((name) => g.producer.get(name)?.opType === 'Softmax') ?? floats[0];
  if (!found) throw unsupported('the model has no float32 output to train a classifier head on');
  return found;
}

/** Finds the classifier's dense head. Throws MODEL_HEAD_UNSUPPORTED when its last layer is not dense. */
export function findClassifierHead(bytes: Uint8Array, options: FindHeadOptions = {}): ClassifierHead {
  return findIn(index(decode(bytes)), options);
}

function findIn(g: GraphIndex, options: FindHeadOptions): ClassifierHead {
  const maxLayers = options.maxLayers ?? Infinity;
  if (!(maxLayers >= 1)) throw new DriftlineError('HYPERPARAMETERS_INVALID', 'a head has at least one layer');
  const output = headOutput(g);
  let logits = output;
  const last = g.producer.get(output);
  const softmax = last?.opType === 'Softmax';
  if (softmax) {
    const rankTwoAxis = intAttribute(last!, 'axis', -1);
    if (rankTwoAxis !== 1 && rankTwoAxis !== -1) throw unsupported(`the Softmax producing ${output} is over axis ${rankTwoAxis}, not the class axis`);
    logits = last!.input![0]!;
    // The logits may feed the Softmax and be an output of their own, nothing else.
    if ((g.consumers.get(logits) ?? 0) > (g.outputs.has(logits) ? 2 : 1)) throw unsupported(`the logits ${logits} feed more than the Softmax`);
  }
  const found: FoundLayer[] = [];
  let value = logits;
  for (;;) {
    const layer = denseLayerProducing(g, value);
    if (!layer) break;
    found.unshift(layer);
    if (found.length >= maxLayers) break;
    // One more layer below when the input is ReLU(dense) and nothing else reads either.
    const relu = g.producer.get(layer.input);
    if (!relu || relu.opType !== 'Relu' || (g.consumers.get(layer.input) ?? 0) !== 1 || g.outputs.has(layer.input)) break;
    const below = relu.input![0]!;
    if ((g.consumers.get(below) ?? 0) !== 1 || g.outputs.has(below) || !denseLayerProducing(g, below)) break;
    value = below;
  }
  if (found.length === 0) {
    const op = g.producer.get(logits)?.opType ?? 'a graph input';
    throw unsupported(`${logits} comes from ${op}, not a dense layer (Gemm, or MatMul then Add, on float32 initializers)`);
  }
  const layers = found.map((f) => f.layer);
  for (let l = 1; l < layers.length; l++) {
    if (layers[l]!.inputs !== layers[l - 1]!.outputs)
      throw unsupported(`dense layers ${l - 1} and ${l} do not chain (${layers[l - 1]!.outputs} → ${layers[l]!.inputs})`);
  }
  const input = found[0]!.input;
  return { input, inputIsGraphInput: g.inputs.has(input), layers, sources: found.map((f) => f.source), output, softmax };
}

/**
 * The model with the head's input as an extra graph output: one run gives the frozen body's
 * embeddings (and the original outputs). A head on a graph input needs no body: the bytes are
 * returned as they are.
 */
export function withHeadInputAsOutput(bytes: Uint8Array, head: ClassifierHead): Uint8Array {
  if (head.inputIsGraphInput) return bytes;
  const model = decode(bytes);
  const g = index(model);
  if (!g.outputs.has(head.input)) {
    const known = (g.graph.valueInfo ?? []).find((v) => v.name === head.input);
    const declared: OnnxSchema.IValueInfoProto = known ?? {
      name: head.input,
      type: { tensorType: { elemType: FLOAT, shape: { dim: [{ dimParam: 'batch' }, { dimValue: head.layers[0]!.inputs }] } } },
    };
    g.graph.output = [...(g.graph.output ?? []), declared];
  }
  return encode(model);
}

/** The model with the trained layers written into the head's initializers; same graph, same signature. */
export function writeClassifierHead(bytes: Uint8Array, head: ClassifierHead, layers: readonly DenseLayer[]): Uint8Array {
  if (layers.length !== head.sources.length) throw unsupported(`the head has ${head.sources.length} layers, ${layers.length} were given`);
  const model = decode(bytes);
  const g = index(model);
  const nodes = new Map((g.graph.node ?? []).map((n) => [n.name ?? '', n]));
  layers.forEach((layer, l) => {
    const source = head.sources[l]!;
    const base = head.layers[l]!;
    if (layer.inputs !== base.inputs || layer.outputs !== base.outputs) {
      throw unsupported(`trained layer ${l} is ${layer.inputs} → ${layer.outputs}; the model's is ${base.inputs} → ${base.outputs}`);
    }
    const weight = g.initializers.get(source.weight);
    if (!weight) throw new DriftlineError('MODEL_INVALID', `initializer ${source.weight} is gone`);
    setFloats(weight, source.layout === 'out-in' ? layer.weights : transpose(layer.weights, layer.outputs, layer.inputs));
    if (source.bias) {
      const bias = g.initializers.get(source.bias)!;
      setFloats(bias, layer.bias);
      if (dimsOf(bias).reduce((a, b) => a * b, 1) !== layer.outputs) bias.dims = [layer.outputs];
    } else {
      const gemm = nodes.get(source.nodes[0]!)!;
      const name = uniqueName(g, `${source.weight}_bias`);
      g.graph.initializer = [...(g.graph.initializer ?? []), { name, dataType: FLOAT, dims: [layer.outputs] }];
      setFloats(g.graph.initializer[g.graph.initializer.length - 1]!, layer.bias);
      gemm.input = [gemm.input![0]!, gemm.input![1]!, name];
    }
    // alpha and beta were folded into the weights when they were read.
    const first = nodes.get(source.nodes[0]!);
    if (first?.opType === 'Gemm') {
      for (const a of first.attribute ?? []) if (a.name === 'alpha' || a.name === 'beta') a.f = 1;
    }
  });
  return encode(model);
}

function uniqueName(g: GraphIndex, wanted: string): string {
  const taken = (name: string) => g.initializers.has(name) || g.producer.has(name) || g.inputs.has(name);
  let name = wanted;
  for (let i = 1; taken(name); i++) name = `${wanted}_${i}`;
  return name;
}

function setFloats(tensor: Tensor, values: Float32Array): void {
  const raw = new Uint8Array(values.length * 4);
  const view = new DataView(raw.buffer);
  for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i]!, true);
  tensor.rawData = raw;
  tensor.floatData = [];
}

function encode(model: OnnxSchema.ModelProto): Uint8Array {
  return Uint8Array.from(onnx.ModelProto.encode(model).finish());
}
