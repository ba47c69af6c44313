import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { startAgent, type AgentHandle } from '../agent/agent.js';
import { loadAgentConfig } from '../agent/config.js';
import { writeIdentity } from '../agent/enrollment/identity.js';
import { downTopic, upTopic } from '../common/device-protocol/topics.js';
import { encodeHead, flattenHead } from '../common/federated/head-vector.js';
import { decodeUpdate, l2Norm } from '../common/federated/update-codec.js';
import { SHIPPED_PROFILES_DIR } from '../common/firmware-profile.js';
import { silentLogger } from '../common/logger.js';
import { findClassifierHead } from '../common/onnx/classifier-head.js';
import { DesiredState, FederatedInvitation, FederatedInvitation_Kind, FederatedReport } from '../common/proto/driftline/v1/device_link.js';
import { startEmbeddedBroker, type EmbeddedBroker } from '../control-plane/device-link/embedded-mqtt/embedded-broker.js';
import { generateVibrationData } from '../demo/model/vibration-data.js';
import { demoModelBytes } from './fixtures/models.js';
import { startHeadServer, trainInvitation, type HeadServer } from './helpers/learner-rig.js';
import { connectClient, defaultBrokerLimits } from './helpers/mqtt.js';
import { waitFor } from './helpers/processes.js';

const DEVICE = { id: 'edge-fed-1', secret: 'secret-of-edge-fed-1' };
const MODEL_BYTES = demoModelBytes(9);
const SAMPLES = 400;

/**
 * A real agent in a federated round: the embedded broker carries the invitation down and the
 * report up, the control plane's artifact server serves the model and the round's head with
 * the device credential. The test plays the rounds engine's part, publishing as the control
 * plane's service session does.
 */
