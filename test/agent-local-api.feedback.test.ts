import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentHandle } from '../agent/agent.js';
import { Stream, TelemetryRecord, type LabelRecord } from '../common/proto/driftline/v1/device_link.js';
import type { ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { inferOnce } from './helpers/agent-traffic.js';
import type { FleetApi } from './helpers/fleet-api.js';
import { waitFor } from './helpers/processes.js';
import { startEnrolledAgent, startTestControlPlane } from './helpers/wired-agent.js';

const DEVICE = 'edge-feedback';
const row = [4.1, 12, 2.9, 3.2, 2.5, 0.9, 0.4, 41];

describe('local API feedback on a wired agent', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let agent: AgentHandle;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-feedback-'));
    ({ cp, api } = await startTestControlPlane(dir));
    agent = await startEnrolledAgent(cp, api, DEVICE, join(dir, 'agent'), { localApi: { feedbackMemory: 3 } });
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration', [DEVICE]);
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

  const post = async (path: string, body: unknown): Promise<{ status: number; body: any }> => {
    const response = await fetch(`${agent.localApiUrl}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  };
  const feedback = (body: unknown, path = '/v2/models/vibration/feedback') => post(path, body);
  /** One answered request: its response id, its top class, and how many classes the model has. */
  const answer = async (id?: string): Promise<{ id: string; predicted: number; classes: number }> => {
    const r = await post('/v2/models/vibration/infer', {
      ...(id ? { id } : {}),
      inputs: [{ name: 'features', shape: [1, row.length], datatype: 'FP32', data: row }],
    });
    expect(r.status).toBe(200);
    const probabilities = (r.body.outputs as Array<{ name: string; data: number[] }>).find((o) => o.name === 'probabilities')!.data;
    return { id: r.body.id, predicted: probabilities.indexOf(Math.max(...probabilities)), classes: probabilities.length };
  };

  it('feedback - labels answered requests by response id; each label reaches the control plane with whether the model was right', async () => {
    const right = await answer();
    expect(right.id).toMatch(/^[0-9a-f-]{36}$/);
    const wrong = await answer('app-request-7');
    expect(wrong.id).toBe('app-request-7');
    const wrongLabel = (wrong.predicted + 1) % wrong.classes;

    const accepted = await feedback({ id: right.id, label: right.predicted });
    expect(accepted.status).toBe(202);
    expect(accepted.body).toMatchObject({ accepted: 1, items: [{ id: right.id, model_version: '1', correct: true }] });
    expect((await feedback({ id: wrong.id, label: wrongLabel }, '/v2/models/vibration/versions/1/feedback')).status).toBe(202);
    // A second label for the same answer would count it twice.
    expect((await feedback({ id: right.id, label: right.predicted })).body.code).toBe('FEEDBACK_DUPLICATE');

    const db = new Database(join(dir, 'cp', 'control-plane.db'), { readonly: true });
    try {
      const rows = await waitFor(
        () =>
          db
            .prepare(`SELECT stream, model, model_version, ok, record FROM telemetry_records WHERE device_id = ? AND kind = 'label' ORDER BY seq`)
            .all(DEVICE) as Array<{ stream: number; model: string; model_version: number; ok: number; record: Buffer }>,
        (r) => r.length === 2,
        { what: 'two label records stored' },
      );
      expect(rows.map((r) => [r.stream, r.model, r.model_version, r.ok])).toEqual([
        [Stream.STREAM_INFERENCE, 'vibration', 1, 1],
        [Stream.STREAM_INFERENCE, 'vibration', 1, 0],
      ]);
      const labels = rows.map((r) => TelemetryRecord.decode(r.record).body).map((b) => (b?.$case === 'label' ? b.value : undefined)) as LabelRecord[];
      expect(labels[0]).toMatchObject({
        model: 'vibration',
        version: 1,
        requestId: right.id,
        predicted: right.predicted,
        label: right.predicted,
        correct: true,
      });
      expect(labels[1]).toMatchObject({ requestId: 'app-request-7', predicted: wrong.predicted, label: wrongLabel, correct: false });
      expect(labels[1]!.inferenceTimeMs).toBeGreaterThan(0);
    } finally {
      db.close();
    }
  });

  it("feedback - refuses unknown and forgotten ids, bad bodies and labels outside the model's classes, recording nothing", async () => {
    const a = await answer();
    const code = async (body: unknown, path?: string) => {
      const r = await feedback(body, path);
      return [r.status, r.body.code];
    };
    expect(await code({ id: 'never-answered', label: 0 })).toEqual([404, 'FEEDBACK_UNKNOWN_ID']);
    expect(await code({ id: a.id, label: 0 }, '/v2/models/other/feedback')).toEqual([404, 'FEEDBACK_UNKNOWN_ID']);
    expect(await code({ id: a.id, label: 0 }, '/v2/models/vibration/versions/2/feedback')).toEqual([404, 'FEEDBACK_UNKNOWN_ID']);
    for (const body of [
      '{not json',
      { label: 0 },
      { id: a.id },
      { id: a.id, label: 1.5 },
      { id: a.id, label: -1 },
      { id: a.id, label: '1' },
      { items: [] },
      [1],
    ]) {
      expect(await code(body), JSON.stringify(body)).toEqual([400, 'REQUEST_INVALID']);
    }
    const missingLabel = await feedback({ id: a.id });
    expect(missingLabel.body.error).toContain('label');
    expect(await code({ id: a.id, label: a.classes })).toEqual([400, 'REQUEST_INVALID']);
    // One bad item refuses the whole batch, so a is still unlabelled afterwards.
    expect(
      await code({
        items: [
          { id: a.id, label: 0 },
          { id: 'never-answered', label: 0 },
        ],
      }),
    ).toEqual([404, 'FEEDBACK_UNKNOWN_ID']);
    // The agent remembers the last 3 answers (feedbackMemory): three more push a out.
    const later = [await answer(), await answer(), await answer()];
    expect(await code({ id: a.id, label: 0 })).toEqual([404, 'FEEDBACK_UNKNOWN_ID']);
    const batch = await feedback({ items: later.map((l) => ({ id: l.id, label: l.predicted })) });
    expect(batch.status).toBe(202);
    expect(batch.body.accepted).toBe(3);

    const db = new Database(join(dir, 'cp', 'control-plane.db'), { readonly: true });
    try {
      const ids = await waitFor(
        () =>
          (db.prepare(`SELECT record FROM telemetry_records WHERE device_id = ? AND kind = 'label' ORDER BY seq`).all(DEVICE) as Array<{ record: Buffer }>).map(
            (r) => {
              const body = TelemetryRecord.decode(r.record).body;
              return body?.$case === 'label' ? body.value.requestId : '';
            },
          ),
        (r) => r.length >= 5,
        { what: "the batch's labels stored" },
      );
      // The two from the first test, then the batch; nothing from the refused requests.
      expect(ids.slice(2)).toEqual(later.map((l) => l.id));
      expect(ids).not.toContain(a.id);
    } finally {
      db.close();
    }
  });
});
