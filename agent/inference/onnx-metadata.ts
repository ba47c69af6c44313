import { open, type FileHandle } from 'node:fs/promises';

const METADATA_PROPS_FIELD = 14;
const ENTRY_KEY_FIELD = 1;
const ENTRY_VALUE_FIELD = 2;
const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;
/** A tag plus a length prefix never take more than this many bytes. */
const HEADER_BYTES = 20;

/**
 * Reads ModelProto.metadata_props, which onnxruntime-node does not expose. It walks only
 * the top-level fields and skips over the graph by its length prefix, so a model of
 * hundreds of megabytes costs a few small reads rather than a full parse.
 */
export async function readOnnxMetadata(path: string): Promise<Record<string, string>> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    const metadata: Record<string, string> = {};
    let offset = 0;
    while (offset < size) {
      const header = await readAt(file, offset, Math.min(HEADER_BYTES, size - offset));
      const tag = readVarint(header, 0);
      const field = Number(tag.value >> 3n);
      const wire = Number(tag.value & 7n);
      let next = tag.end;
      if (wire === WIRE_VARINT) next = readVarint(header, next).end;
      else if (wire === WIRE_I64) next += 8;
      else if (wire === WIRE_I32) next += 4;
      else if (wire === WIRE_LEN) {
        const length = readVarint(header, next);
        const start = offset + length.end;
        const bytes = Number(length.value);
        if (field === METADATA_PROPS_FIELD) {
          const [key, value] = decodeEntry(await readAt(file, start, bytes));
          metadata[key] = value;
        }
        offset = start + bytes;
        continue;
      } else throw new Error(`unsupported protobuf wire type ${wire} at byte ${offset}`);
      offset += next;
    }
    return metadata;
  } finally {
    await file.close();
  }
}

async function readAt(file: FileHandle, position: number, length: number): Promise<Uint8Array> {
  const buffer = Buffer.alloc(length);
  const { bytesRead } = await file.read(buffer, 0, length, position);
  if (bytesRead !== length) throw new Error(`truncated ONNX file at byte ${position}`);
  return buffer;
}

function decodeEntry(bytes: Uint8Array): [string, string] {
  const text = new TextDecoder();
  let key = '';
  let value = '';
  let pos = 0;
  while (pos < bytes.length) {
    const tag = readVarint(bytes, pos);
    const length = readVarint(bytes, tag.end);
    const end = length.end + Number(length.value);
    const field = Number(tag.value >> 3n);
    if (field === ENTRY_KEY_FIELD) key = text.decode(bytes.subarray(length.end, end));
    if (field === ENTRY_VALUE_FIELD) value = text.decode(bytes.subarray(length.end, end));
    pos = end;
  }
  return [key, value];
}

function readVarint(bytes: Uint8Array, start: number): { value: bigint; end: number } {
  let value = 0n;
  let shift = 0n;
  for (let pos = start; pos < bytes.length; pos++) {
    const byte = bytes[pos];
    value |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return { value, end: pos + 1 };
    shift += 7n;
  }
  throw new Error(`truncated protobuf varint at byte ${start}`);
}
