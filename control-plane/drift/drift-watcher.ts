import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { DriftStatus } from '../../common/proto/driftline/v1/drift.js';
import type { DriftEventFilter, DriftEventRecord, DriftEventStore, DriftLevel, DriftStatusKey, NewDriftEvent } from './ports.js';

export type { DriftEventFilter, DriftEventRecord, DriftEventStore, DriftLevel, DriftStatusKey, NewDriftEvent } from './ports.js';

/** What the watcher evaluates: the model versions with recent drift data, and each one's status per cohort. */
export interface DriftStatusSource {
  /** Model versions with drift sketches since `sinceMs`. */
  versions(sinceMs: number): Promise<Array<{ model: string; version: number }>>;
  /** The status of one version over the configured drift window: the fleet (cohort "") and each cohort. */
  status(model: string, version: number): Promise<DriftStatus[]>;
}

export type DriftEventListener = (event: DriftEventRecord) => void;

export type DriftWatcherState = 'created' | 'running' | 'stopped';

export interface DriftWatcherOptions {
  source: DriftStatusSource;
  store: DriftEventStore;
  clock: Clock;
  logger: Logger;
  /** How often run() evaluates. */
  evaluateIntervalMs: number;
  /** How far back a version must have sketches to be evaluated (the drift window). */
  windowMs: number;
  /** Events older than this are deleted on each evaluation. */
  eventRetentionMs: number;
  /**
   * Hysteresis: a lower status (alert -> warn or ok, warn -> ok) is recorded only once this many
   * evaluations in a row gave a lower status; a higher one is recorded at once. 1: no hysteresis.
   */
  clearAfter?: number;
}

const RANK: Record<string, number> = { no_data: 0, ok: 1, warn: 2, alert: 3 };

const LEVELS: ReadonlySet<string> = new Set<DriftLevel>(['ok', 'warn', 'alert', 'no_data']);
const keyOf = (k: DriftStatusKey): string => `${k.model}\u0000${k.version}\u0000${k.cohort}`;

/** Whether an event passes a filter; the same test the store's query applies, for events that arrive live. */
export function matchesDriftFilter(event: DriftEventRecord, filter: DriftEventFilter): boolean {
  return (
    (!filter.model || event.model === filter.model) &&
    (!filter.version || event.version === filter.version) &&
    (filter.cohort === undefined || event.cohort === filter.cohort) &&
    event.atMs >= (filter.sinceMs ?? 0) &&
    event.id > (filter.afterId ?? 0)
  );
}

/**
 * Turns drift status, which is computed on demand, into events: each evaluation compares every
 * version's status per cohort with the last one recorded and records a change (only a change,
 * never one per evaluation). The first verdict is a change from no_data, and a version or cohort
 * whose data stops (no sketches in the window, too few rows) goes back to no_data. Subscribers
 * hear each new event after it is committed. A lower verdict waits for `clearAfter` evaluations
 * in a row (hysteresis), so a verdict near a threshold does not flap. Tests call evaluate() with a ManualClock; run()
 * only adds the timer.
 */
export class DriftWatcher {
  private readonly listeners = new Map<DriftEventListener, (() => void) | undefined>();
  private timer: NodeJS.Timeout | undefined;
  private stateValue: DriftWatcherState = 'created';
  /** Per key, how many evaluations in a row gave a status below the recorded one. */
  private readonly lower = new Map<string, number>();
  private evaluating: Promise<unknown> = Promise.resolve();

  private constructor(private readonly options: DriftWatcherOptions) {}

  static create(options: DriftWatcherOptions): DriftWatcher {
    return new DriftWatcher(options);
  }

  get state(): DriftWatcherState {
    return this.stateValue;
  }

  /** Hears every new event until unsubscribed; `onEnd` runs at shutdown (a stream ends its call there). Returns the unsubscribe function. */
  subscribe(listener: DriftEventListener, onEnd?: () => void): () => void {
    this.listeners.set(listener, onEnd);
    return () => void this.listeners.delete(listener);
  }

  list(filter: DriftEventFilter, limit: number): Promise<DriftEventRecord[]> {
    return this.options.store.list(filter, limit);
  }

  /**
   * Evaluates every version with recent drift data now; resolves to the events it recorded.
   * Evaluations run one at a time (a timer's and a test's never interleave), so each compares
   * against the statuses the previous one recorded.
   */
  evaluate(): Promise<DriftEventRecord[]> {
    const run = this.evaluating.then(() => this.evaluateNow());
    this.evaluating = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async evaluateNow(): Promise<DriftEventRecord[]> {
    const { source, store, clock } = this.options;
    const now = clock.now();
    await store.pruneOlderThan(now - this.options.eventRetentionMs);
    const verdicts = new Map<string, { key: DriftStatusKey; status: DriftStatus }>();
    for (const { model, version } of await source.versions(now - this.options.windowMs)) {
      for (const status of await source.status(model, version)) {
        // A version without a reference has no verdict to watch.
        if (!LEVELS.has(status.status) || status.status === 'no_data') continue;
        const key = { model, version, cohort: status.cohort };
        verdicts.set(keyOf(key), { key, status });
      }
    }
    const changes: NewDriftEvent[] = [];
    const previous = new Map((await store.current()).map((c) => [keyOf(c), c]));
    for (const [k, { key, status }] of verdicts) {
      const before = previous.get(k)?.status ?? 'no_data';
      if (before === status.status) {
        this.lower.delete(k);
        continue;
      }
      if (RANK[status.status]! < RANK[before]!) {
        const run = (this.lower.get(k) ?? 0) + 1;
        if (run < (this.options.clearAfter ?? 1)) {
          this.lower.set(k, run);
          continue;
        }
      }
      this.lower.delete(k);
      const drifted = status.features.filter((f) => f.drifted).map((f) => f.name);
      changes.push({
        atMs: now,
        ...key,
        previousStatus: before,
        status: status.status as DriftLevel,
        driftedShare: status.driftedShare,
        driftedFeatures: drifted,
        maxPsi: status.features.reduce((max, f) => Math.max(max, f.psi), 0),
        rows: status.rows,
        devices: status.devices,
      });
    }
    for (const [k, before] of previous) {
      if (verdicts.has(k)) continue;
      // Data that stopped is a fact, not a noisy verdict: no hysteresis.
      this.lower.delete(k);
      changes.push({
        atMs: now,
        model: before.model,
        version: before.version,
        cohort: before.cohort,
        previousStatus: before.status,
        status: 'no_data',
        driftedShare: 0,
        driftedFeatures: [],
        maxPsi: 0,
        rows: 0,
        devices: 0,
      });
    }
    if (changes.length === 0) return [];
    const recorded = await store.record(changes);
    for (const event of recorded) {
      for (const listener of [...this.listeners.keys()]) {
        try {
          listener(event);
        } catch (err) {
          this.options.logger.warn({ err }, 'drift event listener failed');
        }
      }
    }
    return recorded;
  }

  /** Evaluates every interval until shutdown(). */
  run(): void {
    if (this.stateValue !== 'created') return;
    this.stateValue = 'running';
    this.timer = setInterval(() => {
      this.evaluate().catch((err: unknown) => this.options.logger.error({ err }, 'drift evaluation failed'));
    }, this.options.evaluateIntervalMs);
    this.timer.unref();
  }

  /** Stops evaluating, waits for the evaluation in flight, and ends every subscription. */
  async shutdown(): Promise<void> {
    clearInterval(this.timer);
    this.stateValue = 'stopped';
    await this.evaluating;
    const ends = [...this.listeners.values()];
    this.listeners.clear();
    for (const end of ends) end?.();
  }
}
