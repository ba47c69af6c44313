/**
 * The split hash of a sample id, sha256("driftline-split/1:" + id) read as a fraction, computed
 * here in plain JavaScript: a snapshot hashes every row's id, and node:crypto's per-call cost
 * (a hash object or a one-shot call, the string handed to C++, a Buffer for the digest) is
 * several times the hash itself for ids this short. One SHA-256 (FIPS 180-4) over the UTF-8
 * bytes, with its message and schedule buffers reused; only the digest's first 8 bytes are read.
 * test/datasets.split-hash.test.ts checks it against node:crypto.
 */

const PREFIX = 'driftline-split/1:';

// prettier-ignore
const K = Int32Array.of(
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
);

const W = new Int32Array(64);
const encoder = new TextEncoder();
/** The message being hashed: the prefix stays in place, the id and the padding follow it. */
let message = new Uint8Array(256);
encoder.encodeInto(PREFIX, message);

/** The prefix's first five message words (its 18 bytes, the fifth word's last two bytes left for the id). */
const PREFIX_WORDS = (() => {
  const bytes = new Uint8Array(20);
  encoder.encodeInto(PREFIX, bytes);
  const view = new DataView(bytes.buffer);
  return Int32Array.from({ length: 5 }, (_, i) => view.getInt32(i * 4));
})();
/** ASCII ids this long or shorter fit one block with the prefix, the 0x80 byte and the length. */
const ONE_BLOCK_ID_CHARS = 55 - PREFIX.length;

/** The fraction of 2^64 that the first 8 bytes of sha256("driftline-split/1:" + sampleId) are, to 53 bits. */
export function splitFraction(sampleId: string): number {
  const n = sampleId.length;
  if (n > ONE_BLOCK_ID_CHARS) return splitFractionOfBytes(sampleId);
  // The common case, a short ASCII id: packed straight into the one block's words.
  W.set(PREFIX_WORDS, 0);
  W.fill(0, 5, 16);
  let at = PREFIX.length;
  for (let i = 0; i < n; i++, at++) {
    const c = sampleId.charCodeAt(i);
    if (c >= 0x80) return splitFractionOfBytes(sampleId);
    W[at >>> 2]! |= c << ((3 - (at & 3)) << 3);
  }
  W[at >>> 2]! |= 0x80 << ((3 - (at & 3)) << 3);
  W[15] = at * 8;
  return compress(1, false);
}

/** splitFraction of any id: its UTF-8 bytes in the message buffer, as many blocks as they take. */
function splitFractionOfBytes(sampleId: string): number {
  const start = PREFIX.length;
  // UTF-8 takes at most 3 bytes per UTF-16 unit; 72: the 0x80 byte, the 64-bit length and a block of slack.
  if (start + sampleId.length * 3 + 72 > message.length) {
    const grown = new Uint8Array(2 * (start + sampleId.length * 3 + 72));
    grown.set(message.subarray(0, start));
    message = grown;
  }
  let length = start;
  for (let i = 0; i < sampleId.length; i++) {
    const c = sampleId.charCodeAt(i);
    if (c >= 0x80) {
      // Not ASCII: the encoder's UTF-8 (a lone surrogate as U+FFFD, as node:crypto encodes it).
      length = start + encoder.encodeInto(sampleId, message.subarray(start)).written;
      break;
    }
    message[length++] = c;
  }
  const bits = length * 8;
  const padded = (((length + 8) >>> 6) + 1) << 6;
  message[length] = 0x80;
  message.fill(0, length + 1, padded - 8);
  const high = Math.floor(bits / 2 ** 32);
  message[padded - 8] = high >>> 24;
  message[padded - 7] = high >>> 16;
  message[padded - 6] = high >>> 8;
  message[padded - 5] = high;
  message[padded - 4] = bits >>> 24;
  message[padded - 3] = bits >>> 16;
  message[padded - 2] = bits >>> 8;
  message[padded - 1] = bits;

  return compress(padded >>> 6, true);
}

/** SHA-256 over `blocks` blocks, read from the message buffer, or the one block already in W[0..15]. Returns the split fraction of the digest. */
function compress(blocks: number, fromMessage: boolean): number {
  let h0 = 0x6a09e667 | 0;
  let h1 = 0xbb67ae85 | 0;
  let h2 = 0x3c6ef372 | 0;
  let h3 = 0xa54ff53a | 0;
  let h4 = 0x510e527f | 0;
  let h5 = 0x9b05688c | 0;
  let h6 = 0x1f83d9ab | 0;
  let h7 = 0x5be0cd19 | 0;
  const m = message;
  for (let block = 0; block < blocks * 64; block += 64) {
    if (fromMessage) {
      for (let t = 0; t < 16; t++) {
        const at = block + t * 4;
        W[t] = (m[at]! << 24) | (m[at + 1]! << 16) | (m[at + 2]! << 8) | m[at + 3]!;
      }
    }
    for (let t = 16; t < 64; t++) {
      const w15 = W[t - 15]!;
      const w2 = W[t - 2]!;
      const s0 = ((w15 >>> 7) | (w15 << 25)) ^ ((w15 >>> 18) | (w15 << 14)) ^ (w15 >>> 3);
      const s1 = ((w2 >>> 17) | (w2 << 15)) ^ ((w2 >>> 19) | (w2 << 13)) ^ (w2 >>> 10);
      W[t] = (W[t - 16]! + s0 + W[t - 7]! + s1) | 0;
    }
    let a = h0;
    let b = h1;
    let c = h2;
    let d = h3;
    let e = h4;
    let f = h5;
    let g = h6;
    let h = h7;
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (h + S1 + ch + K[t]! + W[t]!) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      h = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
    h5 = (h5 + f) | 0;
    h6 = (h6 + g) | 0;
    h7 = (h7 + h) | 0;
  }
  // The first 64 bits shifted right by 11, over 2^53: exact in a double.
  return ((h0 >>> 0) * 2 ** 21 + (h1 >>> 11)) / 2 ** 53;
}
