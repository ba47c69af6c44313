/**
 * NumPy's `.npy` format, version 1.0, for the arrays of a dataset snapshot: what Python reads
 * with `numpy.load` alone and Node reads here without a native addon. Only C-order,
 * little-endian arrays of the dtypes a snapshot holds. Spec:
 * https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
 */
import { DriftlineError } from '../errors.js';

export type NpyDtype = 'float32' | 'float64' | 'int64' | 'int32' | 'uint8';

export type NpyTypedArray = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array;

export interface NpyArray {
  dtype: NpyDtype;
  /** Row-major; the first dimension is the row count. */
  shape: readonly number[];
  data: NpyTypedArray;
}

const MAGIC = Uint8Array.of(0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59); // \x93NUMPY
const PREAMBLE_BYTES = 10; // magic, major, minor, uint16 header length
const HEADER_ALIGN = 64;
/** A header is a short Python dict literal; anything longer is not one of ours. */
const MAX_HEADER_BYTES = 4096;

const DESCR: Record<NpyDtype, string> = { float32: '<f4', float64: '<f8', int64: '<i8', int32: '<i4', uint8: '|u1' };
const ITEM_BYTES: Record<NpyDtype, number> = { float32: 4, float64: 8, int64: 8, int32: 4, uint8: 1 };
const BY_DESCR = new Map(Object.entries(DESCR).map(([dtype, descr]) => [descr, dtype as NpyDtype]));

export function dtypeOf(data: NpyTypedArray): NpyDtype {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Float64Array) return 'float64';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Int32Array) return 'int32';
  return 'uint8';
}

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((count, dim) => count * dim, 1);
}

/** The header (preamble, dict, padding) for an array; write it, then the data's bytes. */
export function npyHeader(dtype: NpyDtype, shape: readonly number[]): Buffer {
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0)
      throw new DriftlineError('REQUEST_INVALID', `npy shape ${JSON.stringify(shape)} has a dimension that is not a non-negative integer`);
  }
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  const dict = `{'descr': '${DESCR[dtype]}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  const unpadded = PREAMBLE_BYTES + dict.length + 1; // + the closing newline
  const padded = Math.ceil(unpadded / HEADER_ALIGN) * HEADER_ALIGN;
  const headerText = dict + ' '.repeat(padded - unpadded) + '\n';
  const header = Buffer.alloc(PREAMBLE_BYTES + headerText.length);
  header.set(MAGIC, 0);
  header[6] = 1;
  header[7] = 0;
  header.writeUInt16LE(headerText.length, 8);
  header.write(headerText, PREAMBLE_BYTES, 'latin1');
  return header;
}

/** One `.npy` file's bytes. The data is viewed, not copied, when it is already little-endian (always, on the hosts we run on). */
export function encodeNpy(array: NpyArray): Buffer {
  const expected = elementCount(array.shape);
  if (array.data.length !== expected) {
    throw new DriftlineError('REQUEST_INVALID', `npy data holds ${array.data.length} elements, shape ${JSON.stringify(array.shape)} needs ${expected}`);
  }
  const body = Buffer.from(array.data.buffer, array.data.byteOffset, array.data.byteLength);
  return Buffer.concat([npyHeader(array.dtype, array.shape), body]);
}

/**
 * Parses one `.npy` file. Every claim of the header is checked against the bytes that are
 * there before anything is allocated, so a crafted header cannot claim gigabytes.
 */
export function decodeNpy(bytes: Uint8Array, source = 'npy file'): NpyArray {
  const fail = (why: string): never => {
    throw new DriftlineError('DATASET_INVALID', `${source} is not a readable .npy array: ${why}`, { details: { source } });
  };
  if (bytes.length < PREAMBLE_BYTES || !MAGIC.every((b, i) => bytes[i] === b)) fail('it does not start with the \\x93NUMPY magic');
  const major = bytes[6]!;
  if (major !== 1 && major !== 2 && major !== 3) fail(`format version ${major} is not 1, 2 or 3`);
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lengthBytes = major === 1 ? 2 : 4;
  const headerLength = major === 1 ? view.readUInt16LE(8) : view.readUInt32LE(8);
  const headerStart = 8 + lengthBytes;
  if (headerLength > MAX_HEADER_BYTES || headerStart + headerLength > bytes.length) fail(`its header claims ${headerLength} bytes`);
  const header = view.toString('latin1', headerStart, headerStart + headerLength);
  const descr = /'descr'\s*:\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) fail('its header lacks descr, fortran_order or shape');
  const dtype = BY_DESCR.get(descr === '<u1' ? '|u1' : descr!);
  if (dtype === undefined) fail(`dtype ${descr} is not one of ${Object.values(DESCR).join(', ')}`);
  if (fortran === 'True') fail('it is in Fortran order; save it with numpy.ascontiguousarray');
  const shape = shapeText!
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part.length > 0)
    .map((part) => (/^\d+$/.test(part) ? Number(part) : fail(`shape dimension ${part} is not an integer`)));
  const dataStart = headerStart + headerLength;
  const itemBytes = ITEM_BYTES[dtype!];
  const expectedBytes = elementCount(shape) * itemBytes;
  if (!Number.isSafeInteger(expectedBytes) || bytes.length - dataStart !== expectedBytes) {
    fail(`shape ${JSON.stringify(shape)} of ${dtype} needs ${expectedBytes} data bytes, the file holds ${bytes.length - dataStart}`);
  }
  // Copy into an aligned buffer: the data offset is a multiple of 64 in files we write, but not in every file.
  const data = new Uint8Array(expectedBytes);
  data.set(bytes.subarray(dataStart));
  const count = expectedBytes / itemBytes;
  const typed: NpyTypedArray =
    dtype === 'float32'
      ? new Float32Array(data.buffer, 0, count)
      : dtype === 'float64'
        ? new Float64Array(data.buffer, 0, count)
        : dtype === 'int64'
          ? new BigInt64Array(data.buffer, 0, count)
          : dtype === 'int32'
            ? new Int32Array(data.buffer, 0, count)
            : data;
  return { dtype: dtype!, shape, data: typed };
}
