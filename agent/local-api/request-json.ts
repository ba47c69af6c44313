import { DriftlineError } from '../../common/errors.js';

/**
 * JSON.parse for inference request bodies, read straight from the body's bytes. The value of
 * every `"data"` member that is an array of numbers (nested arrays are flattened row-major,
 * as the protocol allows) becomes one Float64Array: each number is parsed from the bytes into
 * it, with no string per number, no JavaScript array of the values, no flattening copy, and
 * no string of the whole body. Everything else (names, shapes, parameters) parses as
 * JSON.parse parses it, and every number gets the same double as JSON.parse gives it.
 * A `"data"` array holding anything but numbers and arrays (strings, booleans) is an
 * ordinary array, for the engine to check against the model's datatype.
 */
export function parseRequestJson(bytes: Uint8Array): unknown {
  const parser = new Parser(bytes);
  parser.skipSpace();
  const value = parser.value(false);
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
/** Integers up to 2^53 are exact doubles: a mantissa this small, scaled by an exact power of ten, rounds once (Clinger's fast path). */
const EXACT_MANTISSA = 2 ** 53;
const POWERS_OF_TEN = Array.from({ length: 23 }, (_, i) => 10 ** i);
const utf8 = new TextDecoder('utf-8', { fatal: true });

const isDigit = (c: number): boolean => c >= ZERO && c <= NINE;
const isSpace = (c: number): boolean => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

class Parser {
  pos = 0;
  constructor(private readonly bytes: Uint8Array) {}

  fail(message: string): never {
    throw new DriftlineError('REQUEST_INVALID', `request body is not valid JSON: ${message} at byte ${this.pos}`);
  }

  skipSpace(): void {
    const b = this.bytes;
    while (this.pos < b.length && isSpace(b[this.pos]!)) this.pos++;
  }

  /** @param tensorData the value of a "data" member: numeric arrays become one Float64Array */
  value(tensorData: boolean): unknown {
    const c = this.bytes[this.pos];
    if (c === OPEN_OBJECT) return this.object();
    if (c === OPEN_ARRAY) return tensorData ? (this.numbers() ?? this.array()) : this.array();
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
      const value = this.value(key === 'data');
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
      out.push(this.value(false));
      this.skipSpace();
      const c = this.bytes[this.pos];
      this.pos++;
      if (c === CLOSE_ARRAY) return out;
      if (c !== COMMA) this.fail('expected "," or "]"');
      this.skipSpace();
    }
  }

  /**
   * An array of numbers and arrays of numbers, flattened into one Float64Array (sized by the
   * bytes left: a number takes at least two of them with its separator). Undefined, and the
   * position unchanged, when it holds anything else or no number at all.
   */
  private numbers(): Float64Array | undefined {
    const start = this.pos;
    const b = this.bytes;
    let out = new Float64Array(Math.min(1024, (b.length - start) >> 1) + 1);
    let n = 0;
    let depth = 0;
    // What came last: an opening bracket, a comma, or a value (a number or a closed array).
    let last: 'open' | 'comma' | 'value' = 'open';
    for (;;) {
      const c = b[this.pos];
      if (c === undefined) this.fail('unexpected end');
      if (isSpace(c)) {
        this.pos++;
      } else if (c === OPEN_ARRAY) {
        if (last === 'value') this.fail('expected "," or "]"');
        depth++;
        this.pos++;
        last = 'open';
      } else if (c === CLOSE_ARRAY) {
        if (last === 'comma') this.fail('expected a value');
        depth--;
        this.pos++;
        last = 'value';
        if (depth === 0) break;
      } else if (c === COMMA) {
        if (last !== 'value') this.fail('expected a value');
        this.pos++;
        last = 'comma';
      } else if (c === MINUS || isDigit(c)) {
        if (last === 'value') this.fail('expected "," or "]"');
        if (n === out.length) {
          const grown = new Float64Array(Math.min(out.length * 4, ((b.length - start) >> 1) + 1));
          grown.set(out);
          out = grown;
        }
        out[n++] = this.number();
        last = 'value';
      } else {
        this.pos = start;
        return undefined;
      }
    }
    if (n === 0) {
      this.pos = start;
      return undefined;
    }
    return n === out.length ? out : out.subarray(0, n);
  }

  /** A JSON number, with JSON's grammar; the same double JSON.parse gives. */
  private number(): number {
    const b = this.bytes;
    const start = this.pos;
    let c = b[this.pos];
    const negative = c === MINUS;
    if (negative) c = b[++this.pos];
    if (c === undefined || !isDigit(c)) this.fail('expected a digit');
    let mantissa = 0;
    let exact = true;
    let exponent = 0;
    if (c === ZERO) c = b[++this.pos];
    else {
      while (c !== undefined && isDigit(c)) {
        const next = mantissa * 10 + (c - ZERO);
        if (next <= EXACT_MANTISSA) mantissa = next;
        else exact = false;
        c = b[++this.pos];
      }
    }
    if (c === DOT) {
      c = b[++this.pos];
      if (c === undefined || !isDigit(c)) this.fail('expected a digit after "."');
      while (c !== undefined && isDigit(c)) {
        const next = mantissa * 10 + (c - ZERO);
        if (next <= EXACT_MANTISSA) {
          mantissa = next;
          exponent--;
        } else exact = false;
        c = b[++this.pos];
      }
    }
    if (c === 0x65 || c === 0x45) {
      c = b[++this.pos];
      let sign = 1;
      if (c === PLUS || c === MINUS) {
        if (c === MINUS) sign = -1;
        c = b[++this.pos];
      }
      if (c === undefined || !isDigit(c)) this.fail('expected a digit in the exponent');
      let e = 0;
      while (c !== undefined && isDigit(c)) {
        if (e < 100_000) e = e * 10 + (c - ZERO);
        c = b[++this.pos];
      }
      exponent += sign * e;
    }
    if (exact && exponent >= -22 && exponent <= 22) {
      const value = exponent >= 0 ? mantissa * POWERS_OF_TEN[exponent]! : mantissa / POWERS_OF_TEN[-exponent]!;
      return negative ? -value : value;
    }
    // More digits than a double holds exactly, or a large exponent: the engine's own parser.
    return Number(latin1(b, start, this.pos));
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

function latin1(bytes: Uint8Array, start: number, end: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start).toString('latin1');
}
