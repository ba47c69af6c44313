import type { Clock } from '../common/clock.js';

/**
 * The agent's periodic tasks (heartbeat, system metrics, uplink check, drift window, buffer
 * maintenance), scheduled by cron expressions with seconds (node-cron syntax).
 *
 * Every schedule a firmware profile or the defaults use only constrains seconds ("every 15 s",
 * "at second 0 of every minute"): those fire on whole seconds of the clock's time and need no
 * calendar, so they run on a timer here. Anything else loads node-cron then (its module stays
 * unloaded otherwise): node-cron works out local calendar fields with Intl.DateTimeFormat,
 * whose ICU time zone and locale data cost an idle agent about 16 MB of resident memory
 * (bench:agent-footprint). Seconds are the same in every time zone (offsets are whole minutes),
 * so both paths fire at the same moments.
 *
 * Seconds-only schedules wait on the injected clock's timers, so a test advances a ManualClock
 * to fire them instead of turning them off with a cron that never fires. Calendar schedules
 * follow the wall calendar (node-cron's own timers) whatever the clock.
 */
export interface ScheduledTask {
  destroy(): void | Promise<void>;
}

export interface ScheduleOptions {
  name: string;
  clock: Clock;
  /** A task that throws or rejects; the schedule goes on. */
  onError: (name: string, err: unknown) => void;
}

/** Every `period` seconds starting at second `offset` of the minute: what a seconds-only expression means. */
export interface SecondsSchedule {
  period: number;
  offset: number;
}

/**
 * The seconds-only form of a cron expression, or undefined when it constrains minutes, hours,
 * days, months or weekdays (or uses a seconds form other than `*`, `N` or `*`/N with N dividing 60).
 */
export function secondsOnly(expression: string): SecondsSchedule | undefined {
  const fields = expression.trim().split(/\s+/);
  if (fields.length === 5) return fields.every((f) => f === '*') ? { period: 60, offset: 0 } : undefined;
  if (fields.length !== 6 || !fields.slice(1).every((f) => f === '*')) return undefined;
  const seconds = fields[0]!;
  if (seconds === '*') return { period: 1, offset: 0 };
  if (/^\d{1,2}$/.test(seconds) && Number(seconds) < 60) return { period: 60, offset: Number(seconds) };
  const step = seconds.match(/^\*\/(\d{1,2})$/);
  if (step && Number(step[1]) > 0 && 60 % Number(step[1]) === 0) return { period: Number(step[1]), offset: 0 };
  return undefined;
}

/** Schedules tasks on one clock, each failure reported the same way: what a composition root holds. */
export interface Scheduler {
  /** Runs task on expression, on the scheduler's clock or the one given. */
  every(expression: string, name: string, task: () => unknown, clock?: Clock): Promise<ScheduledTask>;
}

export function createScheduler(options: { clock: Clock; onError: (name: string, err: unknown) => void }): Scheduler {
  return { every: (expression, name, task, clock) => schedule(expression, task, { name, clock: clock ?? options.clock, onError: options.onError }) };
}

/** Runs `task` on `expression`; a run still going when the next one is due makes that one skip (node-cron's noOverlap). */
export async function schedule(expression: string, task: () => unknown, options: ScheduleOptions): Promise<ScheduledTask> {
  const simple = secondsOnly(expression);
  const run = async (): Promise<void> => {
    try {
      await task();
    } catch (err) {
      options.onError(options.name, err);
    }
  };
  if (!simple) {
    const { default: cron } = await import('node-cron');
    const scheduled = cron.schedule(expression, run, { noOverlap: true, name: options.name });
    return { destroy: () => scheduled.destroy() };
  }
  return secondsTimer(simple, run, options.clock);
}

function secondsTimer({ period, offset }: SecondsSchedule, run: () => Promise<void>, clock: Clock): ScheduledTask {
  const periodMs = period * 1000;
  let cancel: (() => void) | undefined;
  let last = -Infinity;
  let running = false;
  let stopped = false;
  const arm = (): void => {
    if (stopped) return;
    const now = clock.now();
    let next = Math.floor((now - offset * 1000) / periodMs + 1) * periodMs + offset * 1000;
    // A timer that fires a little early, or a clock that stands still, must not run one moment twice.
    if (next <= last) next = last + periodMs;
    cancel = clock.setTimeout(
      () => {
        last = next;
        if (!running) {
          running = true;
          void run().finally(() => (running = false));
        }
        arm();
      },
      Math.min(Math.max(next - now, 0), periodMs),
    );
  };
  arm();
  return {
    destroy() {
      stopped = true;
      cancel?.();
    },
  };
}
