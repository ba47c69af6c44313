import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { decodeUpdate, encodeUpdate, l2Norm, type UpdateEncoding } from '../../common/federated/update-codec.js';
import type { DenseLayer } from '../../common/learning/dense-head.js';
import { silentLogger } from '../../common/logger.js';
import { FederatedInvitation_Kind, FederatedReport, type FederatedInvitation } from '../../common/proto/driftline/v1/device_link.js';
import type { StartFederatedTaskRequest } from '../../common/proto/driftline/v1/federated.js';
import { ArtifactStoreHeads } from '../../control-plane/federated/adapters.js';
import { FederatedEngine } from '../../control-plane/federated/engine.js';
import type { FederatedAlgorithms, FederatedCandidate, FederatedRelease } from '../../control-plane/federated/ports.js';
import type { ClientUpdate, RoundAggregator, ServerStrategy } from '../../control-plane/federated/strategies/strategy.js';
import { ArtifactStore } from '../../control-plane/registry/artifact-store.js';
import { openDatabase, type Database } from '../../control-plane/store/sqlite/database.js';
import { SqliteFederatedTaskRepository } from '../../control-plane/store/sqlite/federated-task-repository.js';

/**
 * A reference sample-weighted FedAvg, written here independently of control-plane/federated/
 * strategies/ (which the lead merges from another branch), so the rounds engine is tested
 * against numbers computed in the test: Δ̄ = Σ nᵢ Δᵢ / Σ nᵢ, next = global + Δ̄.
 */
export function referenceFedAvg(): ServerStrategy {
  return {
    name: 'fedavg',
    holdsEveryUpdate: false,
    proximalMu: 0,
    createAggregator(length: number): RoundAggregator {
      const sum = new Float64Array(length);
      let weight = 0;
      let count = 0;
      return {
        add(u: ClientUpdate) {
          for (let i = 0; i < length; i++) sum[i]! += u.sampleCount * u.delta[i]!;
          weight += u.sampleCount;
          count++;
        },
        get count() {
          return count;
        },
        get heldBytes() {
          return length * 8;
        },
        finish() {
          return Float32Array.from(sum, (v) => v / weight);
        },
      };
    },
    initialState: () => ({}),
    apply(global, aggregated, state) {
      return { global: Float32Array.from(global, (v, i) => v + aggregated[i]!), state };
    },
  };
}

/** The rounds engine's algorithm port over the reference FedAvg; validation of updates as the wire contract says (codes from update-codec). */
export function referenceAlgorithms(): FederatedAlgorithms {
  return {
    validate(spec) {
      if (spec.strategy.name !== 'fedavg')
        throw new DriftlineError('FEDERATED_TASK_INVALID', 'strategy.name: the test wiring has fedavg only', { details: { field: 'strategy.name' } });
    },
    strategy: () => referenceFedAvg(),
    privacy: () => undefined,
    asyncBuffer(strategy, length, { maxStaleness }) {
      let aggregator = strategy.createAggregator(length);
      return {
        add(u) {
          if (u.staleness > maxStaleness) throw new DriftlineError('FEDERATED_UPDATE_STALE', 'too stale');
          const w = 1 / Math.sqrt(1 + u.staleness);
          aggregator.add({ ...u, delta: Float32Array.from(u.delta, (v) => v * w) });
          return w;
        },
        get count() {
          return aggregator.count;
        },
        flush() {
          const delta = aggregator.finish();
          aggregator = strategy.createAggregator(length);
          return { delta };
        },
      };
    },
    validateUpdate(tensor, limits) {
      if (!tensor) throw new DriftlineError('FEDERATED_UPDATE_SHAPE', 'no update');
      if (tensor.data.length > limits.maxBytes) throw new DriftlineError('FEDERATED_UPDATE_TOO_LARGE', 'too large');
      if (tensor.encoding !== limits.encoding) throw new DriftlineError('FEDERATED_UPDATE_SHAPE', 'encoding');
      const delta = decodeUpdate(tensor, limits.headLength);
      const norm = l2Norm(delta);
      if (norm > limits.maxUpdateNorm) throw new DriftlineError('FEDERATED_UPDATE_NORM', 'norm');
      return { delta, norm };
    },
  };
}

/** A head of one dense layer, 3 inputs → 2 classes (8 parameters). */
export function smallHead(): DenseLayer[] {
  return [{ inputs: 3, outputs: 2, weights: Float32Array.from([0.1, -0.2, 0.3, 0.4, 0.5, -0.6]), bias: Float32Array.from([0.01, -0.01]) }];
}

