export type PeriodicTaskState = 'created' | 'running' | 'stopping' | 'stopped';

/**
 * Runs `task` every `intervalMs`, one run at a time: a slow run delays the next rather than
 * piling up. A run that throws is passed to `onError` and the schedule goes on. shutdown()
 * stops the timer and waits for the run in flight. The timer does not keep the process alive.
 */
export class PeriodicTask {
  private timer: NodeJS.Timeout | undefined;
  private current: Promise<void> = Promise.resolve();
  private stateValue: PeriodicTaskState = 'created';

  constructor(private readonly options: { intervalMs: number; task: () => Promise<unknown> | unknown; onError: (err: unknown) => void }) {}

  get state(): PeriodicTaskState {
    return this.stateValue;
  }

  run(): void {
    if (this.stateValue !== 'created') return;
    this.stateValue = 'running';
    this.timer = setInterval(() => {
      this.current = this.current.then(() => this.options.task()).then(() => undefined, this.options.onError);
    }, this.options.intervalMs);
    this.timer.unref();
  }

  async shutdown(): Promise<void> {
    if (this.stateValue === 'stopped') return;
    this.stateValue = 'stopping';
    clearInterval(this.timer);
    await this.current;
    this.stateValue = 'stopped';
  }
}
