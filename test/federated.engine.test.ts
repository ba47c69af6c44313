import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import { decodeHead, flattenHead } from '../common/federated/head-vector.js';
import { encodeUpdate } from '../common/federated/update-codec.js';
import { FederatedInvitation_Kind as Kind, FederatedReport } from '../common/proto/driftline/v1/device_link.js';
import type { FederatedRelease } from '../control-plane/federated/ports.js';
import { currentRound } from '../control-plane/federated/task-state-machine.js';
import type { EvaluationReport } from '../control-plane/training/evaluation.js';
import { HEAD_LENGTH, evaluateReport, federatedRig, smallHead, startRequest, trainReport, type FederatedRig } from './helpers/federated.js';

const operator = { actor: 'tok_operator', clientRequestId: '' };

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (err) {
    return err instanceof DriftlineError ? err.code : `not a DriftlineError: ${String(err)}`;
  }
  return undefined;
}

const filled = (value: number): Float32Array => new Float32Array(HEAD_LENGTH).fill(value);

async function headVector(rig: FederatedRig, sha: string): Promise<Float32Array> {
  return flattenHead(decodeHead(await rig.heads.get(sha)));
}

/** Every device invited to evaluate answers for every head it was asked about. */
async function answerEvaluations(rig: FederatedRig, round: number, correct = 8): Promise<void> {
  for (const { deviceId, invitation } of rig.devices.invitations(Kind.KIND_EVALUATE, round)) {
    await rig.engine.handleReport(deviceId, evaluateReport(invitation, 10, correct));
  }
}

