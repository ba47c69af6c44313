import { describe, expect, it } from 'vitest';
import { parseRequestJson } from '../agent/local-api/request-json.js';

/** xorshift32: the same numbers every run. */
function seeded(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

function parsedData(texts: readonly string[]): { got: Float64Array; want: number[] } {
  const body = Buffer.from(`{"data":[${texts.join(',')}]}`);
  return { got: (parseRequestJson(body) as { data: Float64Array }).data, want: (JSON.parse(body.toString()) as { data: number[] }).data };
}

function mismatches(texts: readonly string[]): string[] {
  const { got, want } = parsedData(texts);
  return texts.filter((_, i) => !Object.is(got[i], want[i]));
}

describe('request JSON numbers', () => {
  it('request json - float32 values printed as doubles (16 and 17 digits) parse to the doubles JSON.parse gives', () => {
    const random = seeded(7);
    const texts = Array.from({ length: 20_000 }, () => String(Math.fround((random() - 0.5) * 10 ** Math.floor(random() * 16 - 8))));
    expect(mismatches(texts)).toEqual([]);
  });

  it('request json - random doubles of every magnitude and long decimal strings with exponents parse as JSON.parse parses them', () => {
    const random = seeded(11);
    const digits = (n: number) => Array.from({ length: n }, (_, i) => String(i === 0 ? 1 + Math.floor(random() * 9) : Math.floor(random() * 10))).join('');
    const texts = Array.from({ length: 20_000 }, (_, i) => {
      if (i % 2 === 0) return String((random() - 0.5) * 10 ** Math.floor(random() * 60 - 30));
      const d = digits(15 + Math.floor(random() * 7));
      const point = Math.floor(random() * d.length);
      const text = `${d.slice(0, point) || '0'}.${d.slice(point)}${random() < 0.3 ? `e${Math.floor(random() * 30) - 15}` : ''}`;
      return random() < 0.5 ? `-${text}` : text;
    });
    expect(mismatches(texts)).toEqual([]);
  });

  it('request json - exact halfway points between doubles round to even as JSON.parse rounds them', () => {
    // 2^53 + 1 lies halfway between 2^53 and 2^53 + 2; the others are halfway cases and their neighbours.
    const texts = ['9007199254740993', '9007199254740993.0', '9007199254740995', '4503599627370497.5', '4503599627370496.5', '123456789012345678e-22', '1e22', '1.7976931348623157e308', '5e-324', '0.1', '-0', '0'];
    for (let k = 54n; k < 64n; k++) texts.push(String(2n ** k + 2n ** (k - 53n)), String(2n ** k + 2n ** (k - 53n) + 1n), String(2n ** k + 3n * 2n ** (k - 53n)));
    expect(mismatches(texts)).toEqual([]);
  });

  it('request json - malformed numbers in data are refused with REQUEST_INVALID', () => {
    for (const bad of ['{"data":[1.]}', '{"data":[1e]}', '{"data":[-]}', '{"data":[1,,2]}', '{"data":[1 2]}', '{"data":[1.5']) {
      expect(() => parseRequestJson(Buffer.from(bad)), bad).toThrow(expect.objectContaining({ code: 'REQUEST_INVALID' }));
    }
  });
});
