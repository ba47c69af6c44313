import cron from 'node-cron';
import { z } from 'zod';
import { byteSize, duration } from '../../common/config.js';
import { DriftlineError } from '../../common/errors.js';
import { parseSelector } from '../../common/ids.js';
import type { DriftLevel } from '../drift/ports.js';
import { COHORT_LABEL } from '../fleet/labels.js';
import { parseGate } from '../rollout/plan.js';

/**
 * A model's retraining policy and the pure decision it makes: given what just happened (a drift
 * alert, a schedule's moment, new labelled samples) and the facts around it (a job running, the
 * last job started, the rows the dataset would hold), start a training job or say why not.
 * Everything timed or stored lives in the trigger watcher and its ports; this file only decides.
 */

/** Gate rules in the evaluation gate's form: `accuracy-delta>=0.01`, `class-recall-drop<=0.05`. */
const GATE_RULE = /^[a-z][a-z0-9-]*(<=|>=|<|>)-?\d+(\.\d+)?$/;
/** Trainer names as the trainers register them (`ts-dense-head`, `pytorch-mlp`, a user's command name). */
const TRAINER_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const MAX_HYPERPARAMETERS_JSON = 16 * 1024;

const selectorText = z
  .string()
  .max(512)
  .refine((s) => {
    try {
      parseSelector(s);
      return true;
    } catch {
      return false;
    }
  }, 'expected a label selector such as site=plant-3,profile=jetson-*');

/** A rollout gate as `rollout start --gate` takes it (`p95-latency-ratio<=1.5`, `accuracy-delta>=0`, `drift`). */
const rolloutGateText = z
  .string()
  .max(128)
  .refine((g) => {
    try {
      parseGate(g);
      return true;
    } catch {
      return false;
    }
  }, 'expected a rollout gate such as p95-latency-ratio<=1.5 (see driftline rollout start --help)');

const wavePercents = z
  .array(z.number().gt(0).max(100))
  .min(1)
  .max(20)
  .refine((w) => w.every((p, i) => i === 0 || p > w[i - 1]!), 'wave percents must increase')
  .refine((w) => w.at(-1) === 100, 'the last wave must reach 100 percent');

const cronText = z
  .string()
  .max(128)
  .superRefine((expression, ctx) => {
    try {
      compileCron(expression);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: err instanceof Error ? err.message : String(err) });
    }
  });

