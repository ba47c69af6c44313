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
    const texts = [
      '9007199254740993',
      '9007199254740993.0',
      '9007199254740995',
      '4503599627370497.5',
      '4503599627370496.5',
      '123456789012345678e-22',
      '1e22',
      '1.7976931348623157e308',
      '5e-324',
      '0.1',
      '-0',
      '0',
    ];
    for (let k = 54n; k < 64n; k++)
      texts.push(String(2n ** k + 2n ** (k - 53n)), String(2n ** k + 2n ** (k - 53n) + 1n), String(2n ** k + 3n * 2n ** (k - 53n)));
    expect(mismatches(texts)).toEqual([]);
  });

  it("request json - FP32 data given after its datatype parses into a Float32Array of the shape's size, each value the float32 of JSON.parse's double", () => {
    const random = seeded(13);
    // Float32 values printed as doubles (what clients send), random doubles, long decimals, and
    // float32 halfway points (a float32 plus half its spacing, and its neighbours) that only an exact double decides.
    const texts: string[] = [];
    for (let i = 0; i < 30_000; i++) {
      const kind = i % 4;
      if (kind === 0) texts.push(String(Math.fround((random() - 0.5) * 10 ** Math.floor(random() * 12 - 6))));
      else if (kind === 1) texts.push(String((random() - 0.5) * 10 ** Math.floor(random() * 80 - 40)));
      else if (kind === 2)
        texts.push(
          `${Math.floor(random() * 1e6)}.${String(Math.floor(random() * 1e12)).padStart(12, '0')}${random() < 0.3 ? `e${Math.floor(random() * 40) - 20}` : ''}`,
        );
      else {
        const f = Math.fround(random() * 2 ** Math.floor(random() * 20 - 10));
        const half = (Math.fround(f * (1 + 2 ** -23)) - f) / 2;
        texts.push(String(f + half), String(f + half + half * 2 ** -28), String(f + half - half * 2 ** -28));
      }
    }
    const body = Buffer.from(`{"inputs":[{"name":"x","datatype":"FP32","shape":[1,${texts.length}],"data":[${texts.join(',')}]}]}`);
    const got = (parseRequestJson(body) as { inputs: Array<{ data: unknown }> }).inputs[0]!.data;
    const want = Float32Array.from((JSON.parse(body.toString()) as { inputs: Array<{ data: number[] }> }).inputs[0]!.data);
    expect(got).toBeInstanceOf(Float32Array);
    const data = got as Float32Array;
    expect(data.length).toBe(texts.length);
    expect(texts.filter((_, i) => !Object.is(data[i], want[i]))).toEqual([]);
  });

  it('request json - data before its datatype, or of another datatype, stays Float64Array; a shape that disagrees with the data sizes nothing wrong', () => {
    const parse = (json: string) => (parseRequestJson(Buffer.from(json)) as { data: unknown }).data;
    expect(parse('{"data":[0.1,2],"datatype":"FP32"}')).toEqual(Float64Array.from([0.1, 2]));
    expect(parse('{"datatype":"FP64","data":[0.1,2]}')).toEqual(Float64Array.from([0.1, 2]));
    expect(parse('{"datatype":"INT64","shape":[2],"data":[9007199254740991,2]}')).toEqual(Float64Array.from([9007199254740991, 2]));
    // More values than the shape says, fewer, nested, and a shape far larger than the body could fill.
    expect(parse('{"datatype":"FP32","shape":[2],"data":[1,2,3,4]}')).toEqual(Float32Array.from([1, 2, 3, 4]));
    expect(parse('{"datatype":"FP32","shape":[8],"data":[1,2]}')).toEqual(Float32Array.from([1, 2]));
    expect(parse('{"datatype":"FP32","shape":[2,2],"data":[[1,2],[3.5,4]]}')).toEqual(Float32Array.from([1, 2, 3.5, 4]));
    expect(parse('{"datatype":"FP32","shape":[100000000000],"data":[0.5]}')).toEqual(Float32Array.from([0.5]));
    expect(parse('{"datatype":"FP32","shape":[-1, "x"],"data":[0.5, 1e39]}')).toEqual(Float32Array.from([0.5, Infinity]));
  });

  it('request json - malformed numbers in data are refused with REQUEST_INVALID', () => {
    for (const bad of ['{"data":[1.]}', '{"data":[1e]}', '{"data":[-]}', '{"data":[1,,2]}', '{"data":[1 2]}', '{"data":[1.5']) {
      expect(() => parseRequestJson(Buffer.from(bad)), bad).toThrow(expect.objectContaining({ code: 'REQUEST_INVALID' }));
    }
  });
});