describe('federated engine', () => {
  let rig: FederatedRig;
  beforeEach(() => {
    rig = federatedRig();
  });
  afterEach(() => rig.close());

  it('rounds - aggregates a sample-weighted mean of the updates into the next head, evaluates it, then the task evaluates final against base', async () => {
    const task = await rig.engine.start(startRequest({ rounds: 1, clientsPerRound: 3, minClients: 2 }), operator);
    expect(task.state).toBe('running');
    const invited = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    expect(invited).toHaveLength(3);
    expect(invited[0]!.invitation.headArtifactPath).toBe(`/artifacts/sha256/${task.baseHeadSha256}`);
    const weights = [10, 30, 60];
    const deltas = [filled(0.1), filled(-0.2), filled(0.05)];
    for (const [i, { deviceId, invitation }] of invited.entries()) {
      await rig.engine.handleReport(deviceId, trainReport(invitation, deltas[i]!, { sampleCount: weights[i]!, trainLoss: i + 1 }));
    }
    let now = await rig.engine.get(task.id);
    const round = now.rounds[0]!;
    expect(round.state).toBe('evaluating');
    expect(round.aggregated).toBe(3);
    // The reference, computed here: base + Σ nᵢΔᵢ / Σ nᵢ.
    const base = flattenHead(smallHead());
    const mean = (10 * 0.1 + 30 * -0.2 + 60 * 0.05) / 100;
    const head = await headVector(rig, now.headSha256);
    for (let i = 0; i < HEAD_LENGTH; i++) expect(head[i]).toBeCloseTo(base[i]! + mean, 6);
    expect(round.lossSum / round.samples).toBeCloseTo((10 * 1 + 30 * 2 + 60 * 3) / 100, 9);

    await answerEvaluations(rig, 1);
    now = await rig.engine.get(task.id);
    expect(now.rounds[0]!.state).toBe('done');
    expect(now.state).toBe('evaluating');
    const finalEval = rig.devices.invitations(Kind.KIND_EVALUATE, 0);
    // Final head and base head, each to every selected device.
    expect(new Set(finalEval.map((e) => e.invitation.headSha256))).toEqual(new Set([now.headSha256, now.baseHeadSha256]));
    await answerEvaluations(rig, 0);
    now = await rig.engine.get(task.id);
    // No release port wired: the head is stored and no version is made.
    expect(now.state).toBe('succeeded');
    expect(now.resultVersion).toBe(0);
    // clients_per_round devices (3) evaluate each head on 10 samples.
    expect(now.evaluation!.heads.map((h) => h.samples)).toEqual([30, 30]);
  });

  it('deadline - a round without min_clients updates at its deadline fails the task with FEDERATED_NO_QUORUM and no version', async () => {
    const task = await rig.engine.start(startRequest({ clientsPerRound: 3, minClients: 2 }), operator);
    const [first] = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    await rig.engine.handleReport(first!.deviceId, trainReport(first!.invitation, filled(0.1)));
    rig.clock.advance(59_000);
    await rig.engine.tick();
    expect((await rig.engine.get(task.id)).state).toBe('running');
    rig.clock.advance(1_000);
    await rig.engine.tick();
    const failed = await rig.engine.get(task.id);
    expect(failed.state).toBe('failed');
    expect(failed.errorCode).toBe('FEDERATED_NO_QUORUM');
    expect(failed.resultVersion).toBe(0);
    expect(failed.rounds[0]).toMatchObject({ state: 'failed', errorCode: 'FEDERATED_NO_QUORUM', aggregated: 1 });
    // The two that never answered are told to stop.
    expect(
      rig.devices
        .invitations(Kind.KIND_CANCEL, 1)
        .map((c) => c.deviceId)
        .sort(),
    ).toEqual(
      rig.devices
        .invitations(Kind.KIND_TRAIN, 1)
        .slice(1)
        .map((i) => i.deviceId)
        .sort(),
    );
  });

  it('deadline - a device killed mid-round is counted dropped, not waited for: the round closes at its deadline with the quorum', async () => {
    const task = await rig.engine.start(startRequest({ rounds: 1, clientsPerRound: 3, minClients: 2 }), operator);
    const [a, b, killed] = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    await rig.engine.handleReport(a!.deviceId, trainReport(a!.invitation, filled(0.1)));
    await rig.engine.handleReport(b!.deviceId, trainReport(b!.invitation, filled(0.3)));
    expect(currentRound(await rig.engine.get(task.id))!.state).toBe('training');
    rig.clock.advance(60_000);
    await rig.engine.tick();
    const now = await rig.engine.get(task.id);
    expect(now.rounds[0]).toMatchObject({ state: 'evaluating', aggregated: 2, dropped: 1 });
    expect(rig.devices.invitations(Kind.KIND_CANCEL, 1).map((c) => c.deviceId)).toEqual([killed!.deviceId]);
    // Only the two that reported evaluate the round's head.
    expect(
      rig.devices
        .invitations(Kind.KIND_EVALUATE, 1)
        .map((e) => e.deviceId)
        .sort(),
    ).toEqual([a!.deviceId, b!.deviceId].sort());
    const head = await headVector(rig, now.headSha256);
    expect(head[0]).toBeCloseTo(flattenHead(smallHead())[0]! + 0.2, 6);
  });

  it('replays - a replayed update is counted once as a duplicate and a late one as late, neither aggregated twice', async () => {
    const task = await rig.engine.start(startRequest({ rounds: 2, clientsPerRound: 2, minClients: 2, overSelection: 0.5 }), operator);
    const invited = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    expect(invited).toHaveLength(3);
    const [a, b, c] = invited;
    const payload = trainReport(a!.invitation, filled(0.1));
    await rig.engine.handleReport(a!.deviceId, payload);
    await rig.engine.handleReport(a!.deviceId, payload);
    let now = await rig.engine.get(task.id);
    expect(now.rounds[0]).toMatchObject({ aggregated: 1, duplicates: 1, state: 'training' });
    await rig.engine.handleReport(b!.deviceId, trainReport(b!.invitation, filled(0.3)));
    now = await rig.engine.get(task.id);
    expect(now.rounds[0]!.state).toBe('evaluating');
    // The over-selected third device answers after the round closed on clients_per_round updates.
    await rig.engine.handleReport(c!.deviceId, trainReport(c!.invitation, filled(5)));
    await rig.engine.handleReport(a!.deviceId, payload);
    now = await rig.engine.get(task.id);
    expect(now.rounds[0]).toMatchObject({ aggregated: 2, late: 1, duplicates: 2, dropped: 1 });
    const head = await headVector(rig, now.headSha256);
    expect(head[0]).toBeCloseTo(flattenHead(smallHead())[0]! + 0.2, 6);
  });

  it('refusals - NaN, wrong shape, wrong encoding, oversized and too-large-norm updates are refused and counted by code', async () => {
    rig.devices.fleet.push({ deviceId: 'dev-e', online: true }, { deviceId: 'dev-f', online: true });
    const task = await rig.engine.start(startRequest({ rounds: 1, clientsPerRound: 5, minClients: 1, maxUpdateNorm: 10, overSelection: 0.2 }), operator);
    const invited = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    expect(invited).toHaveLength(6);
    const nan = filled(0.1);
    nan[3] = Number.NaN;
    const [i0, i1, i2, i3, i4, i5] = invited;
    await rig.engine.handleReport(i0!.deviceId, trainReport(i0!.invitation, nan));
    await rig.engine.handleReport(i1!.deviceId, trainReport(i1!.invitation, new Float32Array(HEAD_LENGTH + 1)));
    await rig.engine.handleReport(i2!.deviceId, trainReport(i2!.invitation, filled(0.1), {}, 'float16'));
    await rig.engine.handleReport(
      i3!.deviceId,
      trainReport(i3!.invitation, filled(0.1), { update: { encoding: 'float32', length: HEAD_LENGTH, data: Buffer.alloc(5000), scale: 0 } }),
    );
    await rig.engine.handleReport(i4!.deviceId, trainReport(i4!.invitation, filled(100)));
    await rig.engine.handleReport(i5!.deviceId, trainReport(i5!.invitation, filled(0.1)));
    const now = await rig.engine.get(task.id);
    expect(now.rounds[0]!.refused).toEqual({
      FEDERATED_UPDATE_NOT_FINITE: 1,
      FEDERATED_UPDATE_SHAPE: 2,
      FEDERATED_UPDATE_TOO_LARGE: 1,
      FEDERATED_UPDATE_NORM: 1,
    });
    expect(now.rounds[0]).toMatchObject({ aggregated: 1, state: 'evaluating' });
  });

  it('refusals - a report far above federated.maxUpdateBytes is refused before decoding, and one from a device never invited is refused', async () => {
    await rig.engine.start(startRequest(), operator);
    const [first] = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    expect(await codeOf(rig.engine.handleReport(first!.deviceId, new Uint8Array(4096 + 64 * 1024 + 1)))).toBe('FEDERATED_UPDATE_TOO_LARGE');
    expect(await codeOf(rig.engine.handleReport('dev-stranger', trainReport(first!.invitation, filled(0.1))))).toBe('FEDERATED_UPDATE_UNEXPECTED');
    expect(await codeOf(rig.engine.handleReport(first!.deviceId, trainReport({ ...first!.invitation, taskId: 'fl_nope' }, filled(0.1))))).toBe(
      'FEDERATED_UPDATE_UNEXPECTED',
    );
  });

  it('declines - a device that declines (LEARNER_NOT_ENOUGH_SAMPLES) counts as dropped and the round closes once everyone answered', async () => {
    const task = await rig.engine.start(startRequest({ rounds: 1, clientsPerRound: 3, minClients: 2 }), operator);
    const [a, b, c] = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    await rig.engine.handleReport(a!.deviceId, trainReport(a!.invitation, filled(0.1)));
    await rig.engine.handleReport(b!.deviceId, trainReport(b!.invitation, filled(0.1)));
    const declined = FederatedReport.encode({
      ...FederatedReport.fromPartial({}),
      taskId: task.id,
      round: 1,
      kind: Kind.KIND_TRAIN,
      errorCode: 'LEARNER_NOT_ENOUGH_SAMPLES',
    }).finish();
    await rig.engine.handleReport(c!.deviceId, declined);
    const now = await rig.engine.get(task.id);
    expect(now.rounds[0]).toMatchObject({ state: 'evaluating', aggregated: 2, dropped: 1 });
  });

  it('start - is idempotent by client_request_id and refuses a reused id with another request (REQUEST_ID_REUSED)', async () => {
    const by = { actor: 'tok_operator', clientRequestId: 'req-1' };
    const first = await rig.engine.start(startRequest(), by);
    const again = await rig.engine.start(startRequest(), by);
    expect(again.id).toBe(first.id);
    expect(rig.devices.invitations(Kind.KIND_TRAIN)).toHaveLength(3);
    expect(await codeOf(rig.engine.start(startRequest({ rounds: 5 }), by))).toBe('REQUEST_ID_REUSED');
  });

  it('start - refuses bad settings with FEDERATED_TASK_INVALID naming the field, and no device with FEDERATED_NO_CLIENTS', async () => {
    const fieldOf = async (over: Parameters<typeof startRequest>[0]): Promise<unknown> => {
      try {
        await rig.engine.start(startRequest(over), operator);
      } catch (err) {
        return err instanceof DriftlineError ? [err.code, err.details?.field] : err;
      }
      return undefined;
    };
    expect(await fieldOf({ rounds: 0 })).toEqual(['FEDERATED_TASK_INVALID', 'rounds']);
    expect(await fieldOf({ minClients: 4, clientsPerRound: 3 })).toEqual(['FEDERATED_TASK_INVALID', 'min_clients']);
    expect(await fieldOf({ mode: 'later' })).toEqual(['FEDERATED_TASK_INVALID', 'mode']);
    expect(await fieldOf({ updateCompression: 'bf16' })).toEqual(['FEDERATED_TASK_INVALID', 'update_compression']);
    expect(await fieldOf({ gates: ['nonsense'] })).toEqual(['FEDERATED_TASK_INVALID', 'gates']);
    expect(
      await fieldOf({
        privacy: {
          mode: 'central-gaussian',
          clippingNorm: 0,
          adaptiveClipping: false,
          targetQuantile: 0,
          clippingLearningRate: 0,
          noiseMultiplier: 1,
          targetEpsilon: 1,
          delta: 1e-5,
        },
      }),
    ).toEqual(['FEDERATED_TASK_INVALID', 'privacy.clipping_norm']);
    rig.devices.fleet = [];
    const task = await rig.engine.start(startRequest(), operator);
    expect(task).toMatchObject({ state: 'failed', errorCode: 'FEDERATED_NO_CLIENTS' });
  });

  it('cancel - cancels at once, tells the devices still training to stop, and refuses to cancel again (FEDERATED_STATE_INVALID)', async () => {
    const task = await rig.engine.start(startRequest(), operator);
    const [a] = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    await rig.engine.handleReport(a!.deviceId, trainReport(a!.invitation, filled(0.1)));
    const cancelled = await rig.engine.cancel(task.id, 'operator changed their mind');
    expect(cancelled.state).toBe('cancelled');
    expect(rig.devices.invitations(Kind.KIND_CANCEL, 1)).toHaveLength(2);
    expect(await codeOf(rig.engine.cancel(task.id, ''))).toBe('FEDERATED_STATE_INVALID');
    // A late answer to a cancelled task is counted, not used.
    const [, b] = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    await rig.engine.handleReport(b!.deviceId, trainReport(b!.invitation, filled(0.1)));
    expect((await rig.engine.get(task.id)).rounds[0]!.late).toBe(1);
  });

  it('list - pages newest first with a page token', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push((await rig.engine.start(startRequest(), operator)).id);
      rig.clock.advance(1);
    }
    const first = await rig.engine.list({ pageSize: 2 });
    expect(first.tasks.map((t) => t.id)).toEqual([ids[4], ids[3]]);
    const second = await rig.engine.list({ pageSize: 2, pageToken: first.nextPageToken });
    expect(second.tasks.map((t) => t.id)).toEqual([ids[2], ids[1]]);
    const third = await rig.engine.list({ pageSize: 2, pageToken: second.nextPageToken });
    expect(third.tasks.map((t) => t.id)).toEqual([ids[0]]);
    expect(third.nextPageToken).toBe('');
    expect(await codeOf(rig.engine.list({ pageToken: '!!' }))).toBe('FEDERATED_TASK_INVALID');
  });

  it('async - keeps clients_per_round devices training, aggregates every async_buffer_size updates with staleness weights, refuses ones too stale', async () => {
    rig.devices.fleet = ['d1', 'd2', 'd3', 'd4', 'd5'].map((deviceId) => ({ deviceId, online: true }));
    const task = await rig.engine.start(
      startRequest({ mode: 'async', rounds: 3, clientsPerRound: 3, minClients: 1, asyncBufferSize: 2, maxStaleness: 1 }),
      operator,
    );
    const firstWave = rig.devices.invitations(Kind.KIND_TRAIN, 1);
    expect(firstWave).toHaveLength(3);
    const [x, y, z] = firstWave;
    await rig.engine.handleReport(x!.deviceId, trainReport(x!.invitation, filled(0.2)));
    // One answered: another device is invited so three keep training.
    expect(rig.devices.invitations(Kind.KIND_TRAIN)).toHaveLength(4);
    await rig.engine.handleReport(y!.deviceId, trainReport(y!.invitation, filled(0.4)));
    let now = await rig.engine.get(task.id);
    expect(now.rounds[0]).toMatchObject({ state: 'done', aggregated: 2 });
    expect(now.headVersion).toBe(1);
    expect(now.rounds).toHaveLength(2);
    // z trained from head version 0: one version stale, weighted 1/√2.
    await rig.engine.handleReport(z!.deviceId, trainReport(z!.invitation, filled(0.2)));
    const fresh = rig.devices.sent.filter((s) => s.invitation.kind === Kind.KIND_TRAIN && s.invitation.headVersion === 1);
    expect(fresh.length).toBeGreaterThan(0);
    await rig.engine.handleReport(fresh[0]!.deviceId, trainReport(fresh[0]!.invitation, filled(0.2)));
    now = await rig.engine.get(task.id);
    expect(now.rounds[1]).toMatchObject({ state: 'done', aggregated: 2 });
    const expected = flattenHead(smallHead())[0]! + 0.3 + (0.2 / Math.SQRT2 + 0.2) / 2;
    expect((await headVector(rig, now.headSha256))[0]).toBeCloseTo(expected, 5);
    // Now at head version 2, an answer still from version 0 is two versions old: refused.
    const stale = rig.devices.sent.find(
      (s) => s.invitation.kind === Kind.KIND_TRAIN && s.invitation.headVersion === 0 && ![x, y, z].some((w) => w!.deviceId === s.deviceId),
    );
    expect(stale).toBeDefined();
    await rig.engine.handleReport(stale!.deviceId, trainReport(stale!.invitation, filled(0.2)));
    now = await rig.engine.get(task.id);
    expect(currentRound(now)!.refused).toEqual({ FEDERATED_UPDATE_STALE: 1 });
  });
});