export const retrainingPolicySchema = z
  .object({
    /** A disabled policy records why nothing fires ("disabled") and starts nothing. */
    enabled: z.boolean().default(true),
    /** Drift alerts of the model, from the drift watcher's events. */
    onDrift: z
      .object({
        /** Only alerts of this version; 0: any version. */
        version: z.number().int().min(0).default(0),
        /** Only alerts of these cohorts (device label "cohort"; "" is the whole fleet); empty: every cohort. */
        cohorts: z.array(z.string().max(128)).max(100).default([]),
        /** The drift level that triggers: alert (default), or warn and above. */
        minLevel: z.enum(['warn', 'alert']).default('alert'),
      })
      .strict()
      .optional(),
    /** A five-field cron expression (minute hour day-of-month month day-of-week), evaluated in UTC. */
    onSchedule: z.object({ cron: cronText }).strict().optional(),
    /** At least this many labelled samples arrived since the last job (or since the policy was first set). */
    onLabelled: z
      .object({ minNewSamples: z.number().int().positive().max(1_000_000_000) })
      .strict()
      .optional(),
    /** After a job starts, triggers within this long start nothing ("cooldown"); a burst of drift alerts starts one job. */
    cooldown: duration.prefault('6h'),
    /** The dataset the job would train on must hold at least this many labelled rows ("dataset_too_small"). */
    minDatasetRows: z.number().int().min(0).max(1_000_000_000).default(0),
    job: z
      .object({
        trainer: z.string().regex(TRAINER_NAME, 'expected a trainer name such as ts-dense-head'),
        /** Passed to the trainer as JSON. */
        hyperparameters: z
          .record(z.string().max(64), z.json())
          .default({})
          .refine((h) => JSON.stringify(h).length <= MAX_HYPERPARAMETERS_JSON, `hyperparameters over ${MAX_HYPERPARAMETERS_JSON} bytes of JSON`),
        resources: z
          .object({
            gpus: z.number().int().min(0).max(64).default(0),
            /** GPU memory per GPU the job needs; 0: any. */
            gpuMemory: byteSize.prefault(0),
            /** The job fails past this. */
            maxDuration: duration.prefault('2h'),
          })
          .strict()
          .prefault({}),
        /** The evaluation gate's rules for the candidate; empty: the gate's defaults. */
        gates: z.array(z.string().regex(GATE_RULE, 'expected a gate rule such as accuracy-delta>=0.01')).max(20).default([]),
        dataset: z
          .object({
            /** Samples captured within this long before the decision; 0: every stored sample. */
            since: duration.prefault('7d'),
            /** Only samples of devices matching this label selector. */
            selector: selectorText.default(''),
            labelledOnly: z.boolean().default(true),
            /** Include the parent version's own training snapshot, so retraining on one cohort does not forget the rest. */
            replayParent: z.boolean().default(true),
            /** A drift alert of one cohort narrows the dataset to that cohort's devices (replay keeps the rest). */
            cohortOnly: z.boolean().default(true),
          })
          .strict()
          .prefault({}),
      })
      .strict(),
    /**
     * The release path after the evaluation gate: a version a triggered job made is signed as a
     * canary for the devices of the cohort whose drift triggered it, then rolled out to them in
     * these waves (as `driftline rollout start` takes them), judged by the rollout gates. The
     * rest of the fleet gets it only through a human-signed release (the automation key signs
     * canaries only).
     */
    rollout: z
      .object({
        /** false: the loop stops at the registered version (no signature asked, no rollout). */
        enabled: z.boolean().default(true),
        /** Devices of the canary besides the cohort (ANDed with `cohort=<the drifted cohort>`); "" and a fleet-wide trigger: every device. */
        target: selectorText.default(''),
        /** Percent of the canary's compatible devices per wave, the last 100. */
        waves: wavePercents.default([1, 10, 50, 100]),
        /** How long each wave runs before its gates are judged. */
        bake: duration.prefault('10m'),
        /** Smallest cohort of a wave. */
        minDevices: z.number().int().min(1).max(100_000).default(5),
        /** Rollout gates; empty: the rollout defaults (install-failure-rate<=0.2, error-rate-delta<=0.05, p95-latency-ratio<=1.5). */
        gates: z.array(rolloutGateText).max(20).default([]),
        /** Failed gate evaluations tolerated per wave before aborting. */
        failureLimit: z.number().int().min(0).max(100).default(0),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export type RetrainingPolicy = z.output<typeof retrainingPolicySchema>;
export type RetrainingPolicyInput = z.input<typeof retrainingPolicySchema>;

/** Validates a policy once, listing every problem by its path (RETRAINING_POLICY_INVALID). */
export function parseRetrainingPolicy(input: unknown): RetrainingPolicy {
  const result = retrainingPolicySchema.safeParse(input);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join('.') || '(policy)'}: ${i.message}`);
    throw new DriftlineError('RETRAINING_POLICY_INVALID', `invalid retraining policy: ${problems.join('; ')}`, { details: { problems } });
  }
  const policy = result.data;
  if (!policy.onDrift && !policy.onSchedule && !policy.onLabelled && policy.enabled) {
    throw new DriftlineError(
      'RETRAINING_POLICY_INVALID',
      'invalid retraining policy: an enabled policy needs a trigger (on drift, on a schedule or on labelled samples)',
      {
        details: { problems: ['(policy): no trigger'] },
      },
    );
  }
  return policy;
}

/** A policy as stored: one version of it, and when the model's first version was set. */
export interface StoredRetrainingPolicy {
  model: string;
  version: number;
  policy: RetrainingPolicy;
  /** When the model's first policy version was set: "new" labelled samples count from here until a job starts. */
  createdAtMs: number;
  updatedAtMs: number;
  /** Operator token id of whoever set this version. */
  updatedBy: string;
}

// ---------------------------------------------------------------------------------------------
// Schedules

/** A cron expression as sets of the minutes, hours, days, months and weekdays it matches (UTC). */
export interface CompiledCron {
  expression: string;
  minutes: ReadonlySet<number>;
  hours: ReadonlySet<number>;
  daysOfMonth: ReadonlySet<number>;
  /** "L": the last day of the month. */
  lastDayOfMonth: boolean;
  months: ReadonlySet<number>;
  /** 0 is Sunday. */
  daysOfWeek: ReadonlySet<number>;
  /** Both day fields restricted: cron matches a day that either field matches. */
  eitherDay: boolean;
}

/** Parses with node-cron's parser; refuses six-field (seconds) expressions: retraining is scheduled to the minute. */
export function compileCron(expression: string): CompiledCron {
  const fields = expression.trim().split(/\s+/);
  if (fields.length !== 5) throw new Error(`expected a five-field cron expression (minute hour day-of-month month day-of-week), got ${fields.length} field(s)`);
  const parsed = cron.parse(expression.trim());
  const numbers = (values: Array<number | string>, field: string): Set<number> => {
    const out = new Set<number>();
    for (const v of values) {
      if (typeof v !== 'number') throw new Error(`the ${field} field's ${JSON.stringify(v)} is not supported here`);
      out.add(v);
    }
    return out;
  };
  const lastDayOfMonth = parsed.dayOfMonth.includes('L');
  const daysOfMonth = numbers(
    parsed.dayOfMonth.filter((v) => v !== 'L'),
    'day-of-month',
  );
  const daysOfWeek = new Set([...numbers(parsed.dayOfWeek, 'day-of-week')].map((d) => d % 7));
  return {
    expression: expression.trim(),
    minutes: new Set(parsed.minute),
    hours: new Set(parsed.hour),
    daysOfMonth,
    lastDayOfMonth,
    months: new Set(parsed.month),
    daysOfWeek,
    eitherDay: (lastDayOfMonth || daysOfMonth.size < 31) && daysOfWeek.size < 7,
  };
}

const DAY_MS = 86_400_000;
const MINUTE_MS = 60_000;
/** How far a schedule search looks (a yearly schedule on 29 February still has a moment within it). */
const SEARCH_DAYS = 8 * 366;

function dayMatches(c: CompiledCron, dayStartMs: number): boolean {
  const d = new Date(dayStartMs);
  if (!c.months.has(d.getUTCMonth() + 1)) return false;
  const dom = d.getUTCDate();
  const last = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 0)).getUTCDate();
  const byMonth = c.daysOfMonth.has(dom) || (c.lastDayOfMonth && dom === last);
  const byWeek = c.daysOfWeek.has(d.getUTCDay());
  return c.eitherDay ? byMonth || byWeek : byMonth && byWeek;
}

