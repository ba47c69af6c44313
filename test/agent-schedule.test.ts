import { afterEach, describe, expect, it, vi } from 'vitest';
import { ManualClock, systemClock, type Clock } from '../common/clock.js';
import { createScheduler, schedule, secondsOnly } from '../agent/schedule.js';

const START = Date.UTC(2026, 0, 1, 12, 0, 3, 500);
const noErrors = (name: string, err: unknown): never => {
  throw new Error(`${name} failed: ${String(err)}`);
};

describe('agent schedule', () => {
  afterEach(() => void vi.useRealTimers());

  it('reads the schedules of the firmware profiles and the defaults as seconds-only, and calendar ones not', () => {
    expect(secondsOnly('*/15 * * * * *')).toEqual({ period: 15, offset: 0 });
    expect(secondsOnly('*/30 * * * * *')).toEqual({ period: 30, offset: 0 });
    expect(secondsOnly('0 * * * * *')).toEqual({ period: 60, offset: 0 });
    expect(secondsOnly('* * * * * *')).toEqual({ period: 1, offset: 0 });
    expect(secondsOnly('* * * * *')).toEqual({ period: 60, offset: 0 });
    for (const calendar of ['0 0 1 1 *', '0 */5 * * * *', '*/7 * * * * *', '1-5 * * * * *', '0 0 3 * * 1']) expect(secondsOnly(calendar)).toBeUndefined();
  });

  it('runs a seconds-only task on whole multiples of its period of the clock time, as the clock advances', async () => {
    const clock = new ManualClock(START);
    const runs: number[] = [];
    const task = await schedule('*/15 * * * * *', () => void runs.push(clock.now()), { name: 't', clock, onError: noErrors });
    await clock.advanceAsync(46_000);
    await task.destroy();
    expect(runs.map((t) => (t - Date.UTC(2026, 0, 1, 12, 0, 0)) / 1000)).toEqual([15, 30, 45]);
    await clock.advanceAsync(60_000);
    expect(runs).toHaveLength(3);
    expect(clock.pendingTimers()).toBe(0);
  });

  it('skips a moment while the previous run is still going', async () => {
    const clock = new ManualClock(START);
    let started = 0;
    let release: () => void = () => {};
    const task = await schedule(
      '* * * * * *',
      () => {
        started++;
        return new Promise<void>((r) => (release = r));
      },
      { name: 'slow', clock, onError: noErrors },
    );
    await clock.advanceAsync(5_000);
    expect(started).toBe(1);
    release();
    await clock.advanceAsync(1_000);
    expect(started).toBe(2);
    await task.destroy();
  });

  it('reports a task that fails and keeps its schedule', async () => {
    const clock = new ManualClock(START);
    const failures: string[] = [];
    let runs = 0;
    const scheduler = createScheduler({ clock, onError: (name) => void failures.push(name) });
    const task = await scheduler.every('* * * * * *', 'flaky', () => {
      runs++;
      throw new Error('boom');
    });
    await clock.advanceAsync(3_000);
    await task.destroy();
    expect(runs).toBe(3);
    expect(failures).toEqual(['flaky', 'flaky', 'flaky']);
  });

  it('neither stalls nor spins when the time it reads stands still while its timers run', async () => {
    vi.useFakeTimers({ now: START, toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    // A device clock stuck at one reading, on the machine's real timers.
    const frozen: Clock = { ...systemClock, now: () => START };
    let runs = 0;
    const task = await schedule('*/2 * * * * *', () => void runs++, { name: 'frozen', clock: frozen, onError: noErrors });
    await vi.advanceTimersByTimeAsync(20_000);
    await task.destroy();
    expect(runs).toBeGreaterThanOrEqual(9);
    expect(runs).toBeLessThanOrEqual(11);
  });

  it('hands calendar expressions to node-cron, which refuses a malformed one', async () => {
    const task = await schedule('0 0 1 1 *', () => {}, { name: 'yearly', clock: systemClock, onError: noErrors });
    await task.destroy();
    await expect(schedule('0 0 99 1 *', () => {}, { name: 'bad', clock: systemClock, onError: noErrors })).rejects.toThrow();
  });
});
