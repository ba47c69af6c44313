import { z } from 'zod';
import type { Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { assertModelName } from '../../common/ids.js';
import type { RetrainingPolicy as WirePolicy, RetrainingPolicyServiceServer, TriggerDecision } from '../../common/proto/driftline/v1/retraining.js';
import type { ModelRegistry } from '../registry/model-registry.js';
import { compileCron, nextScheduledMoment, parseRetrainingPolicy, type StoredRetrainingPolicy } from '../training/retraining-policy.js';
import type { RetrainingPolicyStore, TriggerDecisionRecord } from '../training/retraining-ports.js';
import { unary, validate, type RpcContext } from './rpc.js';

export interface RetrainingApiDeps {
  policies: RetrainingPolicyStore;
  /** A policy is set only for a model the registry knows (MODEL_NOT_FOUND otherwise). */
  models: Pick<ModelRegistry, 'get'>;
  clock: Clock;
}

const DEFAULT_PAGE = 50;
const MAX_PAGE = 1000;

const listRequest = z.object({
  model: z.string().max(64),
  firedOnly: z.boolean(),
  pageSize: z.number().int().min(0).max(MAX_PAGE),
  pageToken: z.string().regex(/^(\d{1,16})?$/, 'expected a page token from a previous response'),
});

/** RetrainingPolicyService: operators set a model's policy, viewers read it and its decision log. */
export function retrainingPolicyService({ policies, models, clock }: RetrainingApiDeps, ctx: RpcContext): RetrainingPolicyServiceServer {
  return {
    setRetrainingPolicy: unary(ctx, 'SetRetrainingPolicy', 'operator', async (req, caller) => {
      if (!req.policy) throw new DriftlineError('REQUEST_INVALID', 'invalid request: policy: required');
      const model = assertModelName(req.policy.model);
      const policy = parseRetrainingPolicy(policyInputFromWire(req.policy));
      await models.get(model);
      const stored = await policies.save(model, policy, clock.now(), caller?.id ?? 'anonymous');
      ctx.logger.info({ model, version: stored.version, by: caller?.id }, 'retraining policy set');
      return policyToWire(stored, clock.now());
    }),
    getRetrainingPolicy: unary(ctx, 'GetRetrainingPolicy', 'viewer', async (req) => {
      const model = assertModelName(req.model);
      const stored = await policies.current(model);
      if (!stored) throw new DriftlineError('RETRAINING_POLICY_NOT_FOUND', `no retraining policy is set for ${model}`, { details: { model } });
      return policyToWire(stored, clock.now());
    }),
    listTriggerDecisions: unary(ctx, 'ListTriggerDecisions', 'viewer', async (req) => {
      const v = validate(listRequest, req);
      const limit = v.pageSize || DEFAULT_PAGE;
      // One more than the page: whether a next page exists, without a count.
      const rows = await policies.listDecisions(
        { ...(v.model ? { model: assertModelName(v.model) } : {}), firedOnly: v.firedOnly, ...(v.pageToken ? { beforeId: Number(v.pageToken) } : {}) },
        limit + 1,
      );
      const page = rows.slice(0, limit);
      return { decisions: page.map(decisionToWire), nextPageToken: rows.length > limit ? String(page.at(-1)!.id) : '' };
    }),
  };
}

/** The wire policy as the schema's input: absent messages are absent triggers; zeros take the schema's defaults where zero means "unset". */
export function policyInputFromWire(p: WirePolicy): unknown {
  let hyperparameters: unknown = {};
  if (p.job?.hyperparametersJson) {
    try {
      hyperparameters = JSON.parse(p.job.hyperparametersJson);
    } catch (err) {
      throw new DriftlineError('RETRAINING_POLICY_INVALID', 'invalid retraining policy: job.hyperparameters: not JSON', {
        cause: err,
        details: { problems: ['job.hyperparameters: not JSON'] },
      });
    }
  }
  const job = p.job;
  const rollout = p.rollout;
  return {
    enabled: p.enabled,
    ...(rollout
      ? {
          rollout: {
            enabled: rollout.enabled,
            target: rollout.target,
            ...(rollout.wavePercents.length ? { waves: rollout.wavePercents } : {}),
            ...(rollout.bakeMs ? { bake: rollout.bakeMs } : {}),
            ...(rollout.minDevices ? { minDevices: rollout.minDevices } : {}),
            gates: rollout.gates,
            failureLimit: rollout.failureLimit,
          },
        }
      : {}),
    ...(p.onDrift ? { onDrift: { version: p.onDrift.version, cohorts: p.onDrift.cohorts, minLevel: p.onDrift.minLevel || 'alert' } } : {}),
    ...(p.onSchedule ? { onSchedule: { cron: p.onSchedule.cron } } : {}),
    ...(p.onLabelled ? { onLabelled: { minNewSamples: p.onLabelled.minNewSamples } } : {}),
    cooldown: p.cooldownMs,
    minDatasetRows: p.minDatasetRows,
    job: {
      trainer: job?.trainer ?? '',
      hyperparameters,
      resources: { gpus: job?.gpus ?? 0, gpuMemory: job?.gpuMemoryBytes ?? 0, ...(job?.maxDurationMs ? { maxDuration: job.maxDurationMs } : {}) },
      gates: job?.gates ?? [],
      ...(job?.dataset
        ? {
            dataset: {
              since: job.dataset.sinceMs,
              selector: job.dataset.selector,
              labelledOnly: job.dataset.labelledOnly,
              replayParent: job.dataset.replayParent,
              cohortOnly: job.dataset.cohortOnly,
            },
          }
        : {}),
    },
  };
}

export function policyToWire(stored: StoredRetrainingPolicy, nowMs: number): WirePolicy {
  const { policy } = stored;
  const job = policy.job;
  return {
    model: stored.model,
    enabled: policy.enabled,
    onDrift: policy.onDrift ? { version: policy.onDrift.version, cohorts: policy.onDrift.cohorts, minLevel: policy.onDrift.minLevel } : undefined,
    onSchedule: policy.onSchedule ? { cron: policy.onSchedule.cron } : undefined,
    onLabelled: policy.onLabelled ? { minNewSamples: policy.onLabelled.minNewSamples } : undefined,
    cooldownMs: policy.cooldown,
    minDatasetRows: policy.minDatasetRows,
    job: {
      trainer: job.trainer,
      hyperparametersJson: JSON.stringify(job.hyperparameters),
      gpus: job.resources.gpus,
      gpuMemoryBytes: job.resources.gpuMemory,
      maxDurationMs: job.resources.maxDuration,
      gates: job.gates,
      dataset: {
        sinceMs: job.dataset.since,
        selector: job.dataset.selector,
        labelledOnly: job.dataset.labelledOnly,
        replayParent: job.dataset.replayParent,
        cohortOnly: job.dataset.cohortOnly,
      },
    },
    rollout: {
      enabled: policy.rollout.enabled,
      target: policy.rollout.target,
      wavePercents: policy.rollout.waves,
      bakeMs: policy.rollout.bake,
      minDevices: policy.rollout.minDevices,
      gates: policy.rollout.gates,
      failureLimit: policy.rollout.failureLimit,
    },
    version: stored.version,
    updatedAtMs: stored.updatedAtMs,
    updatedBy: stored.updatedBy,
    createdAtMs: stored.createdAtMs,
    nextScheduledAtMs: policy.onSchedule && policy.enabled ? (nextScheduledMoment(compileCron(policy.onSchedule.cron), nowMs) ?? 0) : 0,
  };
}

export const decisionToWire = (d: TriggerDecisionRecord): TriggerDecision => ({
  id: d.id,
  model: d.model,
  atMs: d.atMs,
  trigger: d.trigger,
  triggerKey: d.triggerKey,
  fired: d.fired,
  reason: d.reason,
  details: JSON.stringify(d.details),
  jobId: d.jobId,
  clientRequestId: d.clientRequestId,
  policyVersion: d.policyVersion,
});
