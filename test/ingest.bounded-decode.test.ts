import { deflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import { Stream, TelemetryBatch, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { inflateBounded, scanEntries, WireScanner, type EntryLimit } from '../control-plane/telemetry/bounded-decode.js';

const records = (n: number): Buffer =>
  Buffer.from(
    TelemetryBatch.encode(
      TelemetryBatch.fromPartial({
        sentAtMs: 1_700_000_000_000,
        records: Array.from({ length: n }, (_, i) =>
          TelemetryRecord.fromPartial({
            boot: 1,
            seq: i + 1,
            timeMs: 1_700_000_000_000 + i,
            stream: Stream.STREAM_EVENTS,
            body: { $case: 'event', value: { kind: 'k', message: 'm'.repeat(i * 37), attributes: { a: 'b' } } },
          }),
        ),
      }),
    ).finish(),
  );
const limit = (max: number): EntryLimit => ({ field: 1, max, what: 'records', setting: 'ingest.maxRecordsPerBatch' });
const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return err instanceof DriftlineError ? err.code : 'not a DriftlineError';
  }
  return undefined;
};
const codeOfAsync = (p: Promise<unknown>): Promise<string | undefined> =>
  p.then(
    () => undefined,
    (err: unknown) => (err instanceof DriftlineError ? err.code : 'not a DriftlineError'),
  );

describe('ingest - wire scan before decoding', () => {
  it('ingest - counts the records of a batch the same whether fed whole or a byte at a time', () => {
    const payload = records(40);
    expect(scanEntries(payload, limit(100))).toBe(40);
    const scanner = new WireScanner(limit(100));
    for (const byte of payload) scanner.push(Uint8Array.of(byte));
    scanner.end();
    expect(scanner.count).toBe(40);
  });

  it('ingest - refuses the first record past the limit with PAYLOAD_TOO_MANY_ENTRIES', () => {
    expect(codeOf(() => scanEntries(records(11), limit(10)))).toBe('PAYLOAD_TOO_MANY_ENTRIES');
    expect(codeOf(() => scanEntries(records(10), limit(10)))).toBeUndefined();
  });

  it('ingest - refuses a batch cut short, a varint longer than ten bytes and field number 0 as PAYLOAD_MALFORMED', () => {
    const payload = records(3);
    expect(codeOf(() => scanEntries(payload.subarray(0, payload.length - 5), limit(10)))).toBe('PAYLOAD_MALFORMED');
    expect(codeOf(() => scanEntries(Buffer.alloc(12, 0xff), limit(10)))).toBe('PAYLOAD_MALFORMED');
    expect(codeOf(() => scanEntries(Buffer.from([0x00, 0x01]), limit(10)))).toBe('PAYLOAD_MALFORMED');
  });

  it('ingest - inflates a deflated batch within its limits to the same bytes', async () => {
    const payload = records(200);
    const inflated = await inflateBounded(deflateSync(payload), { maxBytes: payload.length, setting: 's', entries: limit(200) });
    expect(inflated.equals(payload)).toBe(true);
  });

  it('ingest - stops inflating at the byte limit (PAYLOAD_TOO_LARGE) and at the record limit (PAYLOAD_TOO_MANY_ENTRIES), having inflated little of either', async () => {
    let inflated = 0;
    const onInflated = (n: number): void => {
      inflated += n;
    };
    const big = deflateSync(Buffer.alloc(32 * 1024 * 1024, Buffer.from([0x0a, 0x00])));
    expect(await codeOfAsync(inflateBounded(big, { maxBytes: 64 * 1024 * 1024, setting: 's', entries: limit(1000), onInflated }))).toBe(
      'PAYLOAD_TOO_MANY_ENTRIES',
    );
    expect(inflated).toBeLessThan(1024 * 1024);
    inflated = 0;
    expect(await codeOfAsync(inflateBounded(big, { maxBytes: 100_000, setting: 's', entries: limit(100_000_000), onInflated }))).toBe('PAYLOAD_TOO_LARGE');
    expect(inflated).toBeLessThan(1024 * 1024);
    expect(await codeOfAsync(inflateBounded(Buffer.from('not zlib'), { maxBytes: 100_000, setting: 's', entries: limit(10) }))).toBe('PAYLOAD_MALFORMED');
  });
});
