import { BinaryWriter } from '@bufbuild/protobuf/wire';

/** A record as the agent's buffer keeps it: the TelemetryRecord encoding without boot and seq. */
export interface EncodedRecord {
  boot: number;
  seq: number;
  body: Uint8Array;
}

/** TelemetryBatch field tags (proto/driftline/v1/device_link.proto): field number << 3 | wire type. */
const RECORDS_TAG = (1 << 3) | 2;
const SENT_AT_TAG = (2 << 3) | 0;
const DEFLATED_TAG = (3 << 3) | 2;
/** TelemetryRecord field tags. */
const BOOT_TAG = (1 << 3) | 0;
const SEQ_TAG = (2 << 3) | 0;

/**
 * Builds a TelemetryBatch from stored record bodies without decoding them: protobuf
 * allows fields in any order, so appending `boot` (field 1) and `seq` (field 2) to a
 * stored TelemetryRecord encoding yields the complete record.
 */
export function encodeTelemetryBatch(records: readonly EncodedRecord[], sentAtMs: number): Uint8Array {
  const writer = new BinaryWriter();
  for (const record of records) {
    writer.uint32(RECORDS_TAG).fork().raw(record.body).uint32(BOOT_TAG).uint64(record.boot).uint32(SEQ_TAG).uint64(record.seq).join();
  }
  writer.uint32(SENT_AT_TAG).int64(sentAtMs);
  return writer.finish();
}

/** A TelemetryBatch that carries a deflated TelemetryBatch encoding instead of records. */
export function encodeDeflatedTelemetryBatch(deflated: Uint8Array, sentAtMs: number): Uint8Array {
  return new BinaryWriter().uint32(SENT_AT_TAG).int64(sentAtMs).uint32(DEFLATED_TAG).bytes(deflated).finish();
}
