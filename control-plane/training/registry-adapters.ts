import { readFile } from 'node:fs/promises';
import { DriftlineError } from '../../common/errors.js';
import type { ArtifactStore } from '../registry/artifact-store.js';
import type { ModelRegistry } from '../registry/model-registry.js';
import { TRAINING_DATASET_METADATA_KEY } from '../datasets/wiring.js';
import { REFERENCE_METADATA_KEY } from '../../common/drift/reference.js';
import type { Logger } from '../../common/logger.js';
import type { ClassificationMetrics } from './evaluation.js';
import type { ArtifactRef, BaseModels, CandidateSink, DatasetCatalog, TrainingArtifacts } from './ports.js';
import type { RetrainedReleaseData } from './release-data.js';

/** The training engine's ports over the model registry and its content-addressed artifacts. */

export class RegistryBaseModels implements BaseModels {
  constructor(private readonly registry: Pick<ModelRegistry, 'resolve'>) {}

  async artifact(model: string, version: number): Promise<ArtifactRef> {
    const found = await this.registry.resolve(model, version);
    return { sha256: found.sha256, sizeBytes: found.sizeBytes };
  }
}

/** The parent version's ONNX bytes, for the evaluation gate (the OnnxRuntimeEvaluator's ParentModels port). */
export class RegistryParentModels {
  constructor(
    private readonly registry: Pick<ModelRegistry, 'resolve'>,
    private readonly artifacts: Pick<ArtifactStore, 'fileOf'>,
  ) {}

  async bytes(model: string, version: number): Promise<Uint8Array> {
    return readFile(this.artifacts.fileOf((await this.registry.resolve(model, version)).sha256));
  }
}

export class ArtifactStoreTrainingArtifacts implements TrainingArtifacts {
  constructor(private readonly artifacts: ArtifactStore) {}

  read(sha256: string): AsyncIterable<Uint8Array> {
    return this.artifacts.read(sha256) as AsyncIterable<Uint8Array>;
  }

  pathOf(sha256: string): string {
    return this.artifacts.fileOf(sha256);
  }

  async store(declared: ArtifactRef, chunks: AsyncIterable<Uint8Array>, maxBytes: number): Promise<ArtifactRef> {
    const writer = await this.artifacts.createWriter();
    try {
      for await (const chunk of chunks) {
        const total = writer.bytesWritten + chunk.length;
        if (total > maxBytes) {
          throw new DriftlineError('PAYLOAD_TOO_LARGE', `the upload grew past ${maxBytes} bytes`, { details: { maxBytes, received: total } });
        }
        if (total > declared.sizeBytes) {
          throw new DriftlineError('UPLOAD_INCOMPLETE', `received more than the declared ${declared.sizeBytes} bytes`, {
            details: { declared: declared.sizeBytes, received: total },
          });
        }
        await writer.write(chunk);
      }
      if (writer.bytesWritten !== declared.sizeBytes) {
        throw new DriftlineError('UPLOAD_INCOMPLETE', `received ${writer.bytesWritten} of ${declared.sizeBytes} bytes`, {
          details: { declared: declared.sizeBytes, received: writer.bytesWritten },
        });
      }
      const sha256 = writer.digest();
      if (sha256 !== declared.sha256) {
        throw new DriftlineError('MODEL_CHECKSUM_MISMATCH', 'uploaded bytes do not match the declared sha256', {
          details: { declared: declared.sha256, actual: sha256 },
        });
      }
      await writer.commit();
      return { sha256, sizeBytes: declared.sizeBytes };
    } finally {
      await writer.abort();
    }
  }
}

/**
 * A passing candidate becomes the model's next version in the registry, its lineage in the
 * version's metadata (the canary's signed manifest reads these entries: wiring.ts), and, given
 * the release data, its drift reference built from its training rows (REFERENCE_METADATA_KEY;
 * release-data.ts). `dataset_id` is the key the datasets domain reads to replay a version's
 * training snapshot (TRAINING_DATASET_METADATA_KEY).
 */
export class RegistryCandidateSink implements CandidateSink {
  constructor(
    private readonly registry: Pick<ModelRegistry, 'upload'>,
    private readonly artifacts: ArtifactStore,
    /** Where the dataset's sha256 comes from, for the lineage; without it the entry is left out. */
    private readonly datasets?: DatasetCatalog,
    /** Where the drift reference comes from; without it the version has none (drift reports no_reference). */
    private readonly release?: { data: Pick<RetrainedReleaseData, 'referenceFor'>; logger: Logger },
  ) {}

