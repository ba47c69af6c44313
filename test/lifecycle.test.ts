import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { component, Lifecycle } from '../common/lifecycle.js';

const never = (): Promise<never> => new Promise<never>(() => {});
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('component lifecycle', () => {
  it('starts components in order and shuts them down in reverse order', async () => {
    const steps: string[] = [];
    const lifecycle = new Lifecycle();
    for (const name of ['buffer', 'uplink', 'local-api']) {
      lifecycle.add(component(name, { run: () => void steps.push(`run ${name}`), drain: () => void steps.push(`drain ${name}`) }));
    }
    await lifecycle.run();
    await lifecycle.shutdown(1_000);
    expect(steps).toEqual(['run buffer', 'run uplink', 'run local-api', 'drain local-api', 'drain uplink', 'drain buffer']);
  });

  it('a component that does not drain within its grace is forced and says so with SHUTDOWN_GRACE_EXPIRED', async () => {
    const clock = new ManualClock();
    let forced = false;
    const stuck = component('uploader', { drain: never, force: () => void (forced = true) }, clock);
    await stuck.run();
    const stopping = stuck.shutdown(5_000);
    const outcome = stopping.catch((err: unknown) => err);
    clock.advance(4_999);
    await settle();
    expect([stuck.state, forced]).toEqual(['stopping', false]);
    clock.advance(1);
    const err = await outcome;
    expect(err).toBeInstanceOf(DriftlineError);
    expect((err as DriftlineError).code).toBe('SHUTDOWN_GRACE_EXPIRED');
    expect((err as DriftlineError).details).toEqual({ component: 'uploader', graceMs: 5_000 });
    expect([stuck.state, forced]).toEqual(['stopped', true]);
  });

  it('a drain that finishes in time is not forced, and a second shutdown waits for the first', async () => {
    let forced = false;
    const quick = component('engine', { drain: () => Promise.resolve(), force: () => void (forced = true) }, new ManualClock());
    await quick.run();
    await Promise.all([quick.shutdown(1_000), quick.shutdown(1_000)]);
    expect([quick.state, forced]).toEqual(['stopped', false]);
  });

  it('the whole shutdown stays within one grace: each component gets what the ones before it left', async () => {
    const clock = new ManualClock();
    const graces: Array<[string, number]> = [];
    const errors: string[] = [];
    const lifecycle = new Lifecycle({ clock, onShutdownError: (name, err) => void errors.push(`${name}: ${(err as DriftlineError).code}`) });
    for (const name of ['buffer', 'engine', 'uploader']) {
      lifecycle.add(component(name, { drain: (graceMs) => (graces.push([name, graceMs]), never()) }, clock));
    }
    await lifecycle.run();
    let done = false;
    const stopping = lifecycle.shutdown(10_000).then(() => (done = true));
    await clock.advanceAsync(10_000);
    await stopping;
    expect(done).toBe(true);
    expect(graces).toEqual([
      ['uploader', 10_000],
      ['engine', 0],
      ['buffer', 0],
    ]);
    expect(errors).toEqual(['uploader: SHUTDOWN_GRACE_EXPIRED', 'engine: SHUTDOWN_GRACE_EXPIRED', 'buffer: SHUTDOWN_GRACE_EXPIRED']);
  });

  it('a component that fails to start stops the ones already running, in reverse order', async () => {
    const steps: string[] = [];
    const lifecycle = new Lifecycle();
    lifecycle.add(component('buffer', { drain: () => void steps.push('drain buffer') }));
    lifecycle.add(component('uplink', { drain: () => void steps.push('drain uplink') }));
    lifecycle.add(component('local-api', { run: () => Promise.reject(new DriftlineError('LISTEN_FAILED', 'port taken')) }));
    await expect(lifecycle.run()).rejects.toMatchObject({ code: 'LISTEN_FAILED' });
    expect(steps).toEqual(['drain uplink', 'drain buffer']);
  });
});
