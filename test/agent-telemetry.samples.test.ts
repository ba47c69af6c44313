import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SampleCapture } from '../agent/telemetry/sample-capture.js';
import { Stream, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import type { ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { inferOnce } from './helpers/agent-traffic.js';
import type { FleetApi } from './helpers/fleet-api.js';
import { waitFor } from './helpers/processes.js';
import { startEnrolledAgent, startTestControlPlane, type WiredAgent } from './helpers/wired-agent.js';

const row = [4.1, 12, 2.9, 3.2, 2.5, 0.9, 0.4, 41];
const features = (values: number[]) => [{ name: 'features', datatype: 'FP32', shape: [1, values.length], data: values }];

describe('sample capture policy', () => {
  it('keeps the sampled share of successes and, when asked, every failure; skips oversized samples', () => {
    const draws = [0.05, 0.5, 0.09, 0.95];
    const capture = new SampleCapture({ sampleRate: 0.1, errors: true, maxSampleBytes: 64 }, () => draws.shift()!);
    const outputs = [{ name: 'probabilities', datatype: 'FP32' as const, shape: [1, 2], data: new Float32Array([0.25, 0.75]) }];
    const kept = [0, 1, 2, 3].map(() => capture.consider(features(row), { model: 'm', version: 2, outputs }));
    expect(kept.map((s) => s?.reason)).toEqual(['sampled', undefined, 'sampled', undefined]);
    const sample = kept[0]!;
    expect(Array.from(new Float32Array(new Uint8Array(sample.inputs[0]!.data).buffer))).toEqual(Array.from(new Float32Array(row)));
    expect(sample.outputs[0]).toMatchObject({ name: 'probabilities', datatype: 'FP32', shape: [1, 2] });
    // A failure carries no outputs and its code; input that does not fit its datatype is kept as JSON text.
    const failed = capture.consider([{ name: 'features', datatype: 'FP32', shape: [1, 2], data: ['a', 'b'] }], {
      model: 'm',
      version: 2,
      errorCode: 'INFERENCE_INPUT_INVALID',
    });
    expect(failed).toMatchObject({ reason: 'error', errorCode: 'INFERENCE_INPUT_INVALID', outputs: [] });
    expect(failed!.inputs[0]).toMatchObject({ datatype: 'JSON' });
    expect(Buffer.from(failed!.inputs[0]!.data).toString()).toBe('["a","b"]');
    // 100 floats are 400 bytes, over the 64-byte cap.
    expect(
      new SampleCapture({ sampleRate: 1, errors: false, maxSampleBytes: 64 }).consider(features(new Array(100).fill(1)), { model: 'm', version: 2, outputs }),
    ).toBeUndefined();
    expect(new SampleCapture({ sampleRate: 0, errors: false, maxSampleBytes: 64 }).enabled).toBe(false);
  });
});

describe('sample capture on a wired agent', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let agent: WiredAgent;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-samples-'));
    ({ cp, api } = await startTestControlPlane(dir));
    agent = await startEnrolledAgent(cp, api, 'edge-capture', join(dir, 'agent'), { capture: { sampleRate: 1, errors: true } });
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration', ['edge-capture']);
    await waitFor(
      () => inferOnce(agent.localApiUrl, row).then((r) => r.status),
      (s) => s === 200,
      { what: 'model active on the agent' },
    );
  });

  afterAll(async () => {
    await agent?.shutdown();
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('captured inputs and outputs reach the control plane on the samples stream, failures with their code', async () => {
    const before = await inferOnce(agent.localApiUrl, row);
    expect(before.status).toBe(200);
    const bad = await inferOnce(agent.localApiUrl, [1, 2, 3]);
    expect(bad.status).toBe(400);
    const db = new Database(join(dir, 'cp', 'control-plane.db'), { readonly: true });
    try {
      const samples = await waitFor(
        () =>
          db.prepare(`SELECT stream, record FROM telemetry_records WHERE device_id = ? AND kind = 'sample' ORDER BY boot, seq`).all('edge-capture') as Array<{
            stream: number;
            record: Buffer;
          }>,
        (rows) =>
          rows.some(
            (r) =>
              TelemetryRecord.decode(r.record).body?.$case === 'sample' &&
              (TelemetryRecord.decode(r.record).body!.value as { reason: string }).reason === 'error',
          ),
        { what: 'a failed request captured and stored' },
      );
      expect(samples.every((s) => s.stream === Stream.STREAM_SAMPLES)).toBe(true);
      const decoded = samples.map((s) => TelemetryRecord.decode(s.record).body).map((b) => (b?.$case === 'sample' ? b.value : undefined));
      const ok = decoded.find((s) => s?.reason === 'sampled')!;
      expect(ok).toMatchObject({ model: 'vibration', version: 1, errorCode: '' });
      // The tensor bytes live in the sample store (its own budget), with the response's id; the raw row keeps the rest.
      expect(decoded.some((s) => s?.requestId === before.body.id)).toBe(true);
      const stored = db.prepare('SELECT input, request_id FROM samples WHERE device_id = ? AND request_id = ?').get('edge-capture', before.body.id) as {
        input: Buffer;
        request_id: string;
      };
      expect(stored.request_id).toBe(before.body.id);
      expect(Array.from(new Float32Array(new Uint8Array(stored.input).buffer))).toEqual(Array.from(new Float32Array(row)));
      expect(ok.outputs.length).toBeGreaterThan(0);
      const failed = decoded.find((s) => s?.reason === 'error')!;
      expect(failed).toMatchObject({ errorCode: 'INFERENCE_INPUT_INVALID', outputs: [] });
      expect(failed.inputs[0]!.shape).toEqual([1, 3]);
    } finally {
      db.close();
    }
  });

  it('wired agent - system metrics go up when the test advances the schedules clock, not before', async () => {
    const db = new Database(join(dir, 'cp', 'control-plane.db'), { readonly: true });
    const systemRecords = (): number =>
      (db.prepare(`SELECT count(*) AS n FROM telemetry_records WHERE device_id = ? AND kind = 'system'`).get('edge-capture') as { n: number }).n;
    try {
      // The test above waited for its records to be stored: the schedule had all that real time and did not run.
      expect(systemRecords()).toBe(0);
      // A minute of schedule time: every firmware profile samples the system at least once a minute.
      await agent.schedules.advanceAsync(60_000);
      await waitFor(systemRecords, (n) => n >= 1, { what: 'a system sample stored' });
    } finally {
      db.close();
    }
  });
});