const sortedDesc = (s: ReadonlySet<number>): number[] => [...s].sort((a, b) => b - a);
const sortedAsc = (s: ReadonlySet<number>): number[] => [...s].sort((a, b) => a - b);

/** The latest moment the schedule names in (afterMs, atOrBeforeMs], or undefined. */
export function latestScheduledMoment(c: CompiledCron, afterMs: number, atOrBeforeMs: number): number | undefined {
  const hours = sortedDesc(c.hours);
  const minutes = sortedDesc(c.minutes);
  const firstDay = Math.floor(atOrBeforeMs / DAY_MS) * DAY_MS;
  for (let day = firstDay, n = 0; day + DAY_MS > afterMs && n < SEARCH_DAYS; day -= DAY_MS, n++) {
    if (!dayMatches(c, day)) continue;
    for (const h of hours) {
      for (const m of minutes) {
        const at = day + h * 3_600_000 + m * MINUTE_MS;
        if (at <= atOrBeforeMs) return at > afterMs ? at : undefined;
      }
    }
  }
  return undefined;
}

/** The first moment the schedule names after afterMs (for `training policy show`), or undefined. */
export function nextScheduledMoment(c: CompiledCron, afterMs: number): number | undefined {
  const hours = sortedAsc(c.hours);
  const minutes = sortedAsc(c.minutes);
  const firstDay = Math.floor(afterMs / DAY_MS) * DAY_MS;
  for (let day = firstDay, n = 0; n < SEARCH_DAYS; day += DAY_MS, n++) {
    if (!dayMatches(c, day)) continue;
    for (const h of hours) {
      for (const m of minutes) {
        const at = day + h * 3_600_000 + m * MINUTE_MS;
        if (at > afterMs) return at;
      }
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Decisions

export type TriggerKind = 'drift' | 'schedule' | 'labelled';

/** What woke the watcher up. */
export type TriggerFact =
  | { kind: 'drift'; event: { id: number; atMs: number; model: string; version: number; cohort: string; status: DriftLevel } }
  | { kind: 'schedule'; momentMs: number }
  | { kind: 'labelled'; newSamples: number; sinceMs: number };

/** The facts around a trigger, gathered by the watcher through its ports. */
export interface DecisionFacts {
  trigger: TriggerFact;
  /** The model's job that is queued or running now, if any. */
  runningJob: { jobId: string } | undefined;
  /** When the model's last job was started by a trigger (a fired decision). */
  lastFiredAtMs: number | undefined;
  /** Labelled rows the job's dataset query would see now; counted only when the policy has a minimum. */
  datasetRows?: number | undefined;
}

/** What the dataset of a job started by a trigger holds: absolute times, the selector narrowed to the cohort that drifted. */
export interface DatasetQuery {
  model: string;
  /** 0: every version's samples. */
  version: number;
  /** 0: every stored sample. */
  sinceMs: number;
  selector: string;
  labelledOnly: boolean;
  replayParent: boolean;
}

/** What the trigger watcher asks the training service to start. */
export interface TrainingJobRequest {
  /** Derived from the trigger: a restart, or the same event seen twice, asks for the same job. */
  clientRequestId: string;
  model: string;
  /** The version to start from: the drifted version for a drift alert, 0 (the model's latest) otherwise. */
  baseVersion: number;
  trainer: string;
  hyperparameters: Record<string, unknown>;
  resources: { gpus: number; gpuMemoryBytes: number; maxDurationMs: number };
  gates: string[];
  dataset: DatasetQuery;
  /** Why the job exists, for its lineage: the trigger, and the cohort whose drift it answers ("" none or the fleet). */
  trigger: { kind: TriggerKind; key: string; cohort: string; driftEventId: number; policyVersion: number };
}

/** Why a trigger started nothing. */
export type NotFiredReason = 'disabled' | 'no_trigger' | 'not_enough_labels' | 'job_running' | 'cooldown' | 'dataset_too_small';
export type FiredReason = 'drift_alert' | 'schedule' | 'new_labels';

export type Decision =
  | { fire: true; reason: FiredReason; details: Record<string, unknown>; jobRequest: TrainingJobRequest }
  | { fire: false; reason: NotFiredReason; details: Record<string, unknown> };

/** A trigger's stable name within its model: a drift event's id, a schedule's moment, the start of a labelled-sample window. */
export function triggerKey(trigger: TriggerFact): string {
  switch (trigger.kind) {
    case 'drift':
      return `drift-${trigger.event.id}`;
    case 'schedule':
      return `schedule-${trigger.momentMs}`;
    case 'labelled':
      return `labelled-since-${trigger.sinceMs}`;
  }
}

/** The reason a fired decision of this kind of trigger records. */
export const FIRED_REASON: Record<TriggerKind, FiredReason> = { drift: 'drift_alert', schedule: 'schedule', labelled: 'new_labels' };

export const clientRequestIdFor = (model: string, trigger: TriggerFact): string => `retrain/${model}/${triggerKey(trigger)}`;

const LEVEL_RANK: Record<DriftLevel, number> = { no_data: 0, ok: 1, warn: 2, alert: 3 };

/** Whether a drift event's level reaches the policy's (events of other models never do). */
export function driftEventTriggers(policy: RetrainingPolicy, event: { status: DriftLevel }): boolean {
  return LEVEL_RANK[event.status] >= LEVEL_RANK[policy.onDrift?.minLevel ?? 'alert'];
}

/** The dataset a job started by this trigger would train on, now. */
export function datasetQueryFor(model: string, policy: RetrainingPolicy, trigger: TriggerFact, nowMs: number): DatasetQuery {
  const d = policy.job.dataset;
  const cohort = trigger.kind === 'drift' && d.cohortOnly ? trigger.event.cohort : '';
  const selector = cohort ? [d.selector, `${COHORT_LABEL}=${cohort}`].filter(Boolean).join(',') : d.selector;
  return {
    model,
    version: 0,
    sinceMs: d.since > 0 ? Math.max(0, nowMs - d.since) : 0,
    selector,
    labelledOnly: d.labelledOnly,
    replayParent: d.replayParent,
  };
}

/**
 * Whether this trigger starts a job, and if not why. The checks run in a fixed order, so the
 * reason recorded is the first that holds: disabled, a trigger the policy does not watch (or too
 * few new labels), a job already running for the model, the cooldown since the last job, a
 * dataset below the minimum. Pure: same inputs, same decision.
 */
export function decide(stored: Pick<StoredRetrainingPolicy, 'model' | 'version' | 'policy'>, facts: DecisionFacts, nowMs: number): Decision {
  const { model, policy } = stored;
  const trigger = facts.trigger;
  if (!policy.enabled) return { fire: false, reason: 'disabled', details: {} };

  let fired: FiredReason;
  const details: Record<string, unknown> = {};
  switch (trigger.kind) {
    case 'drift': {
      const on = policy.onDrift;
      const e = trigger.event;
      Object.assign(details, { driftEventId: e.id, version: e.version, cohort: e.cohort, status: e.status });
      if (!on) return { fire: false, reason: 'no_trigger', details: { ...details, why: 'the policy does not retrain on drift' } };
      if (e.model !== model) return { fire: false, reason: 'no_trigger', details: { ...details, why: `the event is of model ${e.model}` } };
      if (!driftEventTriggers(policy, e))
        return { fire: false, reason: 'no_trigger', details: { ...details, why: `status ${e.status} is below ${on.minLevel}` } };
      if (on.version !== 0 && e.version !== on.version) {
        return { fire: false, reason: 'no_trigger', details: { ...details, why: `the policy watches version ${on.version} only` } };
      }
      if (on.cohorts.length > 0 && !on.cohorts.includes(e.cohort)) {
        return { fire: false, reason: 'no_trigger', details: { ...details, why: 'the policy does not watch this cohort', cohorts: on.cohorts } };
      }
      fired = 'drift_alert';
      break;
    }
    case 'schedule':
      Object.assign(details, { momentMs: trigger.momentMs });
      if (!policy.onSchedule) return { fire: false, reason: 'no_trigger', details: { ...details, why: 'the policy has no schedule' } };
      Object.assign(details, { cron: policy.onSchedule.cron });
      fired = 'schedule';
      break;
    case 'labelled': {
      const on = policy.onLabelled;
      Object.assign(details, { newSamples: trigger.newSamples, sinceMs: trigger.sinceMs });
      if (!on) return { fire: false, reason: 'no_trigger', details: { ...details, why: 'the policy does not retrain on labelled samples' } };
      Object.assign(details, { needed: on.minNewSamples });
      if (trigger.newSamples < on.minNewSamples) return { fire: false, reason: 'not_enough_labels', details };
      fired = 'new_labels';
      break;
    }
  }

  if (facts.runningJob) return { fire: false, reason: 'job_running', details: { ...details, jobId: facts.runningJob.jobId } };
  if (facts.lastFiredAtMs !== undefined && nowMs - facts.lastFiredAtMs < policy.cooldown) {
    return { fire: false, reason: 'cooldown', details: { ...details, lastFiredAtMs: facts.lastFiredAtMs, untilMs: facts.lastFiredAtMs + policy.cooldown } };
  }
  if (policy.minDatasetRows > 0 && (facts.datasetRows ?? 0) < policy.minDatasetRows) {
    return { fire: false, reason: 'dataset_too_small', details: { ...details, rows: facts.datasetRows ?? 0, needed: policy.minDatasetRows } };
  }

  const key = triggerKey(trigger);
  const dataset = datasetQueryFor(model, policy, trigger, nowMs);
  const job = policy.job;
  return {
    fire: true,
    reason: fired,
    details: facts.datasetRows === undefined ? details : { ...details, datasetRows: facts.datasetRows },
    jobRequest: {
      clientRequestId: clientRequestIdFor(model, trigger),
      model,
      baseVersion: trigger.kind === 'drift' ? trigger.event.version : 0,
      trainer: job.trainer,
      hyperparameters: { ...(job.hyperparameters as Record<string, unknown>) },
      resources: { gpus: job.resources.gpus, gpuMemoryBytes: job.resources.gpuMemory, maxDurationMs: job.resources.maxDuration },
      gates: [...job.gates],
      dataset,
      trigger: {
        kind: trigger.kind,
        key,
        cohort: trigger.kind === 'drift' ? trigger.event.cohort : '',
        driftEventId: trigger.kind === 'drift' ? trigger.event.id : 0,
        policyVersion: stored.version,
      },
    },
  };
}
