/**
 * Bad inference requests against a fully wired agent (enrolled, connected to its control
 * plane, serving the deployed demo model through real onnxruntime): each is answered with
 * a 4xx and its stable code in the JSON body, the agent keeps serving valid requests, and
 * the telemetry of everything it did, refusals included, reaches the control plane once.
 * (test/agent-local-api.http.test.ts covers the local API on its own, in more depth.)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentHandle } from '../agent/agent.js';
import type { ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { vibrationRowSampler } from '../demo/model/vibration-data.js';
import { inferOnce } from './helpers/agent-traffic.js';
import type { FleetApi } from './helpers/fleet-api.js';
import { waitFor } from './helpers/processes.js';
import { startEnrolledAgent, startTestControlPlane } from './helpers/wired-agent.js';

const DEVICE = 'edge-bad-inference';
const MAX_BODY_BYTES = 64 * 1024;
const row = (): number[] => [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];
const input = (overrides: Record<string, unknown> = {}) => ({ inputs: [{ name: 'features', shape: [1, 8], datatype: 'FP32', data: row(), ...overrides }] });

/** [what, method, path, body (a string is sent as is), status, code, reaches the model and so is recorded as an inference error] */
const refusals: Array<[string, string, string, unknown, number, string, boolean]> = [
  ['a wrong shape', 'POST', '/v2/models/vibration/infer', input({ shape: [1, 7], data: row().slice(0, 7) }), 400, 'INFERENCE_INPUT_INVALID', true],
  ['a shape that does not match the data', 'POST', '/v2/models/vibration/infer', input({ shape: [2, 8] }), 400, 'INFERENCE_INPUT_INVALID', true],
  ['a negative dimension', 'POST', '/v2/models/vibration/infer', input({ shape: [-1, 8] }), 400, 'INFERENCE_INPUT_INVALID', true],
  [
    'a wrong datatype',
    'POST',
    '/v2/models/vibration/infer',
    input({ datatype: 'INT64', data: [1, 2, 3, 4, 5, 6, 7, 8] }),
    400,
    'INFERENCE_INPUT_INVALID',
    true,
  ],
  ['a datatype that does not exist', 'POST', '/v2/models/vibration/infer', input({ datatype: 'FP128' }), 400, 'INFERENCE_INPUT_INVALID', true],
  [
    'strings where numbers belong',
    'POST',
    '/v2/models/vibration/infer',
    input({ data: ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'] }),
    400,
    'INFERENCE_INPUT_INVALID',
    true,
  ],
  ['an unknown input name', 'POST', '/v2/models/vibration/infer', input({ name: 'feature' }), 400, 'INFERENCE_INPUT_INVALID', true],
  ['a body that is not JSON', 'POST', '/v2/models/vibration/infer', 'features=1,2,3', 400, 'REQUEST_INVALID', false],
  ['JSON that is not an inference request', 'POST', '/v2/models/vibration/infer', { inputs: 'features' }, 400, 'REQUEST_INVALID', false],
  ['an empty list of inputs', 'POST', '/v2/models/vibration/infer', { inputs: [] }, 400, 'REQUEST_INVALID', false],
  ['an unknown model', 'POST', '/v2/models/not-deployed/infer', input(), 404, 'MODEL_NOT_FOUND', false],
  ['a model name like __proto__', 'POST', '/v2/models/__proto__/infer', input(), 404, 'MODEL_NOT_FOUND', false],
  ['a version that is not served', 'POST', '/v2/models/vibration/versions/99/infer', input(), 404, 'MODEL_NOT_FOUND', false],
  ['GET on the infer route', 'GET', '/v2/models/vibration/infer', undefined, 404, 'ROUTE_NOT_FOUND', false],
  [
    'a body above the configured limit',
    'POST',
    '/v2/models/vibration/infer',
    input({ data: new Array(MAX_BODY_BYTES).fill(0.5) }),
    413,
    'PAYLOAD_TOO_LARGE',
    false,
  ],
];

describe('bad inputs - inference requests to a fully wired agent', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let agent: AgentHandle;
  let ok = 0;
  const next = vibrationRowSampler(5);

  const send = async (method: string, path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> => {
    const response = await fetch(`${agent.localApiUrl}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    return { status: response.status, json: (await response.json()) as Record<string, unknown> };
  };
  const valid = async (): Promise<number> => {
    const { status } = await inferOnce(agent.localApiUrl, next().features);
    if (status === 200) ok++;
    return status;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-bad-inference-'));
    ({ cp, api } = await startTestControlPlane(dir));
    // Only inferences and events make records (system metrics and drift windows wait on a clock the test never advances), so the final counts are exact.
    agent = await startEnrolledAgent(cp, api, DEVICE, join(dir, 'agent'), { localApi: { maxBodyBytes: MAX_BODY_BYTES } });
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration', [DEVICE]);
    await waitFor(valid, (status) => status === 200, { what: 'model active on the agent' });
  });

  afterAll(async () => {
    await agent?.shutdown();
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it.each(refusals)('bad inputs - answers %s with %s and %s, and then serves a valid request', async (_, method, path, body, status, code) => {
    const { status: got, json } = await send(method, path, body);
    expect({ status: got, code: json.code }).toEqual({ status, code });
    expect(typeof json.error).toBe('string');
    expect(await valid()).toBe(200);
  });

  it('bad inputs - the agent stays healthy and every record, refusals included, is stored once', async () => {
    const health = await send('GET', '/healthz', undefined);
    expect(health).toMatchObject({ status: 200, json: { ok: true, details: { state: 'running', uplinkConnected: true } } });
    const { stats, device } = await waitFor(
      async () => ({ stats: agent.stats(), device: await api.summary(DEVICE) }),
      ({ stats, device }) =>
        stats.bufferDepth === 0 && stats.recordsAcknowledged === stats.recordsEnqueued && device.devices[0]?.records === stats.recordsEnqueued,
      { what: 'telemetry drained and stored' },
    );
    // Requests refused by the model's signature are inference errors with their code; the ones refused before routing never reach a model.
    const reachedModel = refusals.filter((r) => r[6]).length;
    expect(device.devices[0]).toMatchObject({ inferences: ok + reachedModel, inferenceErrors: reachedModel });
    expect(device.recordsStored).toBe(stats.recordsEnqueued);
    expect(stats.recordsDropped).toBe(0);
  });
});