describe('federated engine with a release port', () => {
  let rig: FederatedRig;
  const calls: string[] = [];
  const verdict: { value: EvaluationReport['verdict'] } = { value: 'pass' };
  const release: FederatedRelease = {
    async judge(input) {
      calls.push(`judge ${input.candidate.samples}/${input.candidate.correct} vs ${input.parent.samples}/${input.parent.correct}`);
      return { verdict: verdict.value, reason: verdict.value === 'pass' ? '' : 'accuracy-delta below 0', gates: [], splits: [], evaluatedAtMs: input.nowMs };
    },
    async register(input) {
      calls.push(`register ${input.model} from v${input.baseVersion} rounds ${input.lineage.rounds} layers ${input.layers.length}`);
      return { version: 7 };
    },
    async release(input) {
      calls.push(`release v${input.version}`);
      return { state: 'rolling-out', version: input.version, audience: input.cohortSelector, rolloutId: 'ro_1', reason: '', errorCode: '' };
    },
  };
  beforeEach(() => {
    calls.length = 0;
    rig = federatedRig({ release });
  });
  afterEach(() => rig.close());

  async function runToJudge(releaseIt: boolean): Promise<string> {
    const task = await rig.engine.start(startRequest({ rounds: 1, clientsPerRound: 2, minClients: 2, release: releaseIt }), operator);
    for (const { deviceId, invitation } of rig.devices.invitations(Kind.KIND_TRAIN, 1))
      await rig.engine.handleReport(deviceId, trainReport(invitation, filled(0.1)));
    await answerEvaluations(rig, 1);
    const finalHead = (await rig.engine.get(task.id)).headSha256;
    for (const { deviceId, invitation } of rig.devices.invitations(Kind.KIND_EVALUATE, 0)) {
      await rig.engine.handleReport(deviceId, evaluateReport(invitation, 10, invitation.headSha256 === finalHead ? 9 : 6));
    }
    return task.id;
  }

  it('release - a passing head is judged on the devices’ counts, registered as a version and released as a canary', async () => {
    const id = await runToJudge(true);
    const task = await rig.engine.get(id);
    expect(task).toMatchObject({ state: 'succeeded', resultVersion: 7, release: { state: 'rolling-out', rolloutId: 'ro_1' } });
    expect(calls).toEqual(['judge 20/18 vs 20/12', 'register vibration from v1 rounds 1 layers 1', 'release v7']);
  });

  it('release - a failing verdict rejects the task: no version', async () => {
    verdict.value = 'fail';
    const task = await rig.engine.get(await runToJudge(true));
    expect(task).toMatchObject({ state: 'rejected', resultVersion: 0 });
    expect(calls).toHaveLength(1);
    verdict.value = 'pass';
  });
});

