import type { IncomingMessage } from 'node:http';
import { DriftlineError } from '../errors.js';

/** How much of a request body a route reads, and what the 413 says about it. */
export interface BodyLimit {
  maxBytes: number;
  /** The configuration setting that changes the limit; PAYLOAD_TOO_LARGE names it. */
  setting: string;
  /** What the limit is, in the refusal's words ("the model's largest input"). */
  reason: string;
  /**
   * A byte offset into the body that should start on an 8-byte boundary of its buffer (where
   * the binary tensor extension's raw data begins, after the JSON header), so typed arrays can
   * be views on the body instead of copies. Only with a content-length.
   */
  alignOffset?: number;
}

/** Typed arrays of every element size (up to 8 bytes: BigInt64Array, Float64Array) start on this boundary. */
const ALIGNMENT = 8;

/** PAYLOAD_TOO_LARGE for a body over its limit; details name the limit and the setting. */
export function bodyTooLarge(limit: BodyLimit): DriftlineError {
  return new DriftlineError('PAYLOAD_TOO_LARGE', `request body exceeds ${limit.maxBytes} bytes (${limit.reason}; set ${limit.setting} to change it)`, {
    details: { limit_bytes: limit.maxBytes, setting: limit.setting },
  });
}

/**
 * Reads at most limit.maxBytes. Past that it rejects with PAYLOAD_TOO_LARGE straight away: the
 * rest of the body is discarded as it arrives, never buffered (the caller answers and closes the
 * connection). With a content-length (the usual case) the body goes into one buffer of that size,
 * each chunk copied once; without one (chunked), chunks are joined at the end.
 */
export function readBody(req: IncomingMessage, limit: BodyLimit): Promise<Buffer> {
  const maxBytes = limit.maxBytes;
  return new Promise<Buffer>((resolve, reject) => {
    const declared = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
    if (declared !== undefined && declared > maxBytes) {
      req.resume();
      reject(bodyTooLarge(limit));
      return;
    }
    // Node's parser has checked content-length is a number and never delivers more than it says.
    const whole = declared === undefined ? undefined : bodyBuffer(declared, limit.alignOffset);
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      if (size + chunk.length > maxBytes || (whole && size + chunk.length > whole.length)) {
        // Left flowing without a listener, the remainder is dropped rather than buffered.
        req.off('data', onData);
        chunks.length = 0;
        reject(bodyTooLarge(limit));
        return;
      }
      if (whole) chunk.copy(whole, size);
      else chunks.push(chunk);
      size += chunk.length;
    };
    req.on('data', onData);
    req.once('end', () => {
      if (!whole) resolve(Buffer.concat(chunks, size));
      else if (size === whole.length) resolve(whole);
      else reject(new DriftlineError('REQUEST_INVALID', `request body ended after ${size} of its ${whole.length} bytes`));
    });
    req.once('error', (err) => reject(new DriftlineError('REQUEST_INVALID', `request body could not be read: ${err.message}`, { cause: err })));
  });
}

/**
 * A buffer for a body of `size` bytes. With alignOffset: a buffer of its own (not a slice of
 * Node's pool) placed so that byte alignOffset of the body sits on an ALIGNMENT boundary.
 */
function bodyBuffer(size: number, alignOffset: number | undefined): Buffer {
  if (alignOffset === undefined || !Number.isSafeInteger(alignOffset) || alignOffset < 0 || alignOffset > size) return Buffer.allocUnsafe(size);
  const pad = (ALIGNMENT - (alignOffset % ALIGNMENT)) % ALIGNMENT;
  return Buffer.allocUnsafeSlow(size + pad).subarray(pad, pad + size);
}

/** A body as JSON; REQUEST_INVALID when it is not. */
export function parseJsonBody(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new DriftlineError('REQUEST_INVALID', `request body is not valid JSON: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
