/** ONNX TensorProto.DataType numbers and the names Driftline uses for them on its side. */
export const ONNX_DATA_TYPES = {
  float32: 1,
  uint8: 2,
  int8: 3,
  uint16: 4,
  int16: 5,
  int32: 6,
  int64: 7,
  string: 8,
  bool: 9,
  float16: 10,
  float64: 11,
  uint32: 12,
  uint64: 13,
  complex64: 14,
  complex128: 15,
  bfloat16: 16,
} as const;

export type OnnxTypeName = keyof typeof ONNX_DATA_TYPES;

export type OnnxElemType = Extract<OnnxTypeName, 'float32' | 'float16' | 'float64' | 'int8' | 'uint8' | 'int32' | 'int64' | 'bool' | 'string'>;

const NAMES_BY_NUMBER = new Map<number, OnnxTypeName>(Object.entries(ONNX_DATA_TYPES).map(([name, id]) => [id, name as OnnxTypeName]));

/** The Driftline name of an ONNX data type number, or undefined for numbers ONNX does not define. */
export function onnxTypeName(dataType: number): OnnxTypeName | undefined {
  return NAMES_BY_NUMBER.get(dataType);
}