  async accept({ job, candidate, report }: Parameters<CandidateSink['accept']>[0]): Promise<{ version: number }> {
    const { spec } = job;
    const dataset = await this.datasets?.describe(spec.datasetId);
    const reference = await this.referenceOf(job.id, spec, candidate.sha256);
    const version = await this.registry.upload(
      {
        name: spec.model,
        sizeBytes: candidate.sizeBytes,
        sha256: candidate.sha256,
        description: `trained by job ${job.id} from v${spec.baseVersion} on dataset ${spec.datasetId.slice(0, 12)}`,
        metadata: {
          [TRAINING_DATASET_METADATA_KEY]: spec.datasetId,
          'lineage.parent_version': String(spec.baseVersion),
          'lineage.dataset_id': spec.datasetId,
          ...(dataset ? { 'lineage.dataset_sha256': dataset.sha256 } : {}),
          'lineage.job_id': job.id,
          'lineage.attempt': String(candidate.attempt),
          'lineage.trainer': spec.trainer,
          'lineage.hyperparameters': spec.hyperparametersJson.slice(0, 4096),
          'lineage.metrics': boundedJson(candidate.metrics),
          ...(spec.trigger
            ? {
                'lineage.trigger': spec.trigger.key,
                'lineage.trigger_request_id': spec.trigger.clientRequestId,
                'lineage.cohort': spec.trigger.cohort,
                ...(spec.trigger.driftEventId ? { 'lineage.drift_event_id': String(spec.trigger.driftEventId) } : {}),
              }
            : {}),
          'evaluation.verdict': report.verdict,
          'evaluation.gates': JSON.stringify(report.gates.map((g) => ({ gate: g.gate, verdict: g.verdict, value: g.value }))).slice(0, 4096),
          'evaluation.splits': boundedJson(report.splits.map((s) => ({ split: s.split, candidate: summary(s.candidate), parent: summary(s.parent) }))),
          'evaluation.evaluated_at_ms': String(report.evaluatedAtMs),
          ...(reference ? { [REFERENCE_METADATA_KEY]: reference } : {}),
        },
      },
      this.artifacts.read(candidate.sha256) as AsyncIterable<Uint8Array>,
    );
    return { version: version.version };
  }

  /** A reference that cannot be built (an unreadable snapshot, a parent reference that does not parse) leaves it out, not the version. */
  private async referenceOf(
    jobId: string,
    spec: { model: string; baseVersion: number; datasetId: string },
    candidateSha256: string,
  ): Promise<string | undefined> {
    if (!this.release) return undefined;
    try {
      return await this.release.data.referenceFor({ model: spec.model, parentVersion: spec.baseVersion, datasetId: spec.datasetId, candidateSha256 });
    } catch (err) {
      this.release.logger.warn(
        { job: jobId, model: spec.model, code: err instanceof DriftlineError ? err.code : undefined, err: (err as Error).message },
        'no drift reference for the retrained version: it is registered without one',
      );
      return undefined;
    }
  }
}

const summary = (m: ClassificationMetrics) => ({
  rows: m.rows,
  accuracy: round(m.accuracy),
  macro_f1: round(m.macroF1),
  log_loss: round(m.logLoss),
  ece: round(m.expectedCalibrationError),
  per_class_recall: m.perClassRecall.slice(0, 32).map(round),
  ...(m.latencyP50Ms === undefined ? {} : { latency_p50_ms: m.latencyP50Ms, latency_p95_ms: m.latencyP95Ms }),
});
const round = (v: number): number => Math.round(v * 1e6) / 1e6;

/** JSON within a metadata entry's 4096 characters: whole, or `{"truncated":true}` rather than cut JSON. */
function boundedJson(value: unknown): string {
  const text = JSON.stringify(value);
  return text.length <= 4096 ? text : '{"truncated":true}';
}

/** Until dataset snapshots are served (control-plane/datasets/), no dataset id resolves: starts are refused with DATASET_NOT_FOUND. */
export const NO_DATASETS: DatasetCatalog = { describe: async () => undefined };
