/** Cancels a timer; calling it again, or after the timer fired, does nothing. */
export type CancelTimer = () => void;

/**
 * Time goes through a clock so tests can drive it instead of sleeping: reading it, and
 * waiting on it. Components that wait (batching delays, schedules, grace periods) take their
 * timers from the clock they are given, so a test that advances a ManualClock fires them.
 */
export interface Clock {
  now(): number;
  /** Runs fn once, ms from now. */
  setTimeout(fn: () => void, ms: number): CancelTimer;
  /** Runs fn every ms, the first time ms from now. */
  setInterval(fn: () => void, ms: number): CancelTimer;
}

/** The wall clock and Node's timers. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const timer = setTimeout(fn, ms);
    return () => clearTimeout(timer);
  },
  setInterval(fn, ms) {
    const timer = setInterval(fn, ms);
    return () => clearInterval(timer);
  },
};

interface ManualTimer {
  id: number;
  due: number;
  fn: () => void;
  /** Set for an interval: it is armed again this far after each run. */
  every?: number;
}

/**
 * A clock tests move by hand. Its timers fire only on advance(), in order of their due time,
 * with now() reading that due time while each runs (a timer armed by another one fires in the
 * same advance when it falls due within it).
 */
export class ManualClock implements Clock {
  private timers: ManualTimer[] = [];
  private nextId = 0;

  constructor(private current = 1_700_000_000_000) {}

  now(): number {
    return this.current;
  }

  setTimeout(fn: () => void, ms: number): CancelTimer {
    return this.arm({ id: ++this.nextId, due: this.current + Math.max(0, ms), fn });
  }

  setInterval(fn: () => void, ms: number): CancelTimer {
    // An interval of 0 would fire forever within one advance; Node runs it every millisecond.
    const every = Math.max(1, ms);
    return this.arm({ id: ++this.nextId, due: this.current + every, fn, every });
  }

  /** Moves time on by ms, firing every timer that falls due on the way. */
  advance(ms: number): void {
    const until = this.current + Math.max(0, ms);
    for (;;) {
      const next = this.timers[0];
      if (!next || next.due > until) break;
      this.timers.shift();
      this.current = Math.max(this.current, next.due);
      if (next.every !== undefined) this.insert({ ...next, due: next.due + next.every });
      next.fn();
    }
    this.current = until;
  }

  /**
   * advance(), letting promises settle after each timer: for tasks that do asynchronous work
   * when they fire (a schedule skips a moment while its previous run has not finished).
   */
  async advanceAsync(ms: number): Promise<void> {
    const until = this.current + Math.max(0, ms);
    for (;;) {
      await settle();
      const next = this.timers[0];
      if (!next || next.due > until) break;
      this.advance(next.due - this.current);
    }
    this.current = until;
    await settle();
  }

  /** Sets the time without firing anything: a clock that jumps (NTP, a skewed device). */
  set(ms: number): void {
    this.current = ms;
  }

  /** Timers armed and not fired or cancelled yet. */
  pendingTimers(): number {
    return this.timers.length;
  }

  private arm(timer: ManualTimer): CancelTimer {
    this.insert(timer);
    return () => {
      this.timers = this.timers.filter((t) => t.id !== timer.id);
    };
  }

  /** Kept sorted by due time, then by arming order. */
  private insert(timer: ManualTimer): void {
    const at = this.timers.findIndex((t) => t.due > timer.due);
    if (at < 0) this.timers.push(timer);
    else this.timers.splice(at, 0, timer);
  }
}

/** Lets pending promise callbacks and I/O-free continuations run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
