import type { TensorData, TensorType } from './model-runtime.js';

/** Open Inference Protocol v2 datatype names and the onnxruntime element types they carry. */
export const DATATYPES = {
  BOOL: 'bool',
  UINT8: 'uint8',
  UINT16: 'uint16',
  UINT32: 'uint32',
  UINT64: 'uint64',
  INT8: 'int8',
  INT16: 'int16',
  INT32: 'int32',
  INT64: 'int64',
  FP16: 'float16',
  FP32: 'float32',
  FP64: 'float64',
  BYTES: 'string',
} as const satisfies Record<string, TensorType>;

export type Datatype = keyof typeof DATATYPES;

const BY_TENSOR_TYPE = new Map<string, Datatype>(Object.entries(DATATYPES).map(([datatype, type]) => [type, datatype as Datatype]));

export function isDatatype(value: string): value is Datatype {
  return Object.hasOwn(DATATYPES, value);
}

/** The protocol name for an onnxruntime element type, or undefined for one the protocol cannot carry (int4, ...). */
export function datatypeOf(type: string): Datatype | undefined {
  return BY_TENSOR_TYPE.get(type);
}

type Converter = (values: ArrayLike<unknown>) => TensorData | string;

const INTEGER_RANGES: Record<string, [number, number]> = {
  uint8: [0, 0xff],
  uint16: [0, 0xffff],
  uint32: [0, 0xffffffff],
  int8: [-0x80, 0x7f],
  int16: [-0x8000, 0x7fff],
  int32: [-0x80000000, 0x7fffffff],
};

function integers<T extends Uint8Array | Uint16Array | Uint32Array | Int8Array | Int16Array | Int32Array>(
  Ctor: { new (length: number): T },
  [min, max]: [number, number],
): Converter {
  return (values) => {
    const out = new Ctor(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) return `element ${i} (${describe(v)}) is not an integer in [${min}, ${max}]`;
      out[i] = v;
    }
    return out;
  };
}

function floats<T extends Float32Array | Float64Array>(Ctor: { new (length: number): T }): Converter {
  return (values) => {
    const out = new Ctor(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (typeof v !== 'number') return `element ${i} (${describe(v)}) is not a number`;
      out[i] = v;
    }
    return out;
  };
}

function bigIntegers<T extends BigInt64Array | BigUint64Array>(Ctor: { new (length: number): T }, signed: boolean): Converter {
  return (values) => {
    const out = new Ctor(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      // JSON cannot carry int64 exactly, so only integers a double holds exactly are accepted.
      const ok = typeof v === 'bigint' || (typeof v === 'number' && Number.isSafeInteger(v));
      if (!ok || (!signed && v < 0)) return `element ${i} (${describe(v)}) is not ${signed ? 'a safe integer' : 'a non-negative safe integer'}`;
      out[i] = BigInt(v);
    }
    return out;
  };
}

const CONVERTERS: Record<Datatype, Converter> = {
  BOOL: (values) => {
    const out = new Uint8Array(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (typeof v !== 'boolean') return `element ${i} (${describe(v)}) is not a boolean`;
      out[i] = v ? 1 : 0;
    }
    return out;
  },
  UINT8: integers(Uint8Array, INTEGER_RANGES.uint8),
  UINT16: integers(Uint16Array, INTEGER_RANGES.uint16),
  UINT32: integers(Uint32Array, INTEGER_RANGES.uint32),
  UINT64: bigIntegers(BigUint64Array, false),
  INT8: integers(Int8Array, INTEGER_RANGES.int8),
  INT16: integers(Int16Array, INTEGER_RANGES.int16),
  INT32: integers(Int32Array, INTEGER_RANGES.int32),
  INT64: bigIntegers(BigInt64Array, true),
  FP16: (values) => {
    const out = new Uint16Array(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (typeof v !== 'number') return `element ${i} (${describe(v)}) is not a number`;
      out[i] = toHalf(v);
    }
    return out;
  },
  FP32: floats(Float32Array),
  FP64: floats(Float64Array),
  BYTES: (values) => {
    const out: string[] = new Array(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (typeof v !== 'string') return `element ${i} (${describe(v)}) is not a string`;
      out[i] = v;
    }
    return out;
  },
};

const TYPED_ARRAYS: Partial<Record<Datatype, new (length: number) => TensorData>> = {
  UINT8: Uint8Array,
  UINT16: Uint16Array,
  UINT32: Uint32Array,
  UINT64: BigUint64Array,
  INT8: Int8Array,
  INT16: Int16Array,
  INT32: Int32Array,
  INT64: BigInt64Array,
  FP16: Uint16Array,
  FP32: Float32Array,
  FP64: Float64Array,
};

/**
 * Turns caller data into the tensor storage onnxruntime wants. A typed array of the right
 * kind passes through without a copy (in-process callers); anything else is checked element
 * by element. Returns a string describing the first bad element instead of throwing, so the
 * caller can name the input in its error.
 */
export function toTensorData(datatype: Datatype, values: ArrayLike<unknown>): TensorData | string {
  const typed = TYPED_ARRAYS[datatype];
  if (typed !== undefined && values instanceof typed) return values as TensorData;
  return CONVERTERS[datatype](values);
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 20 ? `${value.slice(0, 20)}…` : value);
  if (value === null || typeof value !== 'object') return String(value);
  return Array.isArray(value) ? 'an array' : 'an object';
}

/** Tensor storage as plain JSON values: int64 as numbers, float16 decoded, bool as booleans. */
export function toJsonValues(datatype: Datatype, data: TensorData): Array<number | boolean | string> {
  switch (datatype) {
    case 'BOOL':
      return Array.from(data as Uint8Array, (v) => v !== 0);
    case 'INT64':
    case 'UINT64':
      return Array.from(data as BigInt64Array, (v) => Number(v));
    case 'FP16':
      return Array.from(data as Uint16Array, fromHalf);
    case 'BYTES':
      return data as string[];
    default:
      return Array.from(data as Float32Array);
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE 754 binary16 bits for a number, rounding to nearest even; Node 20 has no Float16Array. */
export function toHalf(value: number): number {
  f32[0] = value;
  const bits = u32[0];
  const sign = (bits >>> 16) & 0x8000;
  const exponent = ((bits >>> 23) & 0xff) - 127 + 15;
  let mantissa = bits & 0x7fffff;
  if (((bits >>> 23) & 0xff) === 0xff) return sign | 0x7c00 | (mantissa === 0 ? 0 : 0x200);
  if (exponent >= 0x1f) return sign | 0x7c00;
  if (exponent <= 0) {
    if (exponent < -10) return sign;
    mantissa |= 0x800000;
    return sign | roundShift(mantissa, 14 - exponent);
  }
  // A rounding carry out of the mantissa correctly bumps the exponent.
  return sign | roundShift((exponent << 23) | mantissa, 13);
}

function roundShift(value: number, shift: number): number {
  const kept = value >>> shift;
  const rest = value & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return rest > half || (rest === half && (kept & 1) === 1) ? kept + 1 : kept;
}

export function fromHalf(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}
