import { DriftlineError } from '../../common/errors.js';

/**
 * JSON.parse for inference request bodies, read straight from the body's bytes. The value of
 * every `"data"` member that is an array of numbers (nested arrays are flattened row-major,
 * as the protocol allows) becomes one typed array: each number is parsed from the bytes into
 * it, with no string per number, no JavaScript array of the values, no flattening copy, and
 * no string of the whole body. Everything else (names, shapes, parameters) parses as
 * JSON.parse parses it, and every number gets the same double as JSON.parse gives it.
 *
 * When the tensor's `"datatype"` ("FP32") comes before its data, as clients write it, the data
 * is parsed into a Float32Array, the storage the engine hands onnxruntime as it is: each value
 * the float32 that JSON.parse's double rounds to (Float32Array.from(JSON.parse(...).data)),
 * and no conversion pass or second copy after it. Otherwise a Float64Array. A `"shape"` given
 * before the data sizes the array once (bounded by the bytes left, so a shape cannot make it
 * allocate more than the body could fill). A `"data"` array holding anything but numbers and
 * arrays (strings, booleans) is an ordinary array, for the engine to check against the
 * model's datatype.
 */
export function parseRequestJson(bytes: Uint8Array): unknown {
  const parser = new Parser(bytes);
  parser.skipSpace();
  const value = parser.value();
  parser.skipSpace();
  if (parser.pos !== bytes.length) parser.fail('unexpected data after the JSON value');
  return value;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const MINUS = 0x2d;
const PLUS = 0x2b;
const DOT = 0x2e;
const ZERO = 0x30;
const NINE = 0x39;
/** A head below this times ten plus a digit stays at most 2^53, an exact double (Clinger's fast path). */
const HEAD_LIMIT = 900719925474099;
const POWERS_OF_TEN = Float64Array.from({ length: 23 }, (_, i) => 10 ** i);
/** A head below this times 10^4 plus four digits stays below 2^53. */
const CHUNK_HEAD_LIMIT = 900719925473;
/** Digits past the exact head that decimalToDouble takes: head * 10^4 + tail < 2^67, well inside a double-double. */
const MAX_TAIL_DIGITS = 4;
const utf8 = new TextDecoder('utf-8', { fatal: true });

const isDigit = (c: number): boolean => c >= ZERO && c <= NINE;
const isSpace = (c: number): boolean => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

class Parser {
  pos = 0;
  private readonly view: DataView;
  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  fail(message: string): never {
    throw new DriftlineError('REQUEST_INVALID', `request body is not valid JSON: ${message} at byte ${this.pos}`);
  }

  skipSpace(): void {
    const b = this.bytes;
    while (this.pos < b.length && isSpace(b[this.pos]!)) this.pos++;
  }

  /** @param tensor for the value of a "data" member: its object so far (numeric arrays become one typed array) */
  value(tensor?: Record<string, unknown>): unknown {
    const c = this.bytes[this.pos];
    if (c === OPEN_OBJECT) return this.object();
    if (c === OPEN_ARRAY) return tensor ? (this.numbers(tensor.datatype === 'FP32', elementsOf(tensor.shape)) ?? this.array()) : this.array();
    if (c === QUOTE) return this.string();
    if (c === MINUS || (c !== undefined && isDigit(c))) return this.number();
    if (this.literal('true')) return true;
    if (this.literal('false')) return false;
    if (this.literal('null')) return null;
    return this.fail(c === undefined ? 'unexpected end' : `unexpected character ${JSON.stringify(String.fromCharCode(c))}`);
  }

  private literal(word: string): boolean {
    for (let i = 0; i < word.length; i++) if (this.bytes[this.pos + i] !== word.charCodeAt(i)) return false;
    this.pos += word.length;
    return true;
  }

  private object(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    this.pos++;
    this.skipSpace();
    if (this.bytes[this.pos] === CLOSE_OBJECT) {
      this.pos++;
      return out;
    }
    for (;;) {
      if (this.bytes[this.pos] !== QUOTE) this.fail('expected a member name');
      const key = this.string();
      this.skipSpace();
      if (this.bytes[this.pos] !== COLON) this.fail('expected ":"');
      this.pos++;
      this.skipSpace();
      const value = this.value(key === 'data' ? out : undefined);
      // As JSON.parse: a member named __proto__ is an own property, never the prototype.
      if (key === '__proto__') Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
      else out[key] = value;
      this.skipSpace();
      const c = this.bytes[this.pos];
      this.pos++;
      if (c === CLOSE_OBJECT) return out;
      if (c !== COMMA) this.fail('expected "," or "}"');
      this.skipSpace();
    }
  }

  private array(): unknown[] {
    const out: unknown[] = [];
    this.pos++;
    this.skipSpace();
    if (this.bytes[this.pos] === CLOSE_ARRAY) {
      this.pos++;
      return out;
    }
    for (;;) {
      out.push(this.value());
      this.skipSpace();
      const c = this.bytes[this.pos];
      this.pos++;
      if (c === CLOSE_ARRAY) return out;
      if (c !== COMMA) this.fail('expected "," or "]"');
      this.skipSpace();
    }
  }

  /**
   * An array of numbers and arrays of numbers, flattened into one Float32Array (float32) or
   * Float64Array, of `expected` elements when given, else grown as it fills; either way at
   * most what the bytes left can hold (a number takes at least two of them with its
   * separator). Undefined, and the position unchanged, when it holds anything else or no
   * number at all. One tight loop over the bytes with the position in a local: this is where
   * a large JSON body's time goes.
   */
  private numbers(float32: boolean, expected: number | undefined): Float32Array | Float64Array | undefined {
    const start = this.pos;
    const b = this.bytes;
    const length = b.length;
    let pos = start;
    const most = ((length - start) >> 1) + 1;
    const Storage = float32 ? Float32Array : Float64Array;
    let out: Float32Array | Float64Array = new Storage(Math.min(expected ?? 1024, most));
    let n = 0;
    let depth = 0;
    // What came last: an opening bracket, a comma, or a value (a number or a closed array).
    let last = AFTER_OPEN;
    for (;;) {
      if (pos >= length) {
        this.pos = pos;
        this.fail('unexpected end');
      }
      const c = b[pos]!;
      if (c === MINUS || (c >= ZERO && c <= NINE)) {
        if (last === AFTER_VALUE) this.at(pos, 'expected "," or "]"');
        if (n === out.length) {
          const grown = new Storage(Math.min(Math.max(out.length * 4, 1024), most));
          grown.set(out);
          out = grown;
        }
        out[n++] = scanNumber(b, this.view, pos, float32);
        if (scanError !== undefined) this.at(scanEnd, scanError);
        pos = scanEnd;
        last = AFTER_VALUE;
      } else if (c === COMMA) {
        if (last !== AFTER_VALUE) this.at(pos, 'expected a value');
        pos++;
        last = AFTER_COMMA;
      } else if (c === OPEN_ARRAY) {
        if (last === AFTER_VALUE) this.at(pos, 'expected "," or "]"');
        depth++;
        pos++;
        last = AFTER_OPEN;
      } else if (c === CLOSE_ARRAY) {
        if (last === AFTER_COMMA) this.at(pos, 'expected a value');
        depth--;
        pos++;
        last = AFTER_VALUE;
        if (depth === 0) break;
      } else if (isSpace(c)) {
        pos++;
      } else {
        return undefined;
      }
    }
    if (n === 0) return undefined;
    this.pos = pos;
    return n === out.length ? out : out.subarray(0, n);
  }

  private at(pos: number, message: string): never {
    this.pos = pos;
    return this.fail(message);
  }

  /** A JSON number, with JSON's grammar; the same double JSON.parse gives. */
  private number(): number {
    const value = scanNumber(this.bytes, this.view, this.pos, false);
    this.pos = scanEnd;
    if (scanError !== undefined) this.fail(scanError);
    return value;
  }

  private string(): string {
    const b = this.bytes;
    const start = ++this.pos;
    let plain = true;
    for (;;) {
      const c = b[this.pos];
      if (c === undefined) this.fail('unterminated string');
      if (c === QUOTE) break;
      if (c === BACKSLASH) {
        plain = false;
        this.pos += 2;
        continue;
      }
      if (c < 0x20) this.fail('control character in a string');
      if (c >= 0x80) plain = false;
      this.pos++;
    }
    const end = this.pos++;
    if (plain) return latin1(b, start, end);
    try {
      // Escapes and UTF-8: rare, and short (names); JSON.parse of the string alone decodes them.
      return JSON.parse(`"${utf8.decode(b.subarray(start, end))}"`) as string;
    } catch (err) {
      this.pos = start;
      return this.fail(`invalid string (${err instanceof Error ? err.message : String(err)})`);
    }
  }
}

const AFTER_OPEN = 0;
const AFTER_COMMA = 1;
const AFTER_VALUE = 2;

/** v's neighbours for the float32 shortcut in scanNumber: well outside its error, far inside a float32's spacing (2^-24). */
const FLOAT32_LOW = 1 - 2 ** -49;
const FLOAT32_HIGH = 1 + 2 ** -49;

/** The element count of a shape given before the data: a list of safe non-negative integers with a safe product; else undefined. */
function elementsOf(shape: unknown): number | undefined {
  if (!Array.isArray(shape)) return undefined;
  let n = 1;
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) return undefined;
    n *= d;
  }
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Where the last scanNumber stopped, and what was wrong when the text is not a JSON number. */
let scanEnd = 0;
let scanError: string | undefined;

