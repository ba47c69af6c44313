import { DriftlineError } from '../../common/errors.js';
import { isDatatype, type Datatype } from '../inference/datatypes.js';
import type { TensorData } from '../inference/model-runtime.js';

/**
 * The Open Inference Protocol's binary tensor data extension: a JSON header of the length
 * this header gives, then raw little-endian tensor bytes in input (or output) order. Large
 * inputs skip JSON number parsing entirely and arrive as typed arrays the engine takes
 * without a copy.
 */
export const BINARY_HEADER = 'inference-header-content-length';

const ELEMENT_BYTES: Partial<Record<Datatype, number>> = {
  BOOL: 1,
  UINT8: 1,
  INT8: 1,
  UINT16: 2,
  INT16: 2,
  FP16: 2,
  UINT32: 4,
  INT32: 4,
  FP32: 4,
  UINT64: 8,
  INT64: 8,
  FP64: 8,
};

const VIEWS: Partial<Record<Datatype, new (buffer: ArrayBufferLike, byteOffset: number, length: number) => Exclude<TensorData, string[]>>> = {
  UINT8: Uint8Array,
  INT8: Int8Array,
  UINT16: Uint16Array,
  INT16: Int16Array,
  FP16: Uint16Array,
  UINT32: Uint32Array,
  INT32: Int32Array,
  FP32: Float32Array,
  UINT64: BigUint64Array,
  INT64: BigInt64Array,
  FP64: Float64Array,
};

function invalid(input: string, message: string): never {
  throw new DriftlineError('INFERENCE_INPUT_INVALID', message, { details: { input } });
}

/** Raw bytes to the values of one input; hosts are little-endian (x86_64, arm64), as the protocol's bytes are. */
export function decodeBinaryTensor(input: string, datatype: string, bytes: Uint8Array): ArrayLike<unknown> {
  if (!isDatatype(datatype)) invalid(input, `input ${input} has datatype ${JSON.stringify(datatype)}, which the protocol does not define`);
  if (datatype === 'BYTES') return decodeStrings(input, bytes);
  const size = ELEMENT_BYTES[datatype]!;
  if (bytes.length % size !== 0) invalid(input, `input ${input} has ${bytes.length} binary bytes, not a whole number of ${size}-byte ${datatype} elements`);
  if (datatype === 'BOOL') return Array.from(bytes, (b) => b !== 0);
  // A view on the request's own body buffer when the bytes sit where a typed array can start;
  // a copy only when the JSON header's length leaves them unaligned.
  let owned = bytes;
  if (bytes.byteOffset % size !== 0) {
    owned = new Uint8Array(bytes.length);
    owned.set(bytes);
  }
  return new VIEWS[datatype]!(owned.buffer, owned.byteOffset, owned.length / size);
}

/** BYTES elements are each a 4-byte little-endian length and that many bytes. */
function decodeStrings(input: string, bytes: Uint8Array): string[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const decoder = new TextDecoder();
  const out: string[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    if (offset + 4 > bytes.length) invalid(input, `input ${input}: truncated BYTES length prefix at byte ${offset}`);
    const length = view.getUint32(offset, true);
    offset += 4;
    if (offset + length > bytes.length) invalid(input, `input ${input}: BYTES element of ${length} bytes runs past the end of its data`);
    out.push(decoder.decode(bytes.subarray(offset, offset + length)));
    offset += length;
  }
  return out;
}

/** Output storage as the protocol's bytes: bool and float16 are already stored as bytes and raw bits. */
export function encodeBinaryTensor(data: TensorData): Uint8Array {
  if (Array.isArray(data)) {
    const encoder = new TextEncoder();
    const encoded = data.map((s) => encoder.encode(s));
    const out = new Uint8Array(encoded.reduce((n, e) => n + 4 + e.length, 0));
    const view = new DataView(out.buffer);
    let offset = 0;
    for (const e of encoded) {
      view.setUint32(offset, e.length, true);
      out.set(e, offset + 4);
      offset += 4 + e.length;
    }
    return out;
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}
