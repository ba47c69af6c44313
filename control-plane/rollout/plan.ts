import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import { parseSelector } from '../../common/ids.js';

/**
 * What a rollout is asked to do: waves of growing cohorts, each baked for a while and then
 * judged by gates that compare the new version's cohort with the devices still on the old one.
 */

export type RolloutState = 'pending' | 'progressing' | 'paused' | 'succeeded' | 'aborted';
export const ACTIVE_STATES: readonly RolloutState[] = ['pending', 'progressing', 'paused'];
export const isActive = (state: RolloutState): boolean => ACTIVE_STATES.includes(state);

/**
 * Gate metrics. Rates are fractions in [0, 1]; deltas and ratios compare the new version's
 * cohort (canary) with the devices still on the old version (baseline).
 */
export const GATE_METRICS = [
  'install-failure-rate', // failed installs / decided installs in the canary
  'error-rate', // canary inference error rate
  'error-rate-delta', // canary error rate - baseline error rate
  'p95-latency-ratio', // canary p95 / baseline p95
  'p95-latency-ms', // canary p95 in milliseconds
  'accuracy-delta', // canary accuracy - baseline accuracy (where labels exist)
  'drift', // 0 when the canary shows no drift, 1 on a warning, 2 on drift
] as const;
export type GateMetric = (typeof GATE_METRICS)[number];

export interface GateSpec {
  metric: GateMetric;
  op: '<=' | '>=';
  threshold: number;
}

export interface WavePlan {
  /** Percent of the compatible targeted devices, (0, 100]. */
  percent: number;
  minDevices: number;
  bakeMs: number;
}

export interface RolloutPlan {
  model: string;
  version: number;
  /** Label selector such as "profile=jetson-*,site=plant-3"; empty targets every device. */
  target: string;
  waves: WavePlan[];
  gates: GateSpec[];
  /** Failed gate evaluations tolerated per wave before aborting (Argo Rollouts' failureLimit). */
  failureLimit: number;
  /** Consecutive evaluations without metrics (the source failed) tolerated before aborting. */
  consecutiveErrorLimit: number;
  /** Fewer inferences than this in either cohort makes a latency or error gate inconclusive. */
  minInferences: number;
  /** Time between gate evaluations after the bake when one failed within the failure limit. */
  intervalMs: number;
}

export const DEFAULT_GATES: readonly GateSpec[] = [
  { metric: 'install-failure-rate', op: '<=', threshold: 0.2 },
  { metric: 'error-rate-delta', op: '<=', threshold: 0.05 },
  { metric: 'p95-latency-ratio', op: '<=', threshold: 1.5 },
];

const GATE_TEXT = /^\s*([a-z0-9-]+)\s*(<=|>=)\s*(-?\d+(?:\.\d+)?)\s*$/;

/** Parses "p95-latency-ratio<=1.5"; a bare "drift" means drift<=1 (warnings pass, drift fails). */
export function parseGate(text: string): GateSpec {
  if (text.trim() === 'drift') return { metric: 'drift', op: '<=', threshold: 1 };
  const m = GATE_TEXT.exec(text);
  if (!m || !(GATE_METRICS as readonly string[]).includes(m[1]!)) {
    throw new DriftlineError(
      'REQUEST_INVALID',
      `gate ${JSON.stringify(text)} must look like <metric><=|>=<number> with metric one of ${GATE_METRICS.join(', ')}`,
      {
        details: { gate: text },
      },
    );
  }
  return { metric: m[1] as GateMetric, op: m[2] as '<=' | '>=', threshold: Number(m[3]) };
}

export const formatGate = (gate: GateSpec): string => `${gate.metric}${gate.op}${gate.threshold}`;

export const rolloutPlanSchema = z
  .object({
    model: z.string().min(1),
    version: z.number().int().positive(),
    target: z.string().max(512).default(''),
    waves: z
      .array(
        z.object({
          percent: z.number().gt(0).max(100),
          minDevices: z.number().int().min(1).max(100_000),
          bakeMs: z
            .number()
            .int()
            .min(0)
            .max(30 * 86_400_000),
        }),
      )
      .min(1)
      .max(20)
      .refine((waves) => waves.every((w, i) => i === 0 || w.percent > waves[i - 1]!.percent), 'wave percents must increase')
      .refine((waves) => waves.at(-1)!.percent === 100, 'the last wave must reach 100 percent'),
    gates: z.array(z.object({ metric: z.enum(GATE_METRICS), op: z.enum(['<=', '>=']), threshold: z.number().finite() })).max(20),
    failureLimit: z.number().int().min(0).max(100).default(0),
    consecutiveErrorLimit: z.number().int().min(0).max(100).default(4),
    minInferences: z.number().int().min(1).max(1_000_000).default(50),
    intervalMs: z.number().int().min(1000).max(86_400_000).default(60_000),
  })
  .strict();

export type RolloutPlanInput = z.input<typeof rolloutPlanSchema>;

export function parsePlan(input: RolloutPlanInput): RolloutPlan {
  const result = rolloutPlanSchema.safeParse(input);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join('.') || '(plan)'}: ${i.message}`);
    throw new DriftlineError('REQUEST_INVALID', `invalid rollout plan: ${problems.join('; ')}`, { details: { problems } });
  }
  parseSelector(result.data.target);
  return result.data;
}

/** Waves from "1,10,50,100" with one bake and minimum for all of them. */
export function wavesFrom(percents: readonly number[], bakeMs: number, minDevices: number): WavePlan[] {
  return percents.map((percent) => ({ percent, bakeMs, minDevices }));
}

/** The target group a rollout owns: the selector with its terms sorted, so "a=1,b=2" and "b=2, a=1" are one group. */
export function targetGroup(target: string): string {
  return parseSelector(target)
    .map(({ key, value }) => `${key}=${value}`)
    .sort()
    .join(',');
}