/**
 * The JSON number at bytes[pos], with JSON's grammar, as the same double JSON.parse gives;
 * with `float32`, a double that rounds to the same float32 as that double does (all that a
 * Float32Array keeps). A function of locals rather than a parser method, for the speed of
 * numbers(); it reports its end and any error in scanEnd and scanError.
 */
function scanNumber(b: Uint8Array, view: DataView, pos: number, float32: boolean): number {
  const start = pos;
  const length = b.length;
  scanError = undefined;
  // Past the end a typed array reads undefined, and `| 0` makes that 0 (no digit): c stays a
  // small integer, which keeps these loops fast.
  let c = b[pos]! | 0;
  const negative = c === MINUS;
  if (negative) c = b[++pos]! | 0;
  if (c < ZERO || c > NINE) return scanFailed(pos, 'expected a digit');
  // The digits as head * 10^tailDigits + tail: head exact (at most 2^53), tail at most four
  // more digits (numbers printed as shortest round-trip doubles have up to 17), any more
  // only counted (the text goes to Number() then).
  let head = 0;
  let tail = 0;
  let tailDigits = 0;
  let extra = 0;
  let exponent = 0;
  if (c === ZERO) c = b[++pos]! | 0;
  else {
    while (head < CHUNK_HEAD_LIMIT && pos + 4 <= length) {
      const chunk = fourDigits(view.getUint32(pos, true));
      if (chunk < 0) break;
      head = head * 10_000 + chunk;
      pos += 4;
    }
    c = b[pos]! | 0;
    while (c >= ZERO && c <= NINE && head < HEAD_LIMIT) {
      head = head * 10 + (c - ZERO);
      c = b[++pos]! | 0;
    }
    while (c >= ZERO && c <= NINE) {
      if (tailDigits < MAX_TAIL_DIGITS) {
        tail = tail * 10 + (c - ZERO);
        tailDigits++;
      } else extra++;
      c = b[++pos]! | 0;
    }
  }
  if (c === DOT) {
    c = b[++pos]! | 0;
    if (c < ZERO || c > NINE) return scanFailed(pos, 'expected a digit after "."');
    const fraction = pos;
    if (tailDigits === 0) {
      while (head < CHUNK_HEAD_LIMIT && pos + 4 <= length) {
        const chunk = fourDigits(view.getUint32(pos, true));
        if (chunk < 0) break;
        head = head * 10_000 + chunk;
        pos += 4;
      }
      c = b[pos]! | 0;
      while (c >= ZERO && c <= NINE && head < HEAD_LIMIT) {
        head = head * 10 + (c - ZERO);
        c = b[++pos]! | 0;
      }
    }
    while (c >= ZERO && c <= NINE) {
      if (tailDigits < MAX_TAIL_DIGITS) {
        tail = tail * 10 + (c - ZERO);
        tailDigits++;
      } else extra++;
      c = b[++pos]! | 0;
    }
    exponent = fraction - pos;
  }
  if (c === 0x65 || c === 0x45) {
    c = b[++pos]! | 0;
    let sign = 1;
    if (c === PLUS || c === MINUS) {
      if (c === MINUS) sign = -1;
      c = b[++pos]! | 0;
    }
    if (c < ZERO || c > NINE) return scanFailed(pos, 'expected a digit in the exponent');
    let e = 0;
    while (c >= ZERO && c <= NINE) {
      if (e < 100_000) e = e * 10 + (c - ZERO);
      c = b[++pos]! | 0;
    }
    exponent += sign * e;
  }
  scanEnd = pos;
  if (extra === 0 && exponent >= -22 && exponent <= 22) {
    // Clinger's fast path when the digits fit a double exactly: one correctly rounded operation.
    if (tailDigits === 0) {
      const value = exponent >= 0 ? head * POWERS_OF_TEN[exponent]! : head / POWERS_OF_TEN[-exponent]!;
      return negative ? -value : value;
    }
    if (float32) {
      // Three roundings of plain double arithmetic leave v within 2^-51 of the exact value,
      // and JSON.parse's double is within 2^-53 of it: both lie between v's two neighbours at
      // 2^-49, so when those round to one float32 (rounding is monotonic) so does JSON.parse's
      // double, to that float32. Otherwise (v within about 2^-49 of a float32 halfway point,
      // a few numbers in 10^8) the exact double below decides.
      const m = head * POWERS_OF_TEN[tailDigits]! + tail;
      const v = exponent >= 0 ? m * POWERS_OF_TEN[exponent]! : m / POWERS_OF_TEN[-exponent]!;
      const low = Math.fround(v * FLOAT32_LOW);
      if (low === Math.fround(v * FLOAT32_HIGH)) return negative ? -low : low;
    }
    const value = decimalToDouble(head, tail, tailDigits, exponent);
    if (value === value) return negative ? -value : value;
  }
  // Past what decimalToDouble decides exactly (or too close to call): the engine's own parser.
  return Number(latin1(b, start, pos));
}