export const HEAD_LENGTH = 8;

/** The devices' side of the link, in process: invitations are recorded; tests answer for the devices. */
export class FakeDevices {
  readonly sent: Array<{ deviceId: string; invitation: FederatedInvitation }> = [];
  fleet: FederatedCandidate[] = [];

  send = async (deviceId: string, invitation: FederatedInvitation): Promise<void> => {
    this.sent.push({ deviceId, invitation });
  };

  invitations(kind: FederatedInvitation_Kind, round?: number): Array<{ deviceId: string; invitation: FederatedInvitation }> {
    return this.sent.filter((s) => s.invitation.kind === kind && (round === undefined || s.invitation.round === round));
  }
}

export function trainReport(
  invitation: FederatedInvitation,
  delta: Float32Array | number[],
  over: Partial<FederatedReport> = {},
  encoding: UpdateEncoding = 'float32',
): Uint8Array {
  const vector = delta instanceof Float32Array ? delta : Float32Array.from(delta);
  return FederatedReport.encode({
    ...FederatedReport.fromPartial({}),
    taskId: invitation.taskId,
    round: invitation.round,
    kind: FederatedInvitation_Kind.KIND_TRAIN,
    headSha256: invitation.headSha256,
    headVersion: invitation.headVersion,
    sampleCount: 10,
    trainLoss: 0.5,
    update: encodeUpdate(vector, encoding),
    ...over,
  }).finish();
}

export function evaluateReport(invitation: FederatedInvitation, samples: number, correct: number, over: Partial<FederatedReport> = {}): Uint8Array {
  return FederatedReport.encode({
    ...FederatedReport.fromPartial({}),
    taskId: invitation.taskId,
    round: invitation.round,
    kind: FederatedInvitation_Kind.KIND_EVALUATE,
    headSha256: invitation.headSha256,
    headVersion: invitation.headVersion,
    evalSamples: samples,
    evalCorrect: correct,
    evalLoss: 0.4,
    perClassSupport: [samples],
    perClassCorrect: [correct],
    ...over,
  }).finish();
}

export function startRequest(over: Partial<StartFederatedTaskRequest> = {}): StartFederatedTaskRequest {
  return {
    model: 'vibration',
    baseVersion: 1,
    clientRequestId: '',
    cohortSelector: '',
    rounds: 2,
    clientsPerRound: 3,
    minClients: 2,
    overSelection: 0,
    roundDeadlineSeconds: 60,
    localEpochs: 1,
    batchSize: 8,
    learningRate: 0.1,
    strategy: undefined,
    privacy: undefined,
    mode: 'sync',
    asyncBufferSize: 0,
    maxStaleness: 0,
    updateCompression: 'float32',
    maxUpdateNorm: 0,
    gates: [],
    release: false,
    ...over,
  };
}

export interface FederatedRig {
  dir: string;
  clock: ManualClock;
  devices: FakeDevices;
  db: Database;
  engine: FederatedEngine;
  heads: ArtifactStoreHeads;
  /** A new engine over the same files (a restarted control plane). */
  restart(): FederatedEngine;
  close(): void;
}

/** The engine over a real SQLite file and artifact store, with fake devices and a ManualClock. */
export function federatedRig(options: { release?: FederatedRelease; devices?: string[]; dir?: string } = {}): FederatedRig {
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'driftline-federated-'));
  const clock = new ManualClock();
  const devices = new FakeDevices();
  devices.fleet = (options.devices ?? ['dev-a', 'dev-b', 'dev-c', 'dev-d']).map((deviceId) => ({ deviceId, online: true }));
  const artifacts = new ArtifactStore(join(dir, 'artifacts'));
  const heads = new ArtifactStoreHeads(artifacts);
  let db = openDatabase(join(dir, 'control-plane.db'));
  const make = (): FederatedEngine =>
    new FederatedEngine({
      repository: new SqliteFederatedTaskRepository(db),
      fleet: { candidates: async () => devices.fleet },
      invitations: devices,
      heads,
      baseHeads: { headOf: async () => smallHead() },
      algorithms: referenceAlgorithms(),
      release: options.release,
      limits: { maxUpdateBytes: 4096 },
      clock,
      logger: silentLogger(),
    });
  const rig: FederatedRig = {
    dir,
    clock,
    devices,
    db,
    engine: make(),
    heads,
    restart() {
      db.close();
      db = openDatabase(join(dir, 'control-plane.db'));
      rig.db = db;
      rig.engine = make();
      return rig.engine;
    },
    close() {
      if (db.open) db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return rig;
}
