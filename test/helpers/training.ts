import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../common/clock.js';
import { silentLogger } from '../../common/logger.js';
import { buildModel } from '../../common/onnx/builder.js';
import { ArtifactStore } from '../../control-plane/registry/artifact-store.js';
import { ModelRegistry } from '../../control-plane/registry/model-registry.js';
import { openDatabase, type Database } from '../../control-plane/store/sqlite/database.js';
import { SqliteModelVersionRepository } from '../../control-plane/store/sqlite/model-version-repository.js';
import { SqliteTrainingJobRepository } from '../../control-plane/store/sqlite/training-job-repository.js';
import { TrainingEngine, type TrainingLimits } from '../../control-plane/training/engine.js';
import type { SplitRole } from '../../control-plane/training/evaluation.js';
import { OnnxRuntimeEvaluator, type EvaluationData, type LabelledSplit } from '../../control-plane/training/onnxruntime/onnx-evaluator.js';
import type { CandidateSink, DatasetCatalog, Evaluator } from '../../control-plane/training/ports.js';
import { ArtifactStoreTrainingArtifacts, RegistryBaseModels, RegistryCandidateSink } from '../../control-plane/training/registry-adapters.js';

export const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/**
 * A two-class linear classifier x FP32 [batch, 2] → probabilities FP32 [batch, 2] (MatMul by
 * `weights`, then Softmax): different weights make a better or a worse candidate.
 */
export function linearClassifier(weights: [number, number, number, number]): Uint8Array {
  return buildModel({
    name: 'linear',
    inputs: [{ name: 'x', type: 'float32', shape: ['batch', 2] }],
    outputs: [{ name: 'probabilities', type: 'float32', shape: ['batch', 2] }],
    nodes: [
      { op: 'MatMul', inputs: ['x', 'w'], outputs: ['logits'] },
      { op: 'Softmax', inputs: ['logits'], outputs: ['probabilities'], attributes: { axis: { int: 1 } } },
    ],
    initializers: [{ name: 'w', type: 'float32', dims: [2, 2], values: weights }],
  });
}

/** Class 0 where x0 > x1: the perfect model is [4, -4, -4, 4]. */
export const GOOD_MODEL = linearClassifier([4, -4, -4, 4]);
/** Always wrong. */
export const BAD_MODEL = linearClassifier([-4, 4, 4, -4]);
/** Class 0 where x0 + x1 > 0: right on about half the points. */
export const PARENT_MODEL = linearClassifier([1, 0, 1, 0]);

/** Points on a grid in [-1, 1]², labelled by which coordinate is larger (ties left out). */
export function gridSplit(step: number, offset = 0): LabelledSplit {
  const xs: number[] = [];
  const labels: number[] = [];
  for (let i = -1; i <= 1 + 1e-9; i += step) {
    for (let j = -1; j <= 1 + 1e-9; j += step) {
      const a = i + offset;
      const b = j;
      if (Math.abs(a - b) < 1e-9) continue;
      xs.push(a, b);
      labels.push(a > b ? 0 : 1);
    }
  }
  return { x: new Float32Array(xs), rowShape: [2], labels };
}

/** Datasets kept beside the test: each one's bytes stored as an artifact (what a worker downloads) and its splits in memory (what the gate reads). */
export class TestDatasets implements DatasetCatalog, EvaluationData {
  private readonly byId = new Map<
    string,
    { sha256: string; sizeBytes: number; model: string; classes: number; splits: Partial<Record<SplitRole, LabelledSplit>> }
  >();

  constructor(private readonly artifacts: ArtifactStoreTrainingArtifacts) {}

  async add(model: string, splits: Partial<Record<SplitRole, LabelledSplit>>): Promise<string> {
    return this.addArtifact(model, Buffer.from(JSON.stringify({ model, splits: Object.keys(splits) })), splits, 2);
  }