/**
 * Four ASCII digits read at once (little-endian: the first digit in the low byte) as their
 * value, or -1 when any of the four bytes is not a digit: a quarter of the loop turns.
 */
function fourDigits(word: number): number {
  if ((word & 0xf0f0f0f0) !== 0x30303030 || ((word + 0x06060606) & 0xf0f0f0f0) !== 0x30303030) return -1;
  const digits = word - 0x30303030;
  // Neighbouring digits into pairs (d0 * 10 + d1 in byte 0, d2 * 10 + d3 in byte 2), then the pairs.
  const pairs = (digits * 10 + (digits >>> 8)) & 0x00ff00ff;
  return (pairs & 0xff) * 100 + (pairs >>> 16);
}

function scanFailed(pos: number, message: string): number {
  scanEnd = pos;
  scanError = message;
  return NaN;
}

function latin1(bytes: Uint8Array, start: number, end: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start).toString('latin1');
}

/*
 * Correctly rounded decimal to double for mantissas a double cannot hold exactly (up to 20
 * digits) and exponents within [-22, 22], without strings: the mantissa is held exactly as an
 * unevaluated sum of two doubles, the power of ten (exact as a double up to 10^22) applied
 * with error-free products (Dekker), which leaves the nearest double plus a correction known
 * to within 2^-49 of its unit in the last place. That decides the rounding unless the exact
 * value lies within 2^-36 ulp of a halfway point between two doubles, or at a binade edge:
 * then NaN says so and the caller falls back to Number() on the text (rare: about one number in
 * 10^10 of random digits).
 */

