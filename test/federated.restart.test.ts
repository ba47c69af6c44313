import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { decodeHead, flattenHead } from '../common/federated/head-vector.js';
import { FederatedInvitation_Kind as Kind } from '../common/proto/driftline/v1/device_link.js';
import { HEAD_LENGTH, federatedRig, smallHead, startRequest, trainReport, type FederatedRig } from './helpers/federated.js';

const operator = { actor: 'tok_operator', clientRequestId: '' };
const filled = (value: number): Float32Array => new Float32Array(HEAD_LENGTH).fill(value);

describe('federated restart', () => {
  let rig: FederatedRig;
  beforeEach(() => {
    rig = federatedRig();
  });
  afterEach(() => rig.close());

  it('restart - a control plane restarted mid-round resumes it from the store: kept updates aggregate with the ones that come after', async () => {
    const task = await rig.engine.start(startRequest({ rounds: 1, clientsPerRound: 3, minClients: 3 }), operator);
    const [a, b, c] = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    await rig.engine.handleReport(a!.deviceId, trainReport(a!.invitation, filled(0.1)));
    await rig.engine.handleReport(b!.deviceId, trainReport(b!.invitation, filled(0.2)));
    const engine = rig.restart();
    // A replay of an answer the stopped control plane already took is still a duplicate.
    await engine.handleReport(a!.deviceId, trainReport(a!.invitation, filled(0.1)));
    await engine.handleReport(c!.deviceId, trainReport(c!.invitation, filled(0.3)));
    const now = await engine.get(task.id);
    expect(now.rounds[0]).toMatchObject({ state: 'evaluating', aggregated: 3, duplicates: 1 });
    const head = flattenHead(decodeHead(await rig.heads.get(now.headSha256)));
    expect(head[0]).toBeCloseTo(flattenHead(smallHead())[0]! + 0.2, 6);
  });

  it('restart - a round whose deadline passed while the control plane was down closes on its first tick (with a quorum: aggregated)', async () => {
    const task = await rig.engine.start(startRequest({ rounds: 1, clientsPerRound: 3, minClients: 2 }), operator);
    const [a, b] = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    await rig.engine.handleReport(a!.deviceId, trainReport(a!.invitation, filled(0.1)));
    await rig.engine.handleReport(b!.deviceId, trainReport(b!.invitation, filled(0.3)));
    const engine = rig.restart();
    rig.clock.advance(120_000);
    await engine.tick();
    const now = await engine.get(task.id);
    expect(now.rounds[0]).toMatchObject({ state: 'evaluating', aggregated: 2, dropped: 1 });
  });

  it('restart - a round whose deadline passed while down without a quorum fails the task (FEDERATED_NO_QUORUM)', async () => {
    const task = await rig.engine.start(startRequest({ rounds: 1, clientsPerRound: 3, minClients: 2 }), operator);
    const engine = rig.restart();
    rig.clock.advance(120_000);
    await engine.tick();
    expect(await engine.get(task.id)).toMatchObject({ state: 'failed', errorCode: 'FEDERATED_NO_QUORUM', resultVersion: 0 });
  });
});