  /** A dataset whose artifact is these bytes (a real snapshot tar, for a worker to download and train on). */
  async addArtifact(model: string, bytes: Uint8Array, splits: Partial<Record<SplitRole, LabelledSplit>>, classes: number): Promise<string> {
    const ref = { sha256: sha256(bytes), sizeBytes: bytes.length };
    await this.artifacts.store(
      ref,
      (async function* () {
        yield bytes;
      })(),
      1 << 28,
    );
    const id = sha256(Buffer.concat([bytes, Buffer.from(String(this.byId.size))]));
    this.byId.set(id, { ...ref, model, classes, splits });
    return id;
  }

  async describe(datasetId: string) {
    const found = this.byId.get(datasetId);
    return found ? { id: datasetId, sha256: found.sha256, sizeBytes: found.sizeBytes, model: found.model } : undefined;
  }

  async splits(datasetId: string) {
    return this.byId.get(datasetId)?.splits ?? {};
  }

  async classes(datasetId: string): Promise<number> {
    return this.byId.get(datasetId)?.classes ?? 2;
  }
}

export const LIMITS: TrainingLimits = {
  leaseTtlMs: 30_000,
  defaultMaxAttempts: 3,
  defaultMaxDurationMs: 3_600_000,
  maxCandidateBytes: 1 << 20,
  minSplitRows: 20,
  maxLogLinesPerJob: 50,
};

export interface TrainingRig {
  dir: string;
  file: string;
  db: Database;
  clock: ManualClock;
  registry: ModelRegistry;
  artifactStore: ArtifactStore;
  artifacts: ArtifactStoreTrainingArtifacts;
  datasets: TestDatasets;
  engine: TrainingEngine;
  /** A fresh engine over a reopened database file (a restarted control plane). */
  reopen(): TrainingEngine;
  close(): void;
}

/** An engine over a real SQLite file and artifact store, judged by onnxruntime on the test datasets' splits. */
export async function trainingRig(
  options: { evaluator?: (base: Evaluator) => Evaluator; sink?: (base: CandidateSink) => CandidateSink; limits?: Partial<TrainingLimits> } = {},
): Promise<TrainingRig> {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-training-'));
  const file = join(dir, 'control-plane.db');
  const clock = new ManualClock();
  let db = openDatabase(file);
  const artifactStore = new ArtifactStore(join(dir, 'artifacts'));
  const artifacts = new ArtifactStoreTrainingArtifacts(artifactStore);
  const registryOf = (handle: Database) =>
    new ModelRegistry({ versions: new SqliteModelVersionRepository(handle), artifacts: artifactStore, clock, maxModelBytes: 1 << 24 });
  let registry = registryOf(db);
  const datasets = new TestDatasets(artifacts);
  const engineOf = (handle: Database, reg: ModelRegistry): TrainingEngine => {
    const onnx = new OnnxRuntimeEvaluator({
      data: datasets,
      parents: { bytes: async (model, version) => readFile(artifactStore.fileOf((await reg.resolve(model, version)).sha256)) },
    });
    return new TrainingEngine({
      repository: new SqliteTrainingJobRepository(handle),
      baseModels: new RegistryBaseModels(reg),
      datasets,
      artifacts,
      evaluator: options.evaluator ? options.evaluator(onnx) : onnx,
      sink: options.sink ? options.sink(new RegistryCandidateSink(reg, artifactStore)) : new RegistryCandidateSink(reg, artifactStore),
      limits: { ...LIMITS, ...options.limits },
      clock,
      logger: silentLogger(),
    });
  };
  const rig: TrainingRig = {
    dir,
    file,
    db,
    clock,
    registry,
    artifactStore,
    artifacts,
    datasets,
    engine: engineOf(db, registry),
    reopen() {
      db.close();
      db = openDatabase(file);
      registry = registryOf(db);
      rig.db = db;
      rig.registry = registry;
      rig.engine = engineOf(db, registry);
      return rig.engine;
    },
    close() {
      if (db.open) db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return rig;
}

export async function* chunksOf(bytes: Uint8Array, size = 1000): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}
