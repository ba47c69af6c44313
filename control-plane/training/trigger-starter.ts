import type { Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { CreateDatasetQuery } from '../datasets/dataset-service.js';
import type { DatasetRecord, ModelLineage } from '../datasets/ports.js';
import { COHORT_LABEL } from '../fleet/labels.js';
import type { StartTrainingJobInput, TrainingActor, TrainingEngine } from './engine.js';
import type { TrainingJob, TrainingJobState, TrainingTrigger } from './job-state-machine.js';
import type { TrainingJobRequest } from './retraining-policy.js';
import type { TrainingJobStarter } from './retraining-ports.js';

/** The actor a triggered job's audit entries name. */
export const RETRAINING_ACTOR = 'system:retraining';

/** The states of a job that is not finished: at most one per model (the policy's "one running job"). */
const ACTIVE_STATES: readonly TrainingJobState[] = ['queued', 'leased', 'running', 'evaluating'];

export interface TriggerJobStarterOptions {
  engine: Pick<TrainingEngine, 'start' | 'list' | 'findByClientRequestId'>;
  /** Snapshots of the captured samples (DatasetService). */
  datasets: { create(query: CreateDatasetQuery): Promise<DatasetRecord> };
  /** The model's versions and the dataset each was trained on (the registry). */
  lineage: ModelLineage;
  clock: Clock;
  logger: Logger;
}

/** The selector of a cohort's devices: `cohort=<name>`; "" (the whole fleet) selects every device. */
export const cohortSelectorOf = (cohort: string): string => (cohort ? `${COHORT_LABEL}=${cohort}` : '');

/**
 * The trigger watcher's TrainingJobStarter over the training engine and the datasets domain: a
 * fired decision becomes a dataset snapshot made by the policy's query (the cohort that drifted,
 * the since-window, labelled only, the parent's own training snapshot replayed), then a job on
 * it started with the decision's client request id and the trigger recorded in its spec (its
 * lineage says why it ran).
 *
 * Idempotent like the engine's start: a decision asked again (a restart between starting the
 * job and recording the decision) finds the job its id created before any snapshot is made, so
 * it never starts a second job, nor trips over a snapshot that came out different the second
 * time. A refusal (DATASET_EMPTY, DATASET_TOO_LARGE, MODEL_NOT_FOUND, ...) is thrown with its
 * code; the watcher records it as the decision's reason (start_failed, details.code).
 */
export class TriggerJobStarter implements TrainingJobStarter {
  constructor(private readonly options: TriggerJobStarterOptions) {}

  async start(request: TrainingJobRequest): Promise<{ jobId: string }> {
    const { engine, datasets, lineage, clock, logger } = this.options;
    const started = await engine.findByClientRequestId(request.clientRequestId);
    if (started) return { jobId: started.id };

    const { model } = request;
    const versions = await lineage.versionsOf(model);
    // A drift alert names the version running on the cohort; another trigger retrains the latest.
    const baseVersion = request.baseVersion || versions.at(-1) || 0;
    if (!versions.includes(baseVersion)) {
      throw new DriftlineError('MODEL_NOT_FOUND', `${model} has no version ${baseVersion || '(none registered)'} to retrain`, {
        details: { model, version: baseVersion },
      });
    }
    const query = request.dataset;
    // Replay is the parent's own training snapshot; a version an operator uploaded has none, and then the new data alone trains.
    const replayedDatasetId = query.replayParent ? ((await lineage.trainingDatasetOf(model, baseVersion)) ?? '') : '';
    const now = clock.now();
    const dataset = await datasets.create({
      model,
      version: query.version,
      selector: query.selector,
      sinceMsAgo: query.sinceMs > 0 ? Math.max(1, now - query.sinceMs) : 0,
      labelledOnly: query.labelledOnly,
      replayParentId: replayedDatasetId || undefined,
    });
    const trigger: TrainingTrigger = {
      kind: request.trigger.kind,
      key: request.trigger.key,
      clientRequestId: request.clientRequestId,
      policyVersion: request.trigger.policyVersion,
      driftEventId: request.trigger.driftEventId,
      cohort: request.trigger.cohort,
      cohortSelector: cohortSelectorOf(request.trigger.cohort),
      datasetSelector: query.selector,
      replayedDatasetId,
    };
    const input: StartTrainingJobInput = {
      model,
      baseVersion,
      datasetId: dataset.id,
      trainer: request.trainer,
      hyperparametersJson: JSON.stringify(request.hyperparameters),
      resources: { gpus: request.resources.gpus, gpuMemoryBytes: request.resources.gpuMemoryBytes },
      maxDurationMs: request.resources.maxDurationMs,
      gates: request.gates,
      trigger,
    };
    const by: TrainingActor = { actor: RETRAINING_ACTOR, clientRequestId: request.clientRequestId };
    const job = await engine.start(input, by);
    logger.info({ model, job: job.id, dataset: dataset.id, rows: dataset.rows, trigger: trigger.key }, 'retraining job started on a new dataset snapshot');
    return { jobId: job.id };
  }

  async activeJob(model: string): Promise<{ jobId: string; clientRequestId: string } | undefined> {
    let oldest: TrainingJob | undefined;
    for (const state of ACTIVE_STATES) {
      const { jobs } = await this.options.engine.list({ model, state, pageSize: 1 });
      const job = jobs[0];
      if (job && (!oldest || job.createdAtMs < oldest.createdAtMs)) oldest = job;
    }
    return oldest ? { jobId: oldest.id, clientRequestId: oldest.spec.trigger?.clientRequestId ?? '' } : undefined;
  }
}
