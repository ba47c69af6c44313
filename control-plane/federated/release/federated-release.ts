import type { Clock } from '../../../common/clock.js';
import { REFERENCE_METADATA_KEY } from '../../../common/drift/reference.js';
import { DriftlineError, asDriftlineError } from '../../../common/errors.js';
import { sha256Hex } from '../../../common/hashing.js';
import type { DenseLayer } from '../../../common/learning/dense-head.js';
import type { Logger } from '../../../common/logger.js';
import { findClassifierHead, writeClassifierHead } from '../../../common/onnx/classifier-head.js';
import type { FederatedManifestLineage } from '../../../common/trust/manifest.js';
import type { ModelRegistry } from '../../registry/model-registry.js';
import type { RolloutEngine } from '../../rollout/engine.js';
import { DEFAULT_GATES, parseGate, targetGroup, wavesFrom, type RolloutPlanInput } from '../../rollout/plan.js';
import type { Rollout } from '../../rollout/state-machine.js';
import type { ClassificationMetrics, EvaluationLimits, EvaluationReport } from '../../training/evaluation.js';
import type { TrainingRelease } from '../../training/job-state-machine.js';
import { releaseOfRollout, type ReleaseSigning } from '../../training/release-canary.js';
import { retrainingPolicySchema, type RetrainingPolicy } from '../../training/retraining-policy.js';
import type { RetrainingPolicyStore } from '../../training/retraining-ports.js';
import type {
  FederatedJudgeInput,
  FederatedLineage,
  FederatedRegisterInput,
  FederatedRelease as FederatedReleasePort,
  FederatedReleaseInput,
} from '../ports.js';
import { judgeFederatedCandidate, tallyOfCounts, type EvaluationCounts, type FederatedJudgement } from './federated-judge.js';

/**
 * The end of a federated task, the same path as a training job's candidate (issue 15 item 6),
 * behind the rounds engine's FederatedRelease port (../ports.ts):
 * - judge: the final head against the base version's head, both evaluated on the devices' own
 *   held-out samples, summed (federated-metrics.ts), through the retraining evaluation gate;
 * - register: the passing head as the model's next version, the base version's ONNX with the
 *   trained head written into its initializers (same graph, same signature), with its lineage
 *   (parent, task, rounds, clients per round, strategy, mode, ε, δ) in the version's metadata,
 *   which the canary signing port (training/wiring.ts canarySigningOf) puts into the signed manifest;
 * - release: a signed canary to the task's cohort in staged waves by the model's retraining
 *   policy's rollout settings (the schema's defaults without a policy), judged by the rollout gates.
 *
 * Every step is idempotent and derived from what is stored, as ReleaseCanary's: a version is
 * looked up by its task before one is registered; a rollout by (model, version, target) before
 * one is started (client request id `federated/<task id>`), and once started, release() answers
 * with its state (rolling-out, then succeeded or aborted), so the engine may call it again to
 * follow the canary.
 */

/** Who starts a federated task's canary rollout (the audit's actor). */
export const FEDERATED_ACTOR = 'federated';

/** The version metadata key naming the task a version came from (how a retried register finds it). */
export const FEDERATED_TASK_METADATA_KEY = 'lineage.federated_task_id';

export interface FederatedReleaseOptions {
  registry: Pick<ModelRegistry, 'resolve' | 'upload' | 'get'>;
  /** A stored version's ONNX bytes. */
  modelBytes: (model: string, version: number) => Promise<Uint8Array>;
  rollouts: Pick<RolloutEngine, 'start' | 'get' | 'list'>;
  /** The model's retraining policy, for its rollout settings (waves, bake, gates); none: the policy schema's defaults. */
  policies: Pick<RetrainingPolicyStore, 'current'>;
  /** The same signing port as the retraining canary (training/wiring.ts canarySigningOf). */
  signing: ReleaseSigning;
  /** A split below minSplitRows samples makes the gate inconclusive (the training engine's limit). */
  limits: EvaluationLimits;
  clock: Clock;
  logger: Logger;
}

/** The rollout settings a model without a retraining policy gets (the schema's defaults). */
const DEFAULT_ROLLOUT: RetrainingPolicy['rollout'] = retrainingPolicySchema.shape.rollout.parse(undefined);

/** The canary's devices: the task's cohort, within the policy's rollout target. */
export function federatedCanaryAudience(cohortSelector: string, rollout: RetrainingPolicy['rollout']): string {
  return [cohortSelector, rollout.target].filter(Boolean).join(',');
}

export function federatedCanaryPlan(input: FederatedReleaseInput, rollout: RetrainingPolicy['rollout']): RolloutPlanInput {
  return {
    model: input.model,
    version: input.version,
    target: federatedCanaryAudience(input.cohortSelector, rollout),
    waves: wavesFrom(rollout.waves, rollout.bake, rollout.minDevices),
    gates: rollout.gates.length > 0 ? rollout.gates.map(parseGate) : [...DEFAULT_GATES],
    failureLimit: rollout.failureLimit,
  };
}