// Encoded here so the int8 path (stochastic rounding) is covered by one accepted update too.
describe('federated engine compression', () => {
  it('compression - an int8 update of a task asking for int8 is accepted', async () => {
    const rig = federatedRig();
    try {
      const task = await rig.engine.start(startRequest({ rounds: 1, clientsPerRound: 1, minClients: 1, updateCompression: 'int8' }), operator);
      const [a] = rig.devices.invitations(Kind.KIND_TRAIN, 1);
      await rig.engine.handleReport(a!.deviceId, trainReport(a!.invitation, filled(0.1), { update: encodeUpdate(filled(0.1), 'int8') }));
      expect((await rig.engine.get(task.id)).rounds[0]!.aggregated).toBe(1);
    } finally {
      rig.close();
    }
  });
});

describe('federated engine with the served algorithms', () => {
  it('privacy - central-gaussian clips each update, sums them unweighted, divides by clients_per_round, and accounts ε per round', async () => {
    const { defaultFederatedAlgorithms } = await import('../control-plane/federated/algorithms.js');
    // Zero noise draws: the noised mean equals the clipped sum over clients_per_round, checkable here.
    const rig = federatedRig({
      algorithms: defaultFederatedAlgorithms(),
      gaussian: () => 0,
      devices: ['d1', 'd2', 'd3', 'd4', 'd5', 'd6', 'd7', 'd8', 'd9', 'd10'],
    });
    try {
      const privacy = {
        mode: 'central-gaussian',
        clippingNorm: 1,
        adaptiveClipping: false,
        targetQuantile: 0,
        clippingLearningRate: 0,
        noiseMultiplier: 1.1,
        targetEpsilon: 50,
        delta: 1e-5,
      };
      const task = await rig.engine.start(startRequest({ rounds: 1, clientsPerRound: 2, minClients: 2, privacy }), operator);
      const [a, b] = rig.devices.invitations(Kind.KIND_TRAIN, 1);
      // Norm √8 ≈ 2.83 is clipped to 1; norm √8 × 0.1 ≈ 0.28 is kept. Sample counts do not weigh under DP.
      await rig.engine.handleReport(a!.deviceId, trainReport(a!.invitation, filled(1), { sampleCount: 1000 }));
      await rig.engine.handleReport(b!.deviceId, trainReport(b!.invitation, filled(0.1), { sampleCount: 1 }));
      const now = await rig.engine.get(task.id);
      const expected = (1 / Math.sqrt(8) + 0.1) / 2;
      const head = await headVector(rig, now.headSha256);
      expect(head[0]).toBeCloseTo(flattenHead(smallHead())[0]! + expected, 5);
      expect(now.rounds[0]!.clippingNorm).toBe(1);
      expect(now.epsilon).toBeGreaterThan(0);
      expect(now.rounds[0]!.epsilon).toBe(now.epsilon);
    } finally {
      rig.close();
    }
  });

  it('strategies - a task naming an invalid strategy is refused with FEDERATED_TASK_INVALID before it starts', async () => {
    const { defaultFederatedAlgorithms } = await import('../control-plane/federated/algorithms.js');
    const rig = federatedRig({ algorithms: defaultFederatedAlgorithms() });
    try {
      const strategy = {
        name: 'krum',
        serverLearningRate: 0,
        serverMomentum: 0,
        beta2: 0,
        tau: 0,
        proximalMu: 0,
        trimFraction: 0,
        byzantineClients: 2,
        krumSelected: 0,
      };
      expect(await codeOf(rig.engine.start(startRequest({ strategy, clientsPerRound: 3, minClients: 3 }), operator))).toBe('FEDERATED_TASK_INVALID');
    } finally {
      rig.close();
    }
  });
});
