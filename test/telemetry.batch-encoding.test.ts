import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { TelemetryUploader } from '../agent/telemetry/uploader.js';
import type { Uplink, UplinkStatus } from '../agent/uplink/ports.js';
import { ManualClock } from '../common/clock.js';
import type { DownChannel, UpChannel } from '../common/device-protocol/topics.js';
import { silentLogger } from '../common/logger.js';
import { Outcome, Stream, TelemetryBatch, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { waitFor } from './helpers/processes.js';

/**
 * The uploader writes telemetry batches by hand (stored record bodies plus boot and seq,
 * never decoded on the device). These tests read what it sends with the generated
 * TelemetryBatch, the way the control plane does, and check every field of every record.
 */

/** An uplink that is always connected and keeps what it was given. */
class RecordingUplink implements Uplink {
  readonly sent: Array<{ channel: UpChannel; payload: Uint8Array }> = [];
  readonly connected = true;
  async start(): Promise<void> {}
  async publish(channel: UpChannel, payload: Uint8Array): Promise<void> {
    this.sent.push({ channel, payload: Uint8Array.from(payload) });
  }
  onMessage(_handler: (channel: DownChannel, payload: Buffer) => void): void {}
  onStatus(_handler: (status: UplinkStatus) => void): void {}
  async shutdown(): Promise<void> {}
}

const bySeq = (records: readonly TelemetryRecord[]): TelemetryRecord[] => [...records].sort((a, b) => a.seq - b.seq);

type Body = NonNullable<TelemetryRecord['body']>;

/** One record of every kind, every field set to something other than its default. */
const BODIES: Array<{ stream: Stream; body: Body }> = [
  {
    stream: Stream.STREAM_INFERENCE,
    body: {
      $case: 'inference',
      value: {
        model: 'm',
        version: 3,
        provider: 'cuda',
        latencyMs: 4.25,
        outcome: Outcome.OUTCOME_ERROR,
        topClass: 7,
        confidence: 0.5,
        errorCode: 'INFERENCE_FAILED',
        batchSize: 8,
      },
    },
  },
  {
    stream: Stream.STREAM_SYSTEM,
    body: {
      $case: 'system',
      value: {
        cpuPercent: 12.5,
        rssBytes: 1_000_000,
        memoryFreeBytes: 2_000_000,
        diskFreeBytes: 3_000_000,
        bufferDepth: 42,
        gpuPercent: 33.5,
        temperatureC: 61.25,
      },
    },
  },
  {
    stream: Stream.STREAM_EVENTS,
    body: { $case: 'event', value: { kind: 'model_activated', message: 'v3 is live', attributes: { model: 'm', version: '3' } } },
  },
  {
    stream: Stream.STREAM_INFERENCE,
    body: {
      $case: 'drift',
      value: {
        model: 'm',
        version: 3,
        windowStartMs: 1_700_000_000_000,
        windowEndMs: 1_700_000_060_000,
        rows: 100,
        errors: 2,
        requests: 102,
        features: [{ name: 'f2', counts: [1, 2, 3] }],
        classCounts: [10, 90],
        confidenceCounts: [5, 95],
        latencyDdsketch: Buffer.from([1, 2, 3]),
        referenceDigest: 'ab'.repeat(32),
      },
    },
  },
  {
    stream: Stream.STREAM_SAMPLES,
    body: {
      $case: 'sample',
      value: {
        model: 'm',
        version: 3,
        reason: 'low_confidence',
        requestId: 'req-1',
        inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 4], data: Buffer.from([0, 0, 128, 63]) }],
        outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [1, 2], data: Buffer.from([0, 0, 0, 63]) }],
        errorCode: 'SHAPE_MISMATCH',
      },
    },
  },
  {
    stream: Stream.STREAM_INFERENCE,
    body: { $case: 'label', value: { model: 'm', version: 3, requestId: 'req-1', predicted: 1, label: 0, correct: true, inferenceTimeMs: 1_700_000_000_500 } },
  },
];

