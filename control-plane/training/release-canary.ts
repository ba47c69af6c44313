import type { CancelTimer, Clock } from '../../common/clock.js';
import { DriftlineError, asDriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { RolloutEngine } from '../rollout/engine.js';
import { DEFAULT_GATES, parseGate, targetGroup, wavesFrom, type RolloutPlanInput } from '../rollout/plan.js';
import type { Rollout } from '../rollout/state-machine.js';
import type { TrainingEngine } from './engine.js';
import { SETTLED_RELEASE_STATES, type TrainingJob, type TrainingRelease } from './job-state-machine.js';
import type { RetrainingPolicy, StoredRetrainingPolicy } from './retraining-policy.js';
import type { RetrainingPolicyStore } from './retraining-ports.js';
import { RETRAINING_ACTOR } from './trigger-starter.js';

/**
 * The release path after the evaluation gate: a version a triggered training job registered is
 * signed as a canary for the devices of the cohort whose drift triggered the job, then rolled out
 * to them in staged waves by the model's retraining policy (`rollout`), judged by the rollout
 * gates. The outcome (the rollout's id, succeeded or aborted and why) goes on the job: its
 * `release` and a `release-<state>` audit entry. Not on the version: a version never changes
 * once registered (devices may run it, its manifest is signed; an amendment mints the next
 * version), and the version's own metadata already names its job (`lineage.job_id`).
 *
 * A driver tick, not a subscription: every step is derived from what is stored (succeeded jobs,
 * their release, the rollout's state), so a control plane that restarts carries on where it
 * was, and a signature given offline (`driftline models sign`) has no event to hear: it is found
 * by asking again on the next tick. Each step is idempotent: the rollout is looked up by
 * (model, version, target) before one is started, and started with a client request id of the
 * job (`canary/<job id>`), so a crash between starting it and recording it starts no second one.
 */

/** Signs a canary release of a version for an audience, or says a human signature is awaited (control-plane/registry/release-signing.ts). */
export interface ReleaseSigning {
  /**
   * Idempotent: asked again for the same version it answers `signed` once a signature for the
   * audience exists (the automation key's, or an operator's given offline), `awaiting-signature` until then.
   * `audience` is the canary's devices as a label selector (`cohort=north`; "" every device).
   */
  signCanary(request: { model: string; version: number; audience: string }): Promise<{ state: 'signed' | 'awaiting-signature' }>;
}

/** What the composition root wires until release signing is: every canary waits for a signature, so nothing is rolled out by itself. */
export const awaitingSignatureOnly: ReleaseSigning = { signCanary: async () => ({ state: 'awaiting-signature' }) };

// ---------------------------------------------------------------------------------------------
// Pure decisions

/** The canary's devices: the triggering cohort's, within the policy's rollout target. */
export function canaryAudience(job: TrainingJob, rollout: RetrainingPolicy['rollout']): string {
  return [job.spec.trigger?.cohortSelector ?? '', rollout.target].filter(Boolean).join(',');
}

/** The staged rollout of the canary, as `rollout start` would be asked for it. */
export function canaryPlan(job: TrainingJob, rollout: RetrainingPolicy['rollout']): RolloutPlanInput {
  return {
    model: job.spec.model,
    version: job.resultVersion,
    target: canaryAudience(job, rollout),
    waves: wavesFrom(rollout.waves, rollout.bake, rollout.minDevices),
    gates: rollout.gates.length > 0 ? rollout.gates.map(parseGate) : [...DEFAULT_GATES],
    failureLimit: rollout.failureLimit,
  };
}

export type ReleaseStep =
  /** Not the loop's to release (an operator's job, no version registered), or already settled. */
  | { kind: 'none' }
  | { kind: 'skip'; reason: string }
  /** Ask for the canary's signature; once signed, start (or find) its rollout. */
  | { kind: 'sign'; plan: RolloutPlanInput }
  /** The rollout runs: look at its state. */
  | { kind: 'watch'; rolloutId: string };

/** Whether the loop still has something to do for this job: a triggered job's registered version, its release not settled. */
export function releasePending(job: TrainingJob): boolean {
  if (job.state !== 'succeeded' || job.resultVersion === 0 || !job.spec.trigger) return false;
  return !job.release || !SETTLED_RELEASE_STATES.includes(job.release.state);
}

/** What the release of this job needs next, from the job and the model's current policy alone. */
export function releaseStep(job: TrainingJob, stored: Pick<StoredRetrainingPolicy, 'policy'> | undefined): ReleaseStep {
  if (!releasePending(job)) return { kind: 'none' };
  const release = job.release;
  if (release?.state === 'rolling-out') return { kind: 'watch', rolloutId: release.rolloutId };
  if (!stored) return { kind: 'skip', reason: 'the model has no retraining policy any more' };
  if (!stored.policy.rollout.enabled) return { kind: 'skip', reason: 'the retraining policy does not roll its versions out (rollout.enabled false)' };
  return { kind: 'sign', plan: canaryPlan(job, stored.policy.rollout) };
}

/** The release a finished rollout settles into; undefined while it is still active. */
export function releaseOfRollout(rollout: Pick<Rollout, 'state' | 'reason'>): Pick<TrainingRelease, 'state' | 'reason'> | undefined {
  if (rollout.state === 'succeeded') return { state: 'succeeded', reason: '' };
  if (rollout.state === 'aborted') return { state: 'aborted', reason: rollout.reason || 'aborted' };
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// The driver

export type ReleaseCanaryState = 'created' | 'running' | 'stopping' | 'stopped';

export interface ReleaseCanaryOptions {
  training: Pick<TrainingEngine, 'list' | 'get' | 'recordRelease'>;
  rollouts: Pick<RolloutEngine, 'start' | 'get' | 'list'>;
  policies: Pick<RetrainingPolicyStore, 'current'>;
  signing: ReleaseSigning;
  clock: Clock;
  logger: Logger;
  tickIntervalMs: number;
  /** The newest succeeded jobs looked at per tick (settled ones cost a comparison). */
  scanLimit?: number;
}

const DEFAULT_SCAN_LIMIT = 500;
const PAGE = 100;

export class ReleaseCanary {
  private stateValue: ReleaseCanaryState = 'created';
  private work: Promise<unknown> = Promise.resolve();
  private cancelTimer: CancelTimer | undefined;

  private constructor(private readonly options: ReleaseCanaryOptions) {}

  static create(options: ReleaseCanaryOptions): ReleaseCanary {
    return new ReleaseCanary(options);
  }

  get state(): ReleaseCanaryState {
    return this.stateValue;
  }

  /** Ticks every interval on the clock until shutdown(); the first tick runs now (a restart catches up). */
  run(): void {
    if (this.stateValue !== 'created') return;
    this.stateValue = 'running';
    this.cancelTimer = this.options.clock.setInterval(() => void this.tick().catch(() => undefined), this.options.tickIntervalMs);
    void this.tick().catch(() => undefined);
  }

  async shutdown(): Promise<void> {
    if (this.stateValue === 'stopped') return;
    this.stateValue = 'stopping';
    this.cancelTimer?.();
    await this.work.catch(() => undefined);
    this.stateValue = 'stopped';
  }

  /** One pass over the newest succeeded jobs: moves each unsettled release one step. Resolves to the jobs it moved. */
  tick(): Promise<TrainingJob[]> {
    const run = this.work.then(() => this.pass());
    this.work = run.catch((err: unknown) => this.options.logger.error({ err }, 'release canary tick failed'));
    return run;
  }

  private async pass(): Promise<TrainingJob[]> {
    const { training, logger } = this.options;
    const limit = this.options.scanLimit ?? DEFAULT_SCAN_LIMIT;
    const moved: TrainingJob[] = [];
    let pageToken = '';
    for (let seen = 0; seen < limit;) {
      const page = await training.list({ state: 'succeeded', pageSize: Math.min(PAGE, limit - seen), pageToken });
      for (const job of page.jobs) {
        try {
          const next = await this.advance(job);
          if (next) moved.push(next);
        } catch (err) {
          logger.error({ err, job: job.id }, 'release canary step failed');
        }
      }
      seen += page.jobs.length;
      if (!page.nextPageToken || page.jobs.length === 0) break;
      pageToken = page.nextPageToken;
    }
    return moved;
  }

  private async advance(job: TrainingJob): Promise<TrainingJob | undefined> {
    if (!releasePending(job)) return undefined;
    const step = releaseStep(job, await this.options.policies.current(job.spec.model));
    switch (step.kind) {
      case 'none':
        return undefined;
      case 'skip':
        return this.record(job, { state: 'skipped', audience: '', rolloutId: '', reason: step.reason, errorCode: '' });
      case 'sign':
        return this.signThenStart(job, step.plan);
      case 'watch':
        return this.watch(job, step.rolloutId);
    }
  }

  private async signThenStart(job: TrainingJob, plan: RolloutPlanInput): Promise<TrainingJob | undefined> {
    const { signing, rollouts, logger } = this.options;
    const audience = plan.target ?? '';
    const { model, version } = plan;
    const signature = await signing.signCanary({ model, version, audience });
    if (signature.state !== 'signed') {
      if (job.release?.state === 'awaiting-signature') return undefined;
      logger.info({ model, version, job: job.id, audience }, 'retrained version awaits its canary signature');
      return this.record(job, {
        state: 'awaiting-signature',
        audience,
        rolloutId: '',
        reason: `sign it: driftline models sign ${model} ${version}`,
        errorCode: '',
      });
    }
    let rollout = await this.existingRollout(plan);
    if (!rollout) {
      try {
        rollout = await rollouts.start(plan, { actor: RETRAINING_ACTOR, clientRequestId: `canary/${job.id}` });
      } catch (err) {
        const e = asDriftlineError(err);
        // Another rollout of the model to these devices is running: this one starts once it has ended.
        if (e.code === 'ROLLOUT_ACTIVE_EXISTS') {
          logger.warn({ model, version, job: job.id, code: e.code }, 'canary rollout waits for the active rollout of the same devices');
          return undefined;
        }
        logger.warn({ model, version, job: job.id, code: e.code }, 'canary rollout could not start');
        return this.record(job, { state: 'failed', audience, rolloutId: '', reason: e.message, errorCode: e.code });
      }
    }
    logger.info({ model, version, job: job.id, rollout: rollout.id, audience }, 'canary rollout of the retrained version started');
    return this.record(job, { state: 'rolling-out', audience, rolloutId: rollout.id, reason: '', errorCode: '' });
  }

  private async watch(job: TrainingJob, rolloutId: string): Promise<TrainingJob | undefined> {
    const rollout = await this.options.rollouts.get(rolloutId);
    const settled = releaseOfRollout(rollout);
    if (!settled) return undefined;
    const version = job.resultVersion;
    const level = settled.state === 'aborted' ? 'warn' : 'info';
    this.options.logger[level](
      { model: job.spec.model, version, job: job.id, rollout: rolloutId, reason: settled.reason || undefined },
      `canary rollout ${settled.state}`,
    );
    return this.record(job, { ...settled, audience: job.release?.audience ?? rollout.plan.target, rolloutId, errorCode: '' });
  }

  /** A rollout of this version to this target started before (a crash before it was recorded). */
  private async existingRollout(plan: RolloutPlanInput): Promise<Rollout | undefined> {
    const group = targetGroup(plan.target ?? '');
    return (await this.options.rollouts.list({ model: plan.model, limit: 1000 })).find(
      (r) => r.plan.version === plan.version && targetGroup(r.plan.target) === group,
    );
  }

  private record(job: TrainingJob, release: Omit<TrainingRelease, 'updatedAtMs' | 'version'>): Promise<TrainingJob> {
    if (job.resultVersion === 0) throw new DriftlineError('TRAINING_STATE_INVALID', `training job ${job.id} registered no version`);
    return this.options.training.recordRelease(job.id, { ...release, version: job.resultVersion });
  }
}