/** The lineage as the signed manifest carries it (common/trust/manifest.ts lineage.federated). */
export const manifestLineageOf = (lineage: FederatedLineage): FederatedManifestLineage => ({
  taskId: lineage.taskId,
  rounds: lineage.rounds,
  clientsPerRound: lineage.clientsPerRound,
  strategy: lineage.strategy,
  mode: lineage.mode,
  epsilon: lineage.epsilon,
  delta: lineage.delta,
});

/** What a federated evaluation cannot measure, recorded with the version. */
export const FEDERATED_EVALUATION_NOTES =
  'federated evaluation on the devices’ held-out samples: expected calibration error not measured (0); macro F1 exact when every device counts per-class predictions, else the mean per-class recall; no regression split, no latency';

/** The version metadata of a federated head: lineage, the gate's judgement, and the parent's drift reference. */
export function federatedVersionMetadata(input: FederatedRegisterInput, parentMetadata: Record<string, string>): Record<string, string> {
  const { lineage, evaluation: report } = input;
  const test = report.splits.find((s) => s.split === 'test');
  const parentReference = parentMetadata[REFERENCE_METADATA_KEY];
  return {
    'lineage.parent_version': String(input.baseVersion),
    'lineage.job_id': lineage.taskId,
    [FEDERATED_TASK_METADATA_KEY]: lineage.taskId,
    'lineage.federated': JSON.stringify(manifestLineageOf(lineage)),
    'lineage.head_sha256': input.headSha256,
    'lineage.trainer': `federated/${lineage.strategy}`,
    'lineage.metrics': boundedJson({
      rounds: lineage.rounds,
      clients_per_round: lineage.clientsPerRound,
      epsilon: lineage.epsilon,
      delta: lineage.delta,
      ...(test ? { accuracy: round(test.candidate.accuracy), parent_accuracy: round(test.parent.accuracy), eval_samples: test.candidate.rows } : {}),
    }),
    'evaluation.verdict': report.verdict,
    'evaluation.gates': JSON.stringify(report.gates.map((g) => ({ gate: g.gate, verdict: g.verdict, value: g.value }))).slice(0, 4096),
    'evaluation.splits': boundedJson(report.splits.map((s) => ({ split: s.split, candidate: summary(s.candidate), parent: summary(s.parent) }))),
    'evaluation.evaluated_at_ms': String(report.evaluatedAtMs),
    'evaluation.notes': FEDERATED_EVALUATION_NOTES,
    // No central data to build a reference from: drift for the new version is judged against
    // the data its parent learnt from (the head changed, the inputs the devices see did not).
    ...(parentReference ? { [REFERENCE_METADATA_KEY]: parentReference } : {}),
  };
}

export class FederatedRelease implements FederatedReleasePort {
  constructor(private readonly options: FederatedReleaseOptions) {}

  /** The retraining gate over the two heads' summed evaluations (the base head's as the parent). */
  async judge(input: FederatedJudgeInput): Promise<EvaluationReport> {
    return this.judgement(input).report;
  }

  /** judge(), with the metrics and what they cannot say. */
  judgement(input: FederatedJudgeInput): FederatedJudgement {
    const classes = input.candidate.perClassSupport.length;
    return judgeFederatedCandidate({
      gates: input.gates,
      candidate: tallyOfCounts(input.candidate as EvaluationCounts, classes),
      parent: tallyOfCounts(input.parent as EvaluationCounts, classes),
      limits: this.options.limits,
      nowMs: input.nowMs,
    });
  }

  /**
   * The passing head as the model's next version. Refused (FEDERATED_STATE_INVALID) unless the
   * evaluation passed: a candidate becomes a version only through the gate. Registering again for
   * the same task answers with the version registered before (a crash before it was recorded).
   */
  async register(input: FederatedRegisterInput): Promise<{ version: number }> {
    const { registry, logger } = this.options;
    const { lineage, layers } = input;
    if (input.evaluation.verdict !== 'pass') {
      throw new DriftlineError(
        'FEDERATED_STATE_INVALID',
        `task ${lineage.taskId}'s head did not pass the evaluation gate (${input.evaluation.verdict}): no version`,
        {
          details: { verdict: input.evaluation.verdict, reason: input.evaluation.reason },
        },
      );
    }
    const existing = await this.versionOf(input.model, lineage.taskId);
    if (existing) return existing;
    const base = await registry.resolve(input.model, input.baseVersion);
    const written = writeHead(await this.options.modelBytes(input.model, input.baseVersion), layers, input.baseVersion);
    const version = await registry.upload(
      {
        name: input.model,
        sizeBytes: written.length,
        sha256: sha256Hex(written),
        description: `trained by federated task ${lineage.taskId} from v${input.baseVersion}: ${lineage.rounds} rounds, ${lineage.clientsPerRound} clients per round, ${lineage.strategy}`,
        metadata: federatedVersionMetadata(input, base.metadata),
      },
      (async function* () {
        yield written;
      })(),
    );
    logger.info({ model: input.model, version: version.version, task: lineage.taskId }, 'federated head registered as a new version');
    return { version: version.version };
  }

