import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ManualClock, type Clock } from '../common/clock.js';
import { schedule, secondsOnly } from '../agent/schedule.js';

const START = Date.UTC(2026, 0, 1, 12, 0, 3, 500);
const wallClock: Clock = { now: () => Date.now() };
const noErrors = (name: string, err: unknown): never => {
  throw new Error(`${name} failed: ${String(err)}`);
};

describe('agent schedule', () => {
  beforeEach(() => void vi.useFakeTimers({ now: START, toFake: ['setTimeout', 'clearTimeout', 'Date'] }));
  afterEach(() => void vi.useRealTimers());

  it('reads the schedules of the firmware profiles and the defaults as seconds-only, and calendar ones not', () => {
    expect(secondsOnly('*/15 * * * * *')).toEqual({ period: 15, offset: 0 });
    expect(secondsOnly('*/30 * * * * *')).toEqual({ period: 30, offset: 0 });
    expect(secondsOnly('0 * * * * *')).toEqual({ period: 60, offset: 0 });
    expect(secondsOnly('* * * * * *')).toEqual({ period: 1, offset: 0 });
    expect(secondsOnly('* * * * *')).toEqual({ period: 60, offset: 0 });
    for (const calendar of ['0 0 1 1 *', '0 */5 * * * *', '*/7 * * * * *', '1-5 * * * * *', '0 0 3 * * 1']) expect(secondsOnly(calendar)).toBeUndefined();
  });

  it('runs a seconds-only task on whole multiples of its period of the clock time', async () => {
    const runs: number[] = [];
    const task = await schedule('*/15 * * * * *', () => void runs.push(Date.now()), { name: 't', clock: wallClock, onError: noErrors });
    await vi.advanceTimersByTimeAsync(46_000);
    await task.destroy();
    expect(runs.map((t) => (t - Date.UTC(2026, 0, 1, 12, 0, 0)) / 1000)).toEqual([15, 30, 45]);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(runs).toHaveLength(3);
  });

  it('skips a moment while the previous run is still going', async () => {
    let started = 0;
    let release: () => void = () => {};
    const task = await schedule('* * * * * *', () => { started++; return new Promise<void>((r) => (release = r)); }, { name: 'slow', clock: wallClock, onError: noErrors });
    await vi.advanceTimersByTimeAsync(5_000);
    expect(started).toBe(1);
    release();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(started).toBe(2);
    await task.destroy();
  });

  it('reports a task that fails and keeps its schedule', async () => {
    const failures: string[] = [];
    let runs = 0;
    const task = await schedule('* * * * * *', () => { runs++; throw new Error('boom'); }, { name: 'flaky', clock: wallClock, onError: (name) => void failures.push(name) });
    await vi.advanceTimersByTimeAsync(3_000);
    await task.destroy();
    expect(runs).toBe(3);
    expect(failures).toEqual(['flaky', 'flaky', 'flaky']);
  });

  it('neither stalls nor spins when the clock stands still', async () => {
    let runs = 0;
    const task = await schedule('*/2 * * * * *', () => void runs++, { name: 'frozen', clock: new ManualClock(START), onError: noErrors });
    await vi.advanceTimersByTimeAsync(20_000);
    await task.destroy();
    expect(runs).toBeGreaterThanOrEqual(9);
    expect(runs).toBeLessThanOrEqual(11);
  });

  it('hands calendar expressions to node-cron, which refuses a malformed one', async () => {
    const task = await schedule('0 0 1 1 *', () => {}, { name: 'yearly', clock: wallClock, onError: noErrors });
    await task.destroy();
    await expect(schedule('0 0 99 1 *', () => {}, { name: 'bad', clock: wallClock, onError: noErrors })).rejects.toThrow();
  });
});
