import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { InferenceEngine } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { startLocalApi } from '../agent/local-api/server.js';
import { TelemetryRecorder } from '../agent/telemetry/recorder.js';
import { ManualClock, systemClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { demoModelBytes, modelFolder } from './fixtures/models.js';
import { waitFor } from './helpers/processes.js';

const logger = silentLogger();
const dir = mkdtempSync(join(tmpdir(), 'driftline-group-commit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('inference telemetry is group-committed off the request path', () => {
  it('group commit - 24 concurrent requests are answered before any commit, and one commit then holds all their records', async () => {
    // The test decides when the commit window closes.
    const windows: Array<() => void> = [];
    const buffer = SqliteBuffer.open({
      file: join(dir, 'buffer.db'),
      synchronous: 'FULL',
      commitDelayMs: 20,
      scheduleCommit: (commit) => {
        windows.push(commit);
        return () => undefined;
      },
    });
    const recorder = new TelemetryRecorder(buffer, systemClock, logger, () => undefined);
    const folder = await modelFolder();
    // Wired as the agent wires them: every answer is one inference record.
    const engine = InferenceEngine.create({
      runtime: createOnnxRuntime({ logger }),
      providers: ['cpu'],
      logger,
      observer: {
        onInference: (rec) =>
          recorder.inference({ model: rec.model, version: rec.version, provider: rec.provider, latencyMs: rec.latencyMs, batchSize: rec.batchSize }),
      },
    });
    await engine.load({ name: 'vibration', version: 1, ...(await folder.write('demo.onnx', demoModelBytes(1))) });
    const api = await startLocalApi({ engine, health: () => ({ ok: true, details: {} }), metrics: new Registry(), logger });
    try {
      const body = JSON.stringify({ inputs: [{ name: 'features', shape: [1, 8], datatype: 'FP32', data: [4.1, 12, 2.9, 3.2, 2.5, 0.9, 0.4, 41] }] });
      const statuses = await Promise.all(
        Array.from({ length: 24 }, () =>
          fetch(`${api.url}/v2/models/vibration/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).then((r) => r.status),
        ),
      );
      expect(statuses).toEqual(Array(24).fill(200));
      // Every request was answered while no commit had happened: none of them waited on one.
      await waitFor(
        () => buffer.commitStats(),
        (s) => s.waiting === 24,
        { what: 'the records handed to the buffer' },
      );
      expect(buffer.commitStats()).toEqual({ commits: 0, recordsCommitted: 0, waiting: 24 });
      expect(buffer.peek(100, 0)).toHaveLength(0);
      // One window for all of them, and one commit when it closes.
      expect(windows).toHaveLength(1);
      windows[0]!();
      expect(buffer.commitStats()).toEqual({ commits: 1, recordsCommitted: 24, waiting: 0 });
      expect(buffer.peek(100, 0)).toHaveLength(24);
      await waitFor(
        () => recorder.enqueued,
        (n) => n === 24,
        { what: 'the recorder counts them as durable' },
      );
    } finally {
      await api.close();
      await engine.shutdown();
      await buffer.close();
      await folder.remove();
    }
  });

  it('group commit - a record after a quiet spell commits at the end of its turn, in the idle time after its answer; records within commitDelay of the last commit wait out the rest of it', async () => {
    const clock = new ManualClock();
    const delays: number[] = [];
    const windows: Array<() => void> = [];
    const buffer = SqliteBuffer.open({
      file: join(dir, 'spacing.db'),
      synchronous: 'FULL',
      clock,
      commitDelayMs: 20,
      scheduleCommit: (commit, delayMs) => {
        delays.push(delayMs);
        windows.push(commit);
        return () => undefined;
      },
    });
    const closeWindows = () => {
      for (const commit of windows.splice(0)) commit();
    };
    const record = () => buffer.enqueue({ stream: 2, timeMs: clock.now(), body: new Uint8Array([1]) });
    try {
      // Nothing committed for a while: no wait (a few requests a second on a large model).
      let durable: Promise<unknown> = Promise.all([record(), record()]);
      expect(delays).toEqual([0]);
      closeWindows();
      await durable;
      // 5 ms after that commit: the records wait the 15 ms left, for company (a busy agent).
      clock.advance(5);
      durable = Promise.all([record(), record(), record()]);
      expect(delays).toEqual([0, 15]);
      closeWindows();
      await durable;
      // A full window after the last commit: no wait again.
      clock.advance(20);
      durable = record();
      expect(delays).toEqual([0, 15, 0]);
      closeWindows();
      await durable;
      expect(buffer.commitStats()).toEqual({ commits: 3, recordsCommitted: 6, waiting: 0 });
    } finally {
      await buffer.close();
    }
  });

  it('group commit - a sent mark closes the window at once, so a backlog drains a round trip per batch, not a window per batch; ack deletes wait in the window', async () => {
    const clock = new ManualClock();
    const delays: number[] = [];
    const windows: Array<() => void> = [];
    const buffer = SqliteBuffer.open({
      file: join(dir, 'mark-now.db'),
      synchronous: 'FULL',
      clock,
      commitDelayMs: 20,
      scheduleCommit: (commit, delayMs) => {
        delays.push(delayMs);
        windows.push(commit);
        return () => undefined;
      },
    });
    const closeWindows = () => {
      for (const commit of windows.splice(0)) commit();
    };
    try {
      const durable = Promise.all(Array.from({ length: 20 }, (_, i) => buffer.enqueue({ stream: 2, timeMs: clock.now(), body: new Uint8Array([i]) })));
      closeWindows();
      await durable;
      // The first batch was acknowledged just now: its deletes wait for the spaced window.
      buffer.markSent(buffer.peek(10, 0));
      closeWindows();
      expect(buffer.acknowledge([{ boot: buffer.boot, first: 1, last: 10 }])).toBe(10);
      expect(delays).toEqual([0, 0, 20]);
      // The next batch's mark does not wait out that window: it closes at the end of the turn, deletes and all.
      const marked = buffer.markSent(buffer.peek(10, 0));
      expect(delays).toEqual([0, 0, 20, 0]);
      windows.at(-1)!();
      await marked;
      expect(buffer.commitStats().commits).toBe(3);
    } finally {
      await buffer.close();
    }
  });

  it('group commit - close() commits what still waits for its window', async () => {
    const file = join(dir, 'close.db');
    const buffer = SqliteBuffer.open({ file, synchronous: 'FULL', commitDelayMs: 1_000, scheduleCommit: () => () => undefined });
    const durable = Promise.all(Array.from({ length: 5 }, (_, i) => buffer.enqueue({ stream: 2, timeMs: i, body: new Uint8Array([i]) })));
    await buffer.close();
    await durable;
    const reopened = SqliteBuffer.open({ file, synchronous: 'FULL' });
    expect(reopened.peek(10, 0)).toHaveLength(5);
    await reopened.close();
  });
});