/** Veltkamp's splitter for doubles: 2^27 + 1. */
const SPLITTER = 134217729;
const TIE_MARGIN = 2 ** -36;
const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer);
/** The second half of an error-free sum or product (the first is its rounded result). */
let lowPart = 0;

function twoProduct(a: number, b: number): number {
  const p = a * b;
  let t = SPLITTER * a;
  const ah = t - (t - a);
  const al = a - ah;
  t = SPLITTER * b;
  const bh = t - (t - b);
  const bl = b - bh;
  lowPart = ah * bh - p + ah * bl + al * bh + al * bl;
  return p;
}

function twoSum(a: number, b: number): number {
  const s = a + b;
  const bb = s - a;
  lowPart = a - (s - bb) + (b - bb);
  return s;
}

/** The unit in the last place of a normal double, by its biased exponent field: 2^(e - 1075). */
const ULP = Float64Array.from({ length: 0x7ff }, (_, e) => 2 ** (e - 1075));

/** (head * 10^tailDigits + tail) * 10^exponent, correctly rounded, or NaN when too close to call. */
function decimalToDouble(head: number, tail: number, tailDigits: number, exponent: number): number {
  const scaled = twoProduct(head, POWERS_OF_TEN[tailDigits]!);
  // Both parts are integers below 2^16 here, so their sum is exact.
  const mh = twoSum(scaled, lowPart + tail);
  const ml = lowPart;
  if (exponent === 0) return mh;
  let base: number;
  let correction: number;
  if (exponent > 0) {
    const p = POWERS_OF_TEN[exponent]!;
    base = twoProduct(mh, p);
    correction = lowPart + ml * p;
  } else {
    const p = POWERS_OF_TEN[-exponent]!;
    base = mh / p;
    const bp = twoProduct(base, p);
    // mh - bp is exact (Sterbenz): they are within a factor of two.
    correction = (mh - bp - lowPart + ml) / p;
  }
  const result = base + correction;
  f64[0] = base;
  const high = u32[1]!;
  const e = (high >>> 20) & 0x7ff;
  // Subnormal or infinite, or the spacing below a power of two (half as wide).
  if (e === 0 || e === 0x7ff || (correction < 0 && (high & 0xfffff) === 0 && u32[0] === 0)) return NaN;
  f64[0] = result;
  // A binade crossed.
  if (((u32[1]! >>> 20) & 0x7ff) !== e) return NaN;
  const units = Math.abs(correction) / ULP[e]!;
  const fraction = units - Math.floor(units);
  if (Math.abs(fraction - 0.5) < TIE_MARGIN) return NaN;
  return result;
}