describe('learner - a federated round through a real agent', () => {
  let dir: string;
  let broker: EmbeddedBroker;
  let server: HeadServer;
  let service: MqttClient;
  let agent: AgentHandle;
  const reports: FederatedReport[] = [];
  let zeroHead: { sha256: string; size: number; path: string };
  let headLength: number;

  const infer = async (id: string, row: ArrayLike<number>): Promise<number> => {
    const response = await fetch(`${agent.localApiUrl}/v2/models/vibration/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ id, inputs: [{ name: 'features', shape: [1, 8], datatype: 'FP32', data: Array.from(row) }] }),
    });
    await response.arrayBuffer();
    return response.status;
  };
  const invite = (invitation: FederatedInvitation) =>
    service.publishAsync(downTopic(DEVICE.id, 'federated'), Buffer.from(FederatedInvitation.encode(invitation).finish()), { qos: 1 });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-learner-agent-'));
    broker = await startEmbeddedBroker({
      host: '127.0.0.1',
      port: 0,
      maxPacketBytes: 1 << 20,
      ...defaultBrokerLimits(),
      logger: silentLogger(),
      verifyDeviceCredential: (id, secret) => (id === DEVICE.id ? (secret === DEVICE.secret ? 'ok' : 'bad_secret') : 'unknown'),
    });
    server = await startHeadServer(DEVICE, join(dir, 'cp'));
    const model = await server.store(MODEL_BYTES);
    const own = findClassifierHead(MODEL_BYTES, { maxLayers: 1 }).layers;
    const zero = own.map((l) => ({ ...l, weights: new Float32Array(l.weights.length), bias: new Float32Array(l.bias.length) }));
    headLength = flattenHead(zero).length;
    zeroHead = await server.store(encodeHead(zero));

    // The shipped profiles, with this host's learner guard set so low that any inference during
    // training is over the bound: the test checks the pause mechanism, not this machine's speed.
    const profiles = join(dir, 'profiles');
    cpSync(SHIPPED_PROFILES_DIR, profiles, { recursive: true });
    const file = join(profiles, 'generic-x86_64-cpu.yaml');
    const profile = parseYaml(readFileSync(file, 'utf8')) as Record<string, any>;
    profile.learner = { ...profile.learner, inferenceP95Factor: 0.001, pause: '20ms', batchesPerSlice: 1, maxInferencesPerSecond: 1000 };
    writeFileSync(file, stringifyYaml(profile));

    const dataDir = join(dir, 'agent');
    writeIdentity(dataDir, {
      deviceId: DEVICE.id,
      credential: { kind: 'mqtt-password', username: DEVICE.id, password: DEVICE.secret },
      uplinkUrl: broker.url,
      artifactBaseUrl: server.url,
      enrolledAtMs: Date.now(),
    });
    agent = await startAgent(
      loadAgentConfig({
        env: {},
        flags: {
          dataDir,
          firmwareProfile: 'generic-x86_64-cpu',
          localApi: { port: 0 },
          inference: { profilesDir: profiles },
          // Nothing is captured for upload (as for a model pushed with --no-raw-capture); the learner keeps its own.
          capture: { sampleRate: 0 },
          learner: { enabled: true, minSamples: 32 },
        },
      }),
      { logger: silentLogger() },
    );
    const credential = broker.serviceCredential;
    service = await connectClient(broker.url, { clientId: `${credential.clientIdPrefix}test`, username: credential.username, password: credential.password });
    await service.subscribeAsync(upTopic(DEVICE.id, 'federated'), { qos: 1 });
    service.on('message', (topic, payload) => {
      if (topic === upTopic(DEVICE.id, 'federated')) reports.push(FederatedReport.decode(payload));
    });
    const desired: DesiredState = {
      revision: 1,
      model: undefined,
      rootChain: [],
      rollback: Buffer.alloc(0),
      models: [
        {
          name: 'vibration',
          version: 1,
          sha256: model.sha256,
          sizeBytes: model.size,
          artifactPath: model.path,
          driftReference: '',
          envelope: Buffer.alloc(0),
          rollback: Buffer.alloc(0),
        },
      ],
    };
    await waitFor(
      async () => {
        await service.publishAsync(downTopic(DEVICE.id, 'desired'), Buffer.from(DesiredState.encode(desired).finish()), { qos: 1 });
        return infer('probe', [4.1, 12, 2.9, 3.2, 2.5, 0.9, 0.4, 41]);
      },
      (status) => status === 200,
      { what: 'the model served by the agent', timeoutMs: 60_000 },
    );
    // Labelled local samples: answered requests, then the applications' feedback by request id.
    const data = generateVibrationData({ rows: SAMPLES, seed: 123 });
    for (let r = 0; r < SAMPLES; r++) expect(await infer(`req-${r}`, data.x.subarray(r * 8, r * 8 + 8))).toBe(200);
    for (let at = 0; at < SAMPLES; at += 200) {
      const items = Array.from({ length: 200 }, (_, i) => ({ id: `req-${at + i}`, label: data.y[at + i]! }));
      const response = await fetch(`${agent.localApiUrl}/v2/models/vibration/feedback`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ items }),
      });
      expect(response.status).toBe(202);
    }
  }, 120_000);

  afterAll(async () => {
    service?.end(true);
    await agent?.shutdown();
    await server?.close();
    await broker?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('agent - keeps labelled samples for learning although nothing is captured for upload', () => {
    expect(agent.learner!.samples()).toMatchObject({ rows: SAMPLES + 1, labelled: SAMPLES });
  });

  it('agent - trains on KIND_TRAIN from the served head artifact and answers on up/federated; inference p95 is measured and training pauses for it', async () => {
    const invitation = trainInvitation(zeroHead, { taskId: 'fed-task', round: 1, localEpochs: 8, batchSize: 16, learningRate: 0.1, proximalMu: 0.01 });
    await invite(invitation);
    // Inference keeps coming while the device trains.
    let sent = 0;
    while (reports.length === 0) {
      expect(await infer(`live-${sent++}`, [4.1, 12, 2.9, 3.2, 2.5, 0.9, 0.4, 41])).toBe(200);
      if (sent > 20_000) throw new Error('no federated report');
    }
    const report = reports[0]!;
    expect(report).toMatchObject({ taskId: 'fed-task', round: 1, kind: FederatedInvitation_Kind.KIND_TRAIN, errorCode: '', headSha256: zeroHead.sha256 });
    expect(report.sampleCount).toBeGreaterThan(250);
    const delta = decodeUpdate(report.update!, headLength);
    expect(l2Norm(delta)).toBeGreaterThan(0);
    expect(report.cpuMs).toBeGreaterThan(0);
    const round = agent.learner!.stats().rounds[0]!;
    // The p95 before training (the sample traffic) and while it trained (the live traffic), both measured by the learner.
    expect(round.baselineP95Ms).toBeGreaterThan(0);
    expect(round.inferenceP95Ms).toBeGreaterThan(0);
    expect(report.inferenceP95Ms).toBe(round.inferenceP95Ms);
    expect(round.overBound).toBeGreaterThan(0);
    expect(round.pauses).toBe(round.overBound);
    expect(round.pausedMs).toBeGreaterThan(0);
  }, 120_000);

  it('agent - a replayed invitation gets the same report and trains once', async () => {
    const invitation = trainInvitation(zeroHead, { taskId: 'fed-task', round: 1, localEpochs: 8, batchSize: 16, learningRate: 0.1, proximalMu: 0.01 });
    await invite(invitation);
    await waitFor(
      async () => reports.length,
      (n) => n >= 2,
      { what: 'the replayed report' },
    );
    expect(reports[1]).toEqual(reports[0]);
    expect(agent.learner!.stats()).toMatchObject({ replays: 1 });
    expect(agent.learner!.stats().rounds).toHaveLength(1);
  });

  it('agent - answers KIND_EVALUATE with held-out metrics, and declines a round it cannot do with a code', async () => {
    await invite(trainInvitation(zeroHead, { taskId: 'fed-task', round: 2, kind: FederatedInvitation_Kind.KIND_EVALUATE }));
    await invite(trainInvitation(zeroHead, { taskId: 'fed-other', round: 1, version: 7 }));
    await waitFor(
      async () => reports.length,
      (n) => n >= 4,
      { what: 'the evaluation and the refusal' },
    );
    const evaluation = reports.find((r) => r.kind === FederatedInvitation_Kind.KIND_EVALUATE)!;
    expect(evaluation.errorCode).toBe('');
    expect(evaluation.evalSamples).toBeGreaterThan(20);
    expect(evaluation.perClassSupport.reduce((a, b) => a + b, 0)).toBe(evaluation.evalSamples);
    expect(evaluation.evalLoss).toBeCloseTo(Math.log(4), 5);
    expect(reports.find((r) => r.taskId === 'fed-other')).toMatchObject({ errorCode: 'LEARNER_NO_HEAD' });
  });
});
