import type { CancelTimer, Clock } from '../../common/clock.js';
import { asDriftlineError, DriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import {
  clientRequestIdFor,
  compileCron,
  datasetQueryFor,
  decide,
  FIRED_REASON,
  driftEventTriggers,
  latestScheduledMoment,
  triggerKey,
  type CompiledCron,
  type Decision,
  type DecisionFacts,
  type StoredRetrainingPolicy,
  type TrainingJobRequest,
  type TriggerFact,
} from './retraining-policy.js';
import type {
  DriftEventSource,
  LabelledSampleCounter,
  NewTriggerDecision,
  RetrainingPolicyStore,
  TrainingJobStarter,
  TriggerDecisionRecord,
} from './retraining-ports.js';

export type { DriftEventSource, LabelledSampleCounter, TrainingJobStarter } from './retraining-ports.js';

export type TriggerWatcherState = 'created' | 'running' | 'stopping' | 'stopped';

export interface TriggerWatcherOptions {
  policies: RetrainingPolicyStore;
  driftEvents: DriftEventSource;
  labelledSamples: LabelledSampleCounter;
  jobs: TrainingJobStarter;
  clock: Clock;
  logger: Logger;
  /** How often schedules and labelled-sample counts are checked (drift events are heard as they come). */
  tickIntervalMs: number;
  /** On the very first start (no cursor yet), drift events this far back are considered. */
  driftCatchUpMs: number;
  /** A schedule's moment missed while the control plane was down still fires within this. */
  scheduleCatchUpMs: number;
  /** Decisions older than this are deleted on each tick. */
  decisionRetentionMs: number;
}

/** The drift event cursor's name in the policy store. */
export const DRIFT_CURSOR = 'drift_event_id';
const DRIFT_PAGE = 500;

/** What the composition root wires when no training service is there yet: every start is refused with a stable code, and recorded so. */
export const unavailableTrainingJobs: TrainingJobStarter = {
  start: () =>
    Promise.reject(new DriftlineError('TRAINING_SERVICE_UNAVAILABLE', 'training service unavailable: no training engine is wired into this control plane')),
  activeJob: () => Promise.resolve(undefined),
};

/** Likewise for labelled-sample counts, until the datasets domain provides them: a trigger that needs one records facts_unavailable. */
export const unavailableLabelledSamples: LabelledSampleCounter = {
  count: () =>
    Promise.reject(new DriftlineError('TRAINING_SERVICE_UNAVAILABLE', 'labelled sample counts unavailable: no dataset store is wired into this control plane')),
};

/**
 * Turns what happens to a model into retraining decisions by its policy: drift alerts as the
 * drift watcher records them, schedule moments and labelled-sample counts on each tick. For
 * each trigger it gathers the facts (a job running, the last job, the dataset's rows) through
 * its ports, asks the pure decide(), starts a job when it fires, and records every decision,
 * fired or not, with its reason.
 *
 * One trigger is decided once: a drift event's or a schedule moment's decision is looked up
 * before deciding again (a restart, an event heard live and read back), and a job is requested
 * with a client request id derived from the trigger, so a crash between starting a job and
 * recording it asks the training service for the same job again instead of a second one.
 * A labelled-sample window's decision is recorded when its reason changes, not on every tick.
 *
 * All work runs one piece at a time (a tick, a drift event heard live), so each decision sees the
 * ones before it: several alerts within the cooldown start one job. Tests call tick() or
 * advance a ManualClock after run(), and await idle().
 */
export class TriggerWatcher {
  private stateValue: TriggerWatcherState = 'created';
  private work: Promise<unknown> = Promise.resolve();
  private cancelTimer: CancelTimer | undefined;
  private unsubscribe: (() => void) | undefined;
  private readonly crons = new Map<string, CompiledCron>();
  /** A drain of drift events is queued and has not started: the events heard meanwhile are read by it. */
  private drainQueued = false;

  private constructor(private readonly options: TriggerWatcherOptions) {}

  static create(options: TriggerWatcherOptions): TriggerWatcher {
    return new TriggerWatcher(options);
  }

  get state(): TriggerWatcherState {
    return this.stateValue;
  }

  /** Hears drift events, and ticks every interval on the clock, until shutdown(). Catches up on what it missed first. */
  run(): void {
    if (this.stateValue !== 'created') return;
    this.stateValue = 'running';
    this.unsubscribe = this.options.driftEvents.subscribe(() => this.heard());
    this.cancelTimer = this.options.clock.setInterval(() => void this.tick().catch(() => undefined), this.options.tickIntervalMs);
    void this.tick().catch(() => undefined);
  }

  /** Drift events not yet considered, schedules and labelled samples, now; resolves to the decisions recorded. */
  tick(): Promise<TriggerDecisionRecord[]> {
    return this.enqueue(async () => {
      const recorded = await this.drainDriftEvents();
      const now = this.options.clock.now();
      for (const stored of await this.options.policies.all()) {
        if (!stored.policy.enabled && !stored.policy.onSchedule) continue;
        try {
          recorded.push(...(await this.checkSchedule(stored, now)), ...(await this.checkLabelled(stored, now)));
        } catch (err) {
          this.options.logger.error({ err, model: stored.model }, 'retraining trigger check failed');
        }
      }
      await this.options.policies.pruneDecisionsOlderThan(now - this.options.decisionRetentionMs);
      return recorded;
    });
  }

  /** Resolves once the work queued so far is done. */
  idle(): Promise<void> {
    return this.work.then(() => undefined);
  }

  /** Stops ticking and listening, then waits for the decision in flight. */
  async shutdown(): Promise<void> {
    if (this.stateValue === 'stopped') return;
    this.stateValue = 'stopping';
    this.cancelTimer?.();
    this.unsubscribe?.();
    await this.idle();
    this.stateValue = 'stopped';
  }

  /** A new drift event: it is read back from the store after the cursor, one path for events heard live and events missed. */
  private heard(): void {
    if (this.stateValue !== 'running' || this.drainQueued) return;
    this.drainQueued = true;
    void this.enqueue(() => {
      this.drainQueued = false;
      return this.drainDriftEvents();
    }).catch(() => undefined);
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.work.then(fn);
    this.work = run.catch((err: unknown) => this.options.logger.error({ err }, 'retraining trigger watcher failed'));
    return run;
  }

  private async drainDriftEvents(): Promise<TriggerDecisionRecord[]> {
    const { policies, driftEvents, clock } = this.options;
    const recorded: TriggerDecisionRecord[] = [];
    let cursor = await policies.cursor(DRIFT_CURSOR);
    // The first start considers recent events only: an alert of months ago is not a reason to retrain today.
    const sinceMs = cursor === undefined ? clock.now() - this.options.driftCatchUpMs : 0;
    let byModel: Map<string, StoredRetrainingPolicy> | undefined;
    for (;;) {
      const events = await driftEvents.list({ afterId: cursor ?? 0, sinceMs }, DRIFT_PAGE);
      if (events.length === 0) break;
      byModel ??= new Map((await policies.all()).map((p) => [p.model, p]));
      for (const event of events) {
        const stored = byModel.get(event.model);
        // Only a change to the policy's level (alert by default) is a trigger; recoveries and other models are not.
        if (stored && driftEventTriggers(stored.policy, event)) {
          const decision = await this.consider(stored, { kind: 'drift', event }, { once: true });
          if (decision) recorded.push(decision);
        }
        cursor = event.id;
      }
      await policies.setCursor(DRIFT_CURSOR, cursor!);
      if (events.length < DRIFT_PAGE) break;
    }
    return recorded;
  }

  private async checkSchedule(stored: StoredRetrainingPolicy, now: number): Promise<TriggerDecisionRecord[]> {
    const schedule = stored.policy.onSchedule;
    if (!schedule) return [];
    let compiled = this.crons.get(schedule.cron);
    if (!compiled) {
      compiled = compileCron(schedule.cron);
      this.crons.set(schedule.cron, compiled);
    }
    // A moment before this policy version was set belongs to the policy that was in force then.
    const moment = latestScheduledMoment(compiled, Math.max(stored.updatedAtMs, now - this.options.scheduleCatchUpMs), now);
    if (moment === undefined) return [];
    const decision = await this.consider(stored, { kind: 'schedule', momentMs: moment }, { once: true });
    return decision ? [decision] : [];
  }

  private async checkLabelled(stored: StoredRetrainingPolicy, now: number): Promise<TriggerDecisionRecord[]> {
    if (!stored.policy.onLabelled || !stored.policy.enabled) return [];
    const sinceMs = (await this.options.policies.lastFired(stored.model))?.atMs ?? stored.createdAtMs;
    let newSamples: number;
    try {
      newSamples = await this.options.labelledSamples.count(stored.model, sinceMs);
    } catch (err) {
      const trigger: TriggerFact = { kind: 'labelled', newSamples: 0, sinceMs };
      const decision = await this.recordUnlessRepeated(stored, trigger, now, factsUnavailable(err));
      return decision ? [decision] : [];
    }
    const decision = await this.consider(stored, { kind: 'labelled', newSamples, sinceMs }, { once: false });
    return decision ? [decision] : [];
  }

  /**
   * Decides one trigger and records the decision. `once`: a trigger already decided is skipped
   * (drift events, schedule moments); otherwise (a labelled-sample window, looked at every tick)
   * a decision is recorded only when it differs from the last one recorded for the same window.
   */
  private async consider(stored: StoredRetrainingPolicy, trigger: TriggerFact, { once }: { once: boolean }): Promise<TriggerDecisionRecord | undefined> {
    const { policies, clock } = this.options;
    const key = triggerKey(trigger);
    if (once && (await policies.lastDecisionFor(stored.model, key))) return undefined;
    const now = clock.now();
    let decision: Decision;
    try {
      const facts = await this.factsFor(stored, trigger, now);
      // The job running is the one this very trigger asked for, before a crash kept its decision from being recorded.
      if (facts.runningJob && facts.runningJob.clientRequestId === clientRequestIdFor(stored.model, trigger)) {
        const { jobId } = facts.runningJob;
        return policies.recordDecision({
          ...this.base(stored, trigger, now),
          fired: true,
          reason: FIRED_REASON[trigger.kind],
          details: { recovered: true },
          jobId,
        });
      }
      decision = decide(stored, facts, now);
    } catch (err) {
      return this.recordUnlessRepeated(stored, trigger, now, factsUnavailable(err), once);
    }
    if (!decision.fire) return this.recordUnlessRepeated(stored, trigger, now, decision, once);
    return this.fire(stored, trigger, now, decision.reason, decision.details, decision.jobRequest);
  }

  private async factsFor(
    stored: StoredRetrainingPolicy,
    trigger: TriggerFact,
    now: number,
  ): Promise<DecisionFacts & { runningJob: { jobId: string; clientRequestId: string } | undefined }> {
    const { policies, jobs, labelledSamples } = this.options;
    // A disabled policy decides without facts: nothing is asked of other domains for it.
    if (!stored.policy.enabled) return { trigger, runningJob: undefined, lastFiredAtMs: undefined };
    const [runningJob, lastFired] = await Promise.all([jobs.activeJob(stored.model), policies.lastFired(stored.model)]);
    const facts: DecisionFacts & { runningJob: typeof runningJob } = { trigger, runningJob, lastFiredAtMs: lastFired?.atMs };
    if (stored.policy.minDatasetRows > 0 && !runningJob) {
      const query = datasetQueryFor(stored.model, stored.policy, trigger, now);
      facts.datasetRows = await labelledSamples.count(stored.model, query.sinceMs, query.selector);
    }
    return facts;
  }

  private async fire(
    stored: StoredRetrainingPolicy,
    trigger: TriggerFact,
    now: number,
    reason: Decision['reason'],
    details: Record<string, unknown>,
    request: TrainingJobRequest,
  ): Promise<TriggerDecisionRecord | undefined> {
    let jobId: string;
    try {
      ({ jobId } = await this.options.jobs.start(request));
    } catch (err) {
      const e = asDriftlineError(err);
      this.options.logger.warn({ model: stored.model, trigger: triggerKey(trigger), code: e.code }, 'retraining trigger could not start a training job');
      return this.recordUnlessRepeated(stored, trigger, now, { reason: 'start_failed', details: { ...details, code: e.code, message: e.message } }, false);
    }
    this.options.logger.info({ model: stored.model, trigger: triggerKey(trigger), jobId, reason }, 'retraining trigger started a training job');
    return this.options.policies.recordDecision({ ...this.base(stored, trigger, now), fired: true, reason, details, jobId });
  }

  private async recordUnlessRepeated(
    stored: StoredRetrainingPolicy,
    trigger: TriggerFact,
    now: number,
    outcome: { reason: NewTriggerDecision['reason']; details: Record<string, unknown> },
    once = false,
  ): Promise<TriggerDecisionRecord | undefined> {
    if (!once) {
      const last = await this.options.policies.lastDecisionFor(stored.model, triggerKey(trigger));
      if (last && !last.fired && last.reason === outcome.reason) return undefined;
    }
    return this.options.policies.recordDecision({
      ...this.base(stored, trigger, now),
      fired: false,
      reason: outcome.reason,
      details: outcome.details,
      jobId: '',
    });
  }

  private base(stored: StoredRetrainingPolicy, trigger: TriggerFact, now: number): Omit<NewTriggerDecision, 'fired' | 'reason' | 'details' | 'jobId'> {
    return {
      model: stored.model,
      atMs: now,
      trigger: trigger.kind,
      triggerKey: triggerKey(trigger),
      clientRequestId: clientRequestIdFor(stored.model, trigger),
      policyVersion: stored.version,
    };
  }
}

function factsUnavailable(err: unknown): { reason: 'facts_unavailable'; details: Record<string, unknown> } {
  const e = asDriftlineError(err);
  return { reason: 'facts_unavailable', details: { code: e.code, message: e.message } };
}
