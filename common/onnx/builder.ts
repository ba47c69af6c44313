import onnxProto from 'onnx-proto';
import type { onnx as OnnxSchema } from 'onnx-proto';
import { DriftlineError } from '../errors.js';
import { DRIFTLINE_VERSION } from '../version.js';
import { ONNX_DATA_TYPES, type OnnxElemType } from './element-types.js';

export type { OnnxElemType } from './element-types.js';

// onnx-proto is CommonJS; its namespace is only reachable through the default export under ESM.
const { onnx } = onnxProto;

/** A graph input or output. A string dim is symbolic (dynamic), e.g. 'batch'; -1 is dynamic without a name. */
export interface TensorDecl {
  name: string;
  type: OnnxElemType;
  shape: Array<number | string>;
}

/** Constant tensor contents: row-major values whose count equals the product of dims. */
export interface TensorValue {
  type: 'float32' | 'int64' | 'int32';
  dims: number[];
  values: ArrayLike<number> | bigint[];
}

export interface InitializerDecl extends TensorValue {
  name: string;
}

/** One key per attribute kind, so an int is never mistaken for a float. */
export type AttributeValue =
  { int: number } | { float: number } | { string: string } | { ints: number[] } | { floats: number[] } | { strings: string[] } | { tensor: TensorValue };

export interface NodeDecl {
  op: string;
  inputs: string[];
  outputs: string[];
  name?: string;
  /** Operator set domain; '' (the default) is ai.onnx. Any other must appear in ModelDecl.domainOpsets. */
  domain?: string;
  attributes?: Record<string, AttributeValue>;
}

export interface ModelDecl {
  name: string;
  inputs: TensorDecl[];
  outputs: TensorDecl[];
  nodes: NodeDecl[];
  initializers?: InitializerDecl[];
  /** ai.onnx opset version; 17 unless given. */
  opset?: number;
  /** Opset versions for non-default domains used by nodes, e.g. { 'com.microsoft': 1 }. */
  domainOpsets?: Record<string, number>;
  irVersion?: number;
  producer?: string;
  metadata?: Record<string, string>;
}

const AttributeType = onnx.AttributeProto.AttributeType;
const utf8 = new TextEncoder();

/** Serializes a graph declaration to ONNX ModelProto bytes. */
export function buildModel(decl: ModelDecl): Uint8Array {
  const domainOpsets = decl.domainOpsets ?? {};
  for (const node of decl.nodes) {
    const domain = node.domain ?? '';
    if (domain !== '' && !Object.hasOwn(domainOpsets, domain)) {
      throw invalid(`node ${node.name ?? node.op} uses domain '${domain}' without an opset version in domainOpsets`);
    }
  }
  const model: OnnxSchema.IModelProto = {
    irVersion: decl.irVersion ?? 8,
    producerName: decl.producer ?? 'driftline',
    producerVersion: DRIFTLINE_VERSION,
    opsetImport: [{ domain: '', version: decl.opset ?? 17 }, ...Object.entries(domainOpsets).map(([domain, version]) => ({ domain, version }))],
    graph: {
      name: decl.name,
      node: decl.nodes.map(nodeProto),
      input: decl.inputs.map(valueInfo),
      output: decl.outputs.map(valueInfo),
      initializer: (decl.initializers ?? []).map((init) => tensorProto(init.name, init)),
    },
    metadataProps: Object.entries(decl.metadata ?? {}).map(([key, value]) => ({ key, value })),
  };
  // The writer may hand back a slice of a shared pool; callers get bytes that own their buffer.
  return Uint8Array.from(onnx.ModelProto.encode(model).finish());
}

function valueInfo(decl: TensorDecl): OnnxSchema.IValueInfoProto {
  const dim = decl.shape.map((d): OnnxSchema.TensorShapeProto.IDimension => {
    if (typeof d === 'string') return { dimParam: d };
    if (d === -1) return {};
    if (!Number.isSafeInteger(d) || d < 0) throw invalid(`tensor ${decl.name} has dim ${d}; dims are non-negative integers, names or -1 (unnamed)`);
    return { dimValue: d };
  });
  return { name: decl.name, type: { tensorType: { elemType: ONNX_DATA_TYPES[decl.type], shape: { dim } } } };
}

function nodeProto(decl: NodeDecl, index: number): OnnxSchema.INodeProto {
  return {
    name: decl.name ?? `${decl.op}_${index}`,
    opType: decl.op,
    domain: decl.domain ?? '',
    input: decl.inputs,
    output: decl.outputs,
    attribute: Object.entries(decl.attributes ?? {}).map(([name, value]) => attributeProto(name, value)),
  };
}

function attributeProto(name: string, value: AttributeValue): OnnxSchema.IAttributeProto {
  if ('int' in value) return { name, type: AttributeType.INT, i: integer(name, value.int) };
  if ('float' in value) return { name, type: AttributeType.FLOAT, f: value.float };
  if ('string' in value) return { name, type: AttributeType.STRING, s: utf8.encode(value.string) };
  if ('ints' in value) return { name, type: AttributeType.INTS, ints: value.ints.map((i) => integer(name, i)) };
  if ('floats' in value) return { name, type: AttributeType.FLOATS, floats: value.floats };
  if ('strings' in value) return { name, type: AttributeType.STRINGS, strings: value.strings.map((s) => utf8.encode(s)) };
  return { name, type: AttributeType.TENSOR, t: tensorProto('', value.tensor) };
}

function integer(name: string, value: number): number {
  if (!Number.isSafeInteger(value)) throw invalid(`attribute ${name} needs integers, got ${value}`);
  return value;
}

const ELEMENT_BYTES = { float32: 4, int32: 4, int64: 8 } as const;

/** Little-endian raw_data, as the ONNX spec fixes it regardless of the host's byte order. */
function tensorProto(name: string, tensor: TensorValue): OnnxSchema.ITensorProto {
  const count = tensor.dims.reduce((n, d) => n * d, 1);
  if (tensor.values.length !== count) {
    throw invalid(`tensor ${name || '(attribute)'} has ${tensor.values.length} values for dims [${tensor.dims.join(', ')}]`);
  }
  const size = ELEMENT_BYTES[tensor.type];
  const raw = new Uint8Array(count * size);
  const view = new DataView(raw.buffer);
  for (let i = 0; i < count; i++) {
    const v = tensor.values[i]!;
    if (tensor.type === 'float32') view.setFloat32(i * size, Number(v), true);
    else if (tensor.type === 'int32') view.setInt32(i * size, integer(name, Number(v)), true);
    else view.setBigInt64(i * size, typeof v === 'bigint' ? v : BigInt(integer(name, v)), true);
  }
  return { name, dims: tensor.dims, dataType: ONNX_DATA_TYPES[tensor.type], rawData: raw };
}

function invalid(message: string): DriftlineError {
  return new DriftlineError('MODEL_INVALID', message);
}