  /**
   * The canary's state now, one step further: a rollout of this version to the canary's devices
   * already started answers with its state; otherwise the canary is signed for the cohort (or
   * awaits a signature) and its rollout started.
   */
  async release(input: FederatedReleaseInput): Promise<Omit<TrainingRelease, 'updatedAtMs'>> {
    const stored = await this.options.policies.current(input.model);
    if (stored && !stored.policy.rollout.enabled) {
      return this.outcome(input, {
        state: 'skipped',
        audience: '',
        rolloutId: '',
        reason: 'the retraining policy does not roll its versions out (rollout.enabled false)',
        errorCode: '',
      });
    }
    const plan = federatedCanaryPlan(input, stored?.policy.rollout ?? DEFAULT_ROLLOUT);
    const audience = plan.target ?? '';
    const existing = await this.existingRollout(plan);
    if (existing)
      return this.outcome(input, { ...(releaseOfRollout(existing) ?? { state: 'rolling-out', reason: '' }), audience, rolloutId: existing.id, errorCode: '' });
    const { signing, rollouts, logger } = this.options;
    const { model, version } = plan;
    const signature = await signing.signCanary({ model, version, audience });
    if (signature.state !== 'signed') {
      logger.info({ model, version, task: input.taskId, audience }, 'federated version awaits its canary signature');
      return this.outcome(input, {
        state: 'awaiting-signature',
        audience,
        rolloutId: '',
        reason: `sign it: driftline models sign ${model} ${version}`,
        errorCode: '',
      });
    }
    let started: Rollout;
    try {
      started = await rollouts.start(plan, { actor: FEDERATED_ACTOR, clientRequestId: `federated/${input.taskId}` });
    } catch (err) {
      const e = asDriftlineError(err);
      logger.warn({ model, version, task: input.taskId, code: e.code }, 'federated canary rollout could not start');
      return this.outcome(input, { state: 'failed', audience, rolloutId: '', reason: e.message, errorCode: e.code });
    }
    logger.info({ model, version, task: input.taskId, rollout: started.id, audience }, 'canary rollout of the federated version started');
    return this.outcome(input, { state: 'rolling-out', audience, rolloutId: started.id, reason: '', errorCode: '' });
  }

  private outcome(input: FederatedReleaseInput, release: Omit<TrainingRelease, 'updatedAtMs' | 'version'>): Omit<TrainingRelease, 'updatedAtMs'> {
    return { ...release, version: input.version };
  }

  private async existingRollout(plan: RolloutPlanInput): Promise<Rollout | undefined> {
    const group = targetGroup(plan.target ?? '');
    return (await this.options.rollouts.list({ model: plan.model, limit: 1000 })).find(
      (r) => r.plan.version === plan.version && targetGroup(r.plan.target) === group,
    );
  }

  /** The version an earlier register of this task left, if any. */
  private async versionOf(model: string, taskId: string): Promise<{ version: number } | undefined> {
    const found = await this.options.registry.get(model).catch((err: unknown) => {
      if (asDriftlineError(err).code === 'MODEL_NOT_FOUND') return undefined;
      throw err;
    });
    const version = found?.versions.find((v) => v.metadata[FEDERATED_TASK_METADATA_KEY] === taskId);
    return version ? { version: version.version } : undefined;
  }
}

/** The base model with `layers` written into its head: the head found with as many layers, each the same shape, every value finite. */
export function writeHead(bytes: Uint8Array, layers: readonly DenseLayer[], baseVersion: number): Uint8Array {
  const found = findClassifierHead(bytes, { maxLayers: Math.max(1, layers.length) });
  const shapes = (list: readonly { inputs: number; outputs: number }[]) => list.map((l) => `${l.inputs}→${l.outputs}`).join(', ');
  if (found.layers.length !== layers.length || found.layers.some((l, i) => l.inputs !== layers[i]!.inputs || l.outputs !== layers[i]!.outputs)) {
    throw new DriftlineError('MODEL_HEAD_UNSUPPORTED', `the trained head (${shapes(layers)}) does not fit v${baseVersion}'s head (${shapes(found.layers)})`);
  }
  for (const [i, layer] of layers.entries()) {
    if (!layer.weights.every(Number.isFinite) || !layer.bias.every(Number.isFinite)) {
      throw new DriftlineError('FEDERATED_UPDATE_NOT_FINITE', `layer ${i + 1} of the trained head holds a value that is not finite`);
    }
  }
  return writeClassifierHead(bytes, found, layers);
}

const summary = (m: ClassificationMetrics) => ({
  rows: m.rows,
  accuracy: round(m.accuracy),
  macro_f1: round(m.macroF1),
  log_loss: round(m.logLoss),
  per_class_recall: m.perClassRecall.slice(0, 32).map(round),
});
const round = (v: number): number => Math.round(v * 1e6) / 1e6;

function boundedJson(value: unknown): string {
  const text = JSON.stringify(value);
  return text.length <= 4096 ? text : '{"truncated":true}';
}
