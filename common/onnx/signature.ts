import onnxProto from 'onnx-proto';
import type { onnx as OnnxSchema } from 'onnx-proto';
import { DriftlineError } from '../errors.js';
import { onnxTypeName } from './element-types.js';

const { onnx } = onnxProto;

export interface TensorSignature {
  name: string;
  /** Element type like 'float32'; non-tensor values read like 'sequence<map<int64,float32>>'. */
  type: string;
  /** -1 for a dynamic dim; empty for scalars, non-tensors and tensors of unknown rank. */
  shape: number[];
}

export interface ModelSignature {
  opset: number;
  irVersion: number;
  producer: string;
  inputs: TensorSignature[];
  outputs: TensorSignature[];
  metadata: Record<string, string>;
}

/** What a model takes and gives, read from its bytes without loading it into a runtime. */
export function readModelSignature(bytes: Uint8Array): ModelSignature {
  let model: OnnxSchema.ModelProto;
  try {
    model = onnx.ModelProto.decode(bytes);
  } catch (err) {
    throw new DriftlineError('MODEL_INVALID', 'bytes are not an ONNX model', { cause: err, details: { size: bytes.length } });
  }
  const graph = model.graph;
  if (!graph) throw new DriftlineError('MODEL_INVALID', 'ONNX model has no graph', { details: { size: bytes.length } });
  const opset = model.opsetImport.find((o) => o.domain === '' || o.domain === 'ai.onnx');
  if (!opset) throw new DriftlineError('MODEL_INVALID', 'ONNX model imports no ai.onnx opset');

  // Initializers listed as inputs are overridable weights (IR < 4 style), not something callers feed.
  const weights = new Set([...(graph.initializer ?? []).map((t) => t.name), ...(graph.sparseInitializer ?? []).map((t) => t.values?.name)]);
  return {
    opset: toNumber(opset.version),
    irVersion: toNumber(model.irVersion),
    producer: model.producerName,
    inputs: (graph.input ?? []).filter((v) => !weights.has(v.name)).map(tensorSignature),
    outputs: (graph.output ?? []).map(tensorSignature),
    metadata: Object.fromEntries(model.metadataProps.map((p) => [p.key, p.value])),
  };
}

function tensorSignature(info: OnnxSchema.IValueInfoProto): TensorSignature {
  const name = info.name ?? '';
  if (!info.type) throw new DriftlineError('MODEL_INVALID', `graph value ${name} has no type`);
  const shape = info.type.tensorType?.shape?.dim?.map((d) => (d.dimValue == null ? -1 : toNumber(d.dimValue))) ?? [];
  return { name, type: typeName(info.type, name), shape };
}

function typeName(type: OnnxSchema.ITypeProto, valueName: string): string {
  if (type.tensorType) return elementName(type.tensorType.elemType, valueName);
  if (type.sparseTensorType) return `sparse<${elementName(type.sparseTensorType.elemType, valueName)}>`;
  if (type.sequenceType?.elemType) return `sequence<${typeName(type.sequenceType.elemType, valueName)}>`;
  if (type.optionalType?.elemType) return `optional<${typeName(type.optionalType.elemType, valueName)}>`;
  if (type.mapType?.valueType) return `map<${elementName(type.mapType.keyType, valueName)},${typeName(type.mapType.valueType, valueName)}>`;
  throw new DriftlineError('MODEL_INVALID', `graph value ${valueName} has a type ONNX does not define`);
}

function elementName(dataType: number | null | undefined, valueName: string): string {
  const name = onnxTypeName(dataType ?? 0);
  if (!name) throw new DriftlineError('MODEL_INVALID', `graph value ${valueName} has unknown element type ${dataType}`);
  return name;
}

/** protobufjs hands int64 fields back as a number or a Long depending on their size. */
function toNumber(value: number | { toNumber(): number } | null | undefined): number {
  if (value == null) return 0;
  return typeof value === 'number' ? value : value.toNumber();
}
