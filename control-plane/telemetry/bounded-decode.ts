import { createInflate } from 'node:zlib';
import { DriftlineError } from '../../common/errors.js';

/**
 * Bounds the work a device's payload can cause before any of it is decoded: a scan of the
 * protobuf wire format counts the entries of one repeated field without materializing
 * them, and inflation streams through that scan and stops at the byte limit or at the first
 * entry past the count limit, whichever comes first. Decoding then only ever sees input
 * whose size and entry count are known to be within limits.
 */

export interface EntryLimit {
  /** Top-level field number of the repeated field, e.g. 1 for TelemetryBatch.records. */
  field: number;
  max: number;
  /** Names the field and its limit in the refusal, e.g. 'records' and 'ingest.maxRecordsPerBatch'. */
  what: string;
  setting: string;
}

type ScanState = 'tag' | 'varint' | 'length' | 'skip';

/**
 * An incremental scan of one protobuf message's top-level fields: feed it bytes in chunks
 * of any size. It reads tags, varints and length prefixes, skips field contents and counts
 * the occurrences of one field. Wire types the decoders here never produce (groups,
 * reserved types) and field number 0 are malformed.
 */
export class WireScanner {
  /** Entries of the counted field seen so far. */
  count = 0;
  private state: ScanState = 'tag';
  private value = 0;
  private shift = 0;
  private remaining = 0;

  constructor(private readonly limit: EntryLimit) {}

  push(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.state === 'skip') {
        const n = Math.min(this.remaining, chunk.length - i);
        i += n;
        this.remaining -= n;
        if (this.remaining === 0) this.state = 'tag';
        continue;
      }
      const byte = chunk[i++]!;
      if (this.shift >= 70) throw malformed('a varint longer than 10 bytes');
      this.value += (byte & 0x7f) * 2 ** this.shift;
      this.shift += 7;
      if (byte & 0x80) continue;
      const value = this.value;
      this.value = 0;
      this.shift = 0;
      this.onVarint(value);
    }
  }

  /** The input ended: it must end on a field boundary. */
  end(): void {
    if (this.state !== 'tag' || this.shift > 0) throw malformed('the message is cut short');
  }

  private onVarint(value: number): void {
    if (this.state === 'varint') {
      this.state = 'tag';
    } else if (this.state === 'length') {
      this.remaining = value;
      this.state = value === 0 ? 'tag' : 'skip';
    } else {
      const field = Math.floor(value / 8);
      const wireType = value % 8;
      if (field === 0) throw malformed('field number 0');
      if (wireType === 0) this.state = 'varint';
      else if (wireType === 2) this.state = 'length';
      else if (wireType === 1 || wireType === 5) {
        this.remaining = wireType === 1 ? 8 : 4;
        this.state = 'skip';
      } else throw malformed(`wire type ${wireType}`);
      if (field === this.limit.field && ++this.count > this.limit.max) {
        throw new DriftlineError('PAYLOAD_TOO_MANY_ENTRIES', `more than ${this.limit.max} ${this.limit.what} (${this.limit.setting})`, {
          details: { field: this.limit.what, limit: this.limit.max, setting: this.limit.setting },
        });
      }
    }
  }
}

const malformed = (what: string): DriftlineError => new DriftlineError('PAYLOAD_MALFORMED', `not valid protobuf: ${what}`);

/** Checks a whole payload: throws PAYLOAD_TOO_MANY_ENTRIES or PAYLOAD_MALFORMED; returns the entry count. */
export function scanEntries(payload: Uint8Array, limit: EntryLimit): number {
  const scanner = new WireScanner(limit);
  scanner.push(payload);
  scanner.end();
  return scanner.count;
}

export interface BoundedInflateOptions {
  maxBytes: number;
  /** Setting named in the PAYLOAD_TOO_LARGE refusal. */
  setting: string;
  entries: EntryLimit;
  /** Told of every inflated chunk's size, refused or not (a metric of work done). */
  onInflated?: (bytes: number) => void;
}

/** Inflated bytes per zlib output chunk: the most inflated ahead of the scan. */
const INFLATE_CHUNK_BYTES = 16 * 1024;

/**
 * Inflates zlib data on the thread pool, scanning as it goes: stops (and frees what it
 * inflated) at the byte limit or at the first entry past the entry limit. Never holds more
 * than maxBytes of output plus one chunk.
 */
export async function inflateBounded(deflated: Uint8Array, options: BoundedInflateOptions): Promise<Buffer> {
  const inflater = createInflate({ chunkSize: INFLATE_CHUNK_BYTES });
  const scanner = new WireScanner(options.entries);
  const chunks: Buffer[] = [];
  let total = 0;
  inflater.end(deflated);
  try {
    for await (const chunk of inflater as AsyncIterable<Buffer>) {
      total += chunk.length;
      options.onInflated?.(chunk.length);
      if (total > options.maxBytes) {
        throw new DriftlineError('PAYLOAD_TOO_LARGE', `deflated batch inflates beyond ${options.maxBytes} bytes (${options.setting})`, {
          details: { limit: options.maxBytes, setting: options.setting },
        });
      }
      scanner.push(chunk);
      chunks.push(chunk);
    }
  } catch (err) {
    if (err instanceof DriftlineError) throw err;
    throw new DriftlineError('PAYLOAD_MALFORMED', 'deflated batch is not valid zlib', { cause: err });
  } finally {
    inflater.destroy();
  }
  scanner.end();
  return Buffer.concat(chunks, total);
}