describe('telemetry batches the uploader encodes by hand', () => {
  let dir: string;
  let buffer: SqliteBuffer;
  const clock = new ManualClock();

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-batch-encoding-'));
    buffer = SqliteBuffer.open({ file: join(dir, 'buffer.db'), synchronous: 'NORMAL', clock });
  });

  afterEach(async () => {
    await buffer.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Buffers every kind of record as the recorder does (boot and seq left to the buffer), then lets the uploader send one batch. */
  async function sendOneBatch(compressMinBytes: number): Promise<{ payload: Uint8Array; expected: TelemetryRecord[]; sentAtMs: number }> {
    const times = BODIES.map((_, i) => clock.now() - 1000 * (BODIES.length - i));
    await Promise.all(
      BODIES.map(({ stream, body }, i) =>
        buffer.enqueue({ stream, timeMs: times[i]!, body: TelemetryRecord.encode({ boot: 0, seq: 0, timeMs: times[i]!, stream, body }).finish() }),
      ),
    );
    const uplink = new RecordingUplink();
    const uploader = new TelemetryUploader({
      buffer,
      uplink,
      clock,
      logger: silentLogger(),
      maxBatchRecords: 100,
      maxInflightBatches: 1,
      batchDelayMs: 0,
      ackTimeoutMs: 60_000,
      compressMinBytes,
    });
    clock.advance(250);
    // Pumps at once when something is buffered; no timer involved.
    uploader.checkTimeouts();
    uploader.stop();
    // The batch goes once its sent mark is committed, with the buffer's next group commit.
    await waitFor(
      () => uplink.sent.length,
      (n) => n > 0,
      { what: 'the batch published' },
    );
    expect(uplink.sent.map((s) => s.channel)).toEqual(['telemetry']);
    const stored = buffer.peek(100, 0);
    const expected = stored.map((r) => ({ ...TelemetryRecord.decode(r.body), boot: r.boot, seq: r.seq }));
    return { payload: uplink.sent[0]!.payload, expected, sentAtMs: clock.now() };
  }

  it('decode with the generated TelemetryBatch to every record, field for field, with its boot, seq and the send time', async () => {
    const { payload, expected, sentAtMs } = await sendOneBatch(0);
    const batch = TelemetryBatch.decode(payload);
    expect(batch.sentAtMs).toBe(sentAtMs);
    expect(batch.deflated).toHaveLength(0);
    expect(batch.records).toHaveLength(BODIES.length);
    expect(bySeq(batch.records)).toEqual(expected);
    // Each record is exactly what was buffered; the batch holds them in priority order (events, inference, system, samples).
    const byKind = new Map(batch.records.map((r) => [r.body!.$case, r]));
    for (const { stream, body } of BODIES) {
      const record = byKind.get(body.$case)!;
      expect(record.stream).toBe(stream);
      expect(record.body).toEqual(body);
      expect(record.boot).toBe(buffer.boot);
      expect(record.seq).toBeGreaterThan(0);
    }
    expect(batch.records.map((r) => r.stream)).toEqual([...batch.records.map((r) => r.stream)].sort((a, b) => a - b));
    expect(new Set(batch.records.map((r) => r.seq)).size).toBe(BODIES.length);
  });

  it('when deflated, carry only the send time and a deflated batch that decodes to the same records', async () => {
    const { payload, expected, sentAtMs } = await sendOneBatch(1);
    const outer = TelemetryBatch.decode(payload);
    expect(outer.sentAtMs).toBe(sentAtMs);
    expect(outer.records).toEqual([]);
    expect(outer.deflated.length).toBeGreaterThan(0);
    const inner = TelemetryBatch.decode(inflateSync(outer.deflated));
    expect(inner.sentAtMs).toBe(sentAtMs);
    expect(inner.deflated).toHaveLength(0);
    expect(bySeq(inner.records)).toEqual(expected);
  });
});
