import { randomBytes } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { DriftlineError, asDriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import { parsePlan, targetGroup, type RolloutPlanInput } from './plan.js';
import type { AuditRecord, CohortMetrics, DriftSource, FleetView, ModelCatalog, ReleasePublisher, RolloutRepository } from './ports.js';
import {
  command as applyCommand,
  createRollout,
  dueForEvaluation,
  tick as tickRollout,
  touchedDevices,
  untouchedDevices,
  type Effect,
  type Measurement,
  type OperatorCommand,
  type Rollout,
  type Transition,
} from './state-machine.js';

export interface RolloutEngineOptions {
  repository: RolloutRepository;
  fleet: FleetView;
  metrics: CohortMetrics;
  publisher: ReleasePublisher;
  catalog: ModelCatalog;
  drift?: DriftSource | undefined;
  clock: Clock;
  logger: Logger;
  newId?: () => string;
}

/** Who asked: the operator token id and the caller's idempotency key (empty: none). */
export interface Actor {
  actor: string;
  clientRequestId: string;
}

export const SYSTEM_ACTOR: Actor = { actor: 'system', clientRequestId: '' };

export type RolloutListener = (rollout: Rollout) => void;

/**
 * Runs rollouts: turns operator commands and driver ticks into state-machine transitions,
 * persists each transition with its audit entries in one transaction, then carries out its
 * effects through the release publisher. Everything is serialized, so a tick and a command
 * never interleave.
 */
export class RolloutEngine {
  private queue: Promise<unknown> = Promise.resolve();
  private readonly listeners = new Set<RolloutListener>();
  private readonly newId: () => string;

  constructor(private readonly options: RolloutEngineOptions) {
    this.newId = options.newId ?? (() => `ro_${randomBytes(6).toString('hex')}`);
  }

  start(input: RolloutPlanInput, by: Actor, options: { requireMinDevices?: boolean } = {}): Promise<Rollout> {
    return this.serialized(async () => {
      const plan = parsePlan(input);
      const fingerprint = JSON.stringify(plan);
      const replay = await this.replayed(by, 'start', fingerprint);
      if (replay) return replay;
      const { repository, fleet, catalog, clock } = this.options;
      const group = targetGroup(plan.target);
      const active = await repository.findActive(plan.model, group);
      if (active) {
        throw new DriftlineError('ROLLOUT_ACTIVE_EXISTS', `rollout ${active.id} of ${plan.model} to ${JSON.stringify(group)} is still ${active.state}`, {
          details: { id: active.id, state: active.state },
        });
      }
      const constraints = await catalog.constraints(plan.model, plan.version);
      await catalog.assertDeployable?.(plan.model, plan.version);
      const devices = await fleet.devices(plan.target, plan.model);
      const created = createRollout({
        id: this.newId(),
        plan,
        devices,
        constraints,
        nowMs: clock.now(),
        requireMinDevices: options.requireMinDevices ?? false,
      });
      // The first wave starts right away; the driver only has to watch the bake.
      const started = tickRollout(created.rollout, clock.now());
      const transition: Transition = { rollout: started.rollout, effects: started.effects, audit: [...created.audit, ...started.audit] };
      await this.commit(transition, by, { insert: true, request: { action: 'start', fingerprint } });
      return transition.rollout;
    });
  }

  command(id: string, cmd: OperatorCommand, by: Actor, reason = ''): Promise<Rollout> {
    return this.serialized(async () => {
      const fingerprint = JSON.stringify({ id, cmd });
      const replay = await this.replayed(by, cmd, fingerprint);
      if (replay) return replay;
      const transition = applyCommand(await this.require(id), cmd, this.options.clock.now(), reason);
      await this.commit(transition, by, { request: { action: cmd, fingerprint } });
      return transition.rollout;
    });
  }

  get(id: string): Promise<Rollout> {
    return this.require(id);
  }

  list(options: { activeOnly?: boolean; model?: string; limit?: number } = {}): Promise<Rollout[]> {
    return this.options.repository.list(options);
  }

  async audit(id: string): Promise<AuditRecord[]> {
    await this.require(id);
    return this.options.repository.audit(id);
  }

  /** Devices per active version of the rollout's model among its targets, now (0: none). */
  async versionCounts(r: Rollout): Promise<Record<number, number>> {
    const counts: Record<number, number> = {};
    for (const v of Object.values(await this.options.fleet.activeVersions(r.plan.model, r.targets))) counts[v] = (counts[v] ?? 0) + 1;
    return counts;
  }

  /** Called with every rollout after each change (for Watch). Returns the unsubscribe function. */
  subscribe(listener: RolloutListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** One driver step: moves every active rollout along, measuring the ones whose gates are due. */
  tick(): Promise<void> {
    return this.serialized(async () => {
      for (const rollout of await this.options.repository.list({ activeOnly: true })) {
        try {
          const now = this.options.clock.now();
          const measurement = dueForEvaluation(rollout, now) ? await this.measure(rollout) : undefined;
          const transition = tickRollout(rollout, now, measurement);
          if (transition.rollout !== rollout) await this.commit(transition, SYSTEM_ACTOR, {});
        } catch (err) {
          this.options.logger.error({ err, rollout: rollout.id }, 'rollout tick failed');
        }
      }
    });
  }

  /** What the gates need, from telemetry and reported state. A failing source becomes a measurement error, never a pass. */
  private async measure(r: Rollout): Promise<Measurement> {
    const { fleet, metrics, drift } = this.options;
    try {
      const { model, version } = r.plan;
      const canaryIds = touchedDevices(r);
      const sinceMs = r.waveStartedAtMs;
      return {
        ok: true,
        observation: {
          install: await fleet.installStatus(
            model,
            version,
            canaryIds.filter((id) => r.fromVersions[id] !== version),
          ),
          canary: await metrics.cohort({ model, version, deviceIds: canaryIds, sinceMs }),
          baseline: await metrics.cohort({ model, excludeVersion: version, deviceIds: untouchedDevices(r), sinceMs }),
          drift: await drift?.status(model, version, sinceMs),
        },
      };
    } catch (err) {
      const error = asDriftlineError(err);
      return { ok: false, error: `${error.code}: ${error.message}` };
    }
  }

  private async commit(transition: Transition, by: Actor, how: { insert?: boolean; request?: { action: string; fingerprint: string } }): Promise<void> {
    const { repository, clock, logger } = this.options;
    const { rollout } = transition;
    const atMs = clock.now();
    await repository.transaction(async (tx) => {
      if (how.insert) await tx.insert(rollout);
      else await tx.update(rollout);
      for (const entry of transition.audit)
        await tx.appendAudit({ ...entry, rolloutId: rollout.id, atMs, actor: by.actor, clientRequestId: by.clientRequestId });
      if (how.request && by.clientRequestId) await tx.saveRequest({ clientRequestId: by.clientRequestId, rolloutId: rollout.id, ...how.request }, atMs);
    });
    for (const entry of transition.audit) {
      logger.info(
        { rollout: rollout.id, action: entry.action, state: entry.toState, wave: entry.wave + 1, reason: entry.reason || undefined, by: by.actor },
        'rollout',
      );
    }
    for (const effect of transition.effects) await this.apply(rollout, effect);
    for (const listener of this.listeners) {
      try {
        listener(rollout);
      } catch (err) {
        logger.warn({ err }, 'rollout listener failed');
      }
    }
  }

  /**
   * The desired state is stored before publishing, so a device that misses the publish still
   * converges when it next reports; a publisher error is logged and the rollout carries on.
   */
  private async apply(r: Rollout, effect: Effect): Promise<void> {
    const { publisher, logger } = this.options;
    try {
      if (effect.kind === 'deploy') await publisher.deploy(r.plan.model, r.plan.version, effect.deviceIds);
      else await publisher.rollback(r.plan.model, effect.devices, effect.reason, r.id);
    } catch (err) {
      logger.error({ err, rollout: r.id, effect: effect.kind }, 'rollout effect not fully applied');
    }
  }

  /** A replayed command (same client request id) answers with the rollout as it is now and changes nothing. */
  private async replayed(by: Actor, action: string, fingerprint: string): Promise<Rollout | undefined> {
    if (!by.clientRequestId) return undefined;
    const stored = await this.options.repository.findRequest(by.clientRequestId);
    if (!stored) return undefined;
    if (stored.action !== action || stored.fingerprint !== fingerprint) {
      throw new DriftlineError('REQUEST_ID_REUSED', `client request id ${by.clientRequestId} was already used for another request`, {
        details: { clientRequestId: by.clientRequestId, action: stored.action },
      });
    }
    return this.require(stored.rolloutId);
  }

  private async require(id: string): Promise<Rollout> {
    const rollout = await this.options.repository.get(id);
    if (!rollout) throw new DriftlineError('ROLLOUT_NOT_FOUND', `rollout ${id} does not exist`, { details: { id } });
    return rollout;
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }
}
