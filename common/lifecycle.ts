import { systemClock, type Clock } from './clock.js';
import { DriftlineError } from './errors.js';

/**
 * One shape for every long-lived component (temporal's worker, grpc-node's
 * tryShutdown/forceShutdown): an explicit state, run() that starts it, and shutdown(graceMs)
 * that drains what is in flight, then forces what is left once the grace is over and says so
 * with SHUTDOWN_GRACE_EXPIRED. Composition roots hold an ordered list of them (Lifecycle).
 */
export type ComponentState = 'created' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

export interface Component {
  readonly name: string;
  readonly state: ComponentState;
  run(): Promise<void>;
  /** Drains for up to graceMs, then forces; rejects with SHUTDOWN_GRACE_EXPIRED when it had to force. Idempotent. */
  shutdown(graceMs: number): Promise<void>;
}

/** What a component does at each step; every step is optional. */
export interface ComponentSteps {
  run?(): void | Promise<void>;
  /**
   * Stops taking work and finishes what is in flight. It is given the grace to plan by (it
   * need not keep to it: it is cut off when the grace is over). Resolving false means it gave
   * up before the grace was over with work left: treated as an expired grace.
   */
  drain?(graceMs: number): void | boolean | Promise<void | boolean>;
  /** Cuts what the drain left; runs only when the grace expired. */
  force?(): void | Promise<void>;
}

/** SHUTDOWN_GRACE_EXPIRED for a component: which one, and the grace it had. */
export function shutdownGraceExpired(component: string, graceMs: number, cause?: unknown): DriftlineError {
  return new DriftlineError('SHUTDOWN_GRACE_EXPIRED', `${component} did not drain within its ${graceMs} ms shutdown grace and was forced`, {
    cause,
    details: { component, graceMs },
  });
}

/** A Component from its steps; its grace is timed on the clock, so a ManualClock drives it in tests. */
export function component(name: string, steps: ComponentSteps, clock: Clock = systemClock): Component {
  let state: ComponentState = 'created';
  let stopping: Promise<void> | undefined;
  return {
    name,
    get state() {
      return state;
    },
    async run() {
      if (state !== 'created') throw new DriftlineError('INTERNAL', `${name} cannot run: it is ${state}`);
      state = 'starting';
      try {
        await steps.run?.();
        state = 'running';
      } catch (err) {
        state = 'failed';
        throw err;
      }
    },
    shutdown(graceMs) {
      stopping ??= (async () => {
        state = 'stopping';
        let cancel: (() => void) | undefined;
        const expired = new Promise<'expired'>((resolve) => (cancel = clock.setTimeout(() => resolve('expired'), Math.max(0, graceMs))));
        let outcome: 'drained' | 'expired';
        try {
          const drained = Promise.resolve(steps.drain?.(graceMs)).then((r): 'drained' | 'expired' => (r === false ? 'expired' : 'drained'));
          outcome = await Promise.race([drained, expired]);
        } catch (err) {
          cancel?.();
          await Promise.resolve(steps.force?.()).catch(() => undefined);
          state = 'failed';
          throw err;
        }
        cancel?.();
        if (outcome === 'drained') {
          state = 'stopped';
          return;
        }
        try {
          await steps.force?.();
        } finally {
          state = 'stopped';
        }
        throw shutdownGraceExpired(name, graceMs);
      })();
      return stopping;
    },
  };
}

export interface LifecycleOptions {
  clock?: Clock;
  /** A component that failed to drain in time, or failed while stopping: shutdown goes on with the next one. */
  onShutdownError?: (component: string, err: DriftlineError | unknown) => void;
}

/**
 * An ordered list of components: run() starts them in order (one that fails to start stops
 * those already running, in reverse), shutdown(graceMs) stops them in reverse order within
 * one grace for all of them: each gets what is left of it, so the total stays bounded by it.
 */
export class Lifecycle {
  private readonly components: Component[] = [];
  private readonly clock: Clock;
  private started = 0;
  private stopping: Promise<void> | undefined;

  constructor(private readonly options: LifecycleOptions = {}) {
    this.clock = options.clock ?? systemClock;
  }

  /** Adds a component; returns it for the root to keep. */
  add<C extends Component>(c: C): C {
    this.components.push(c);
    return c;
  }

  /**
   * Adds a component whose part already started when it was made (roots that start each part
   * as they build the next): it counts as started, in the order adopted.
   */
  adopt<C extends Component>(c: C): C {
    if (this.started !== this.components.length) throw new DriftlineError('INTERNAL', 'adopt() after add(): run() starts the components added');
    this.components.push(c);
    this.started++;
    void c.run().catch(() => undefined);
    return c;
  }

  names(): string[] {
    return this.components.map((c) => c.name);
  }

  async run(): Promise<void> {
    for (const c of this.components) {
      try {
        await c.run();
        this.started++;
      } catch (err) {
        await this.shutdown(0);
        throw err;
      }
    }
  }

  /** Resolves once every component has stopped (or been forced); what went wrong goes to onShutdownError. */
  shutdown(graceMs: number): Promise<void> {
    this.stopping ??= (async () => {
      const deadline = this.clock.now() + Math.max(0, graceMs);
      for (const c of this.components.slice(0, Math.max(this.started, 0)).reverse()) {
        try {
          await c.shutdown(Math.max(0, deadline - this.clock.now()));
        } catch (err) {
          this.options.onShutdownError?.(c.name, err);
        }
      }
    })();
    return this.stopping;
  }
}
