import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';

describe('manual clock', () => {
  it('fires due timers on advance, in order of their due time, reading that time while each runs', () => {
    const clock = new ManualClock(1_000);
    const fired: Array<[string, number]> = [];
    clock.setTimeout(() => fired.push(['late', clock.now()]), 300);
    clock.setTimeout(() => fired.push(['early', clock.now()]), 100);
    clock.setTimeout(() => fired.push(['beyond', clock.now()]), 1_000);
    clock.advance(500);
    expect(fired).toEqual([
      ['early', 1_100],
      ['late', 1_300],
    ]);
    expect(clock.now()).toBe(1_500);
    expect(clock.pendingTimers()).toBe(1);
  });

  it('a cancelled timer never fires, and an interval fires once per period until cancelled', () => {
    const clock = new ManualClock(0);
    let timeouts = 0;
    let ticks = 0;
    clock.setTimeout(() => timeouts++, 10)();
    const stop = clock.setInterval(() => ticks++, 100);
    clock.advance(350);
    expect([timeouts, ticks]).toEqual([0, 3]);
    stop();
    clock.advance(1_000);
    expect(ticks).toBe(3);
    expect(clock.pendingTimers()).toBe(0);
  });

  it('a timer armed by another one fires in the same advance when it falls due within it', () => {
    const clock = new ManualClock(0);
    const fired: number[] = [];
    clock.setTimeout(() => clock.setTimeout(() => fired.push(clock.now()), 50), 50);
    clock.advance(100);
    expect(fired).toEqual([100]);
  });

  it('set() jumps without firing anything', () => {
    const clock = new ManualClock(0);
    let fired = 0;
    clock.setTimeout(() => fired++, 10);
    clock.set(1_000);
    expect(fired).toBe(0);
    clock.advance(0);
    expect(fired).toBe(1);
  });
});
