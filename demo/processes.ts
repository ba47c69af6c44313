import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { DriftlineError } from '../common/errors.js';

export const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ChildSpec {
  /** Short name for messages, e.g. `control plane` or `demo-edge-1`. */
  name: string;
  /** Script relative to the repository root, run with this Node binary. */
  script: string;
  args: string[];
  /** stderr (the child's JSON logs) goes here, so the demo's own terminal stays readable. */
  logFile: string;
  /** The stdout line that says the process is ready. */
  ready: RegExp;
  readyTimeoutMs: number;
  env?: NodeJS.ProcessEnv;
}

/** One child process of the demo: its ready line, later stdout lines, and its exit. */
export class DemoChild {
  readonly exited: Promise<ChildExit>;
  private readonly lines: string[] = [];
  private readonly waiters = new Set<{ pattern: RegExp; resolve(match: RegExpMatchArray): void }>();
  private exit: ChildExit | undefined;
  private readyLine: RegExpMatchArray | undefined;
  private stopAsked = false;

  constructor(
    readonly spec: ChildSpec,
    private readonly child: ChildProcess,
  ) {
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      }),
    );
    createInterface({ input: child.stdout! }).on('line', (text) => {
      this.lines.push(text);
      for (const waiter of [...this.waiters]) {
        const match = text.match(waiter.pattern);
        if (match) {
          this.waiters.delete(waiter);
          waiter.resolve(match);
        }
      }
    });
  }

  get name(): string {
    return this.spec.name;
  }

  /** The ready line's match; set once the process said it is ready. */
  get ready(): RegExpMatchArray {
    if (!this.readyLine) throw new DriftlineError('INTERNAL', `${this.name} is not ready yet`);
    return this.readyLine;
  }

  markReady(match: RegExpMatchArray): void {
    this.readyLine = match;
  }

  /** True once the demo asked it to stop, so its exit is expected. */
  get stopRequested(): boolean {
    return this.stopAsked;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  get exitStatus(): ChildExit | undefined {
    return this.exit;
  }

  /** The first stdout line matching the pattern, past or future; fails if the process exits first or time runs out. */
  async line(pattern: RegExp, timeoutMs: number, what: string): Promise<RegExpMatchArray> {
    const seen = this.lines.map((text) => text.match(pattern)).find((m) => m !== null);
    if (seen) return seen;
    let waiter: { pattern: RegExp; resolve(match: RegExpMatchArray): void } | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        new Promise<RegExpMatchArray>((resolve) => {
          waiter = { pattern, resolve };
          this.waiters.add(waiter);
        }),
        // The exit event can come before readline has delivered the last lines: let them land first.
        this.exited.then(async (exit) => {
          await new Promise((resolve) => setImmediate(resolve));
          const late = this.lines.map((text) => text.match(pattern)).find((m) => m !== null);
          if (late) return late;
          throw new DriftlineError('INTERNAL', `${this.name} exited (${describeExit(exit)}) before printing ${what}; see its log ${this.spec.logFile}`);
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new DriftlineError('INTERNAL', `${this.name} did not print ${what} within ${timeoutMs / 1000} s; see its log ${this.spec.logFile}`)),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      if (waiter) this.waiters.delete(waiter);
      clearTimeout(timer);
    }
  }

  signal(signal: NodeJS.Signals): void {
    this.stopAsked = true;
    if (this.running) this.child.kill(signal);
  }

  /** Kills the child's whole process group at once, for exit paths that cannot wait. */
  forceKill(): void {
    this.stopAsked = true;
    if (!this.running || this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, 'SIGKILL');
    } catch {
      // Already gone between the check and the kill.
    }
  }

  /** SIGTERM, then SIGKILL if the process has not exited after the grace period. Resolves with how it exited. */
  async stop(graceMs: number): Promise<ChildExit> {
    this.signal('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const forced = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, graceMs);
    });
    const first = await Promise.race([this.exited, forced.then(() => undefined)]);
    clearTimeout(timer);
    if (first) return first;
    this.forceKill();
    return this.exited;
  }
}

export function describeExit(exit: ChildExit): string {
  return exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`;
}

/**
 * Every process the demo starts, so that none outlives it. Children run in their own
 * process group: a Ctrl-C in the terminal reaches only the demo, which then stops the
 * agents before the control plane instead of everything stopping at once and racing.
 * The price is that the demo must kill them itself on every way out: the exit hook covers
 * the ways out that cannot wait (errors, process.exit, a second Ctrl-C).
 */
export class ProcessGroup {
  private readonly children = new Set<DemoChild>();
  private closed = false;

  constructor() {
    process.on('exit', () => this.forceKillAll());
  }

  /** Refuses further starts, so a setup step still running after an interruption cannot leave a process behind. */
  close(): void {
    this.closed = true;
  }

  async start(spec: ChildSpec): Promise<DemoChild> {
    if (this.closed) throw new DriftlineError('SHUTTING_DOWN', `not starting ${spec.name}: the demo is stopping`);
    const logFd = openSync(spec.logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, [spec.script, ...spec.args], {
        cwd: REPO_ROOT,
        env: { ...process.env, ...spec.env },
        stdio: ['ignore', 'pipe', logFd],
        detached: true,
      });
    } finally {
      // The child holds its own copy of the descriptor.
      closeSync(logFd);
    }
    const started = new DemoChild(spec, child);
    this.children.add(started);
    void started.exited.then(() => this.children.delete(started));
    const spawnFailed = new Promise<never>((_, reject) =>
      child.once('error', (err) => reject(new DriftlineError('INTERNAL', `could not start ${spec.name}: ${err.message}`, { cause: err }))),
    );
    started.markReady(await Promise.race([started.line(spec.ready, spec.readyTimeoutMs, 'its ready line'), spawnFailed]));
    return started;
  }

  get running(): DemoChild[] {
    return [...this.children].filter((c) => c.running);
  }

  forceKillAll(): void {
    for (const child of this.children) child.forceKill();
  }
}
