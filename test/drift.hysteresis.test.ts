import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import type { DriftStatus } from '../common/proto/driftline/v1/drift.js';
import { DriftWatcher } from '../control-plane/drift/drift-watcher.js';
import { evaluateDrift } from '../control-plane/drift/evaluate.js';
import { SqliteDriftEvents } from '../control-plane/store/sqlite/drift-events.js';
import { normalReference, normalRows, sketchOfRows } from '../demo/model/shifted-normal.js';

const reference = normalReference(1, 20_000, 8);

/** A watcher over a fresh SQLite event store whose source is a new generated window per evaluation. */
function watcherOver(clearAfter: number, window: (n: number) => DriftStatus): { watcher: DriftWatcher; clock: ManualClock; db: Database.Database } {
  const db = new Database(':memory:');
  const clock = new ManualClock(1_790_000_000_000);
  let n = 0;
  const watcher = DriftWatcher.create({
    source: { versions: async () => [{ model: 'm', version: 1 }], status: async () => [window(n++)] },
    store: new SqliteDriftEvents(db),
    clock,
    logger: silentLogger(),
    evaluateIntervalMs: 30_000,
    windowMs: 900_000,
    eventRetentionMs: 86_400_000,
    clearAfter,
  });
  return { watcher, clock, db };
}

/** A borderline cohort: one feature shifted so that about half the windows of 130 rows are drifted. */
const borderline = (n: number): DriftStatus => ({
  model: 'm',
  version: 1,
  cohort: 'c',
  devices: 1,
  ...evaluateDrift(reference, sketchOfRows(reference, normalRows(500 + n, 130, 8, { feature: 2, sigma: 0.35 }))),
});

describe('drift watcher hysteresis', () => {
  it('hysteresis - a borderline cohort does not flap: a lower status waits for clearAfter evaluations in a row', async () => {
    const count = async (clearAfter: number): Promise<number> => {
      const { watcher, clock, db } = watcherOver(clearAfter, borderline);
      let events = 0;
      for (let i = 0; i < 60; i++) {
        events += (await watcher.evaluate()).length;
        clock.advance(30_000);
      }
      db.close();
      return events;
    };
    const plain = await count(1);
    const held = await count(3);
    // Without hysteresis the verdict changes on a large share of the 60 evaluations.
    expect(plain).toBeGreaterThan(10);
    expect(held).toBeLessThan(plain / 2);
  });

  it('hysteresis - a higher status is recorded at once, a lower one on the clearAfter-th evaluation that gives it', async () => {
    const script = ['ok', 'alert', 'ok', 'ok', 'warn', 'warn', 'ok', 'ok', 'ok'];
    const { watcher, clock, db } = watcherOver(3, (n) => ({ ...borderline(0), status: script[n]! }));
    const changes: string[] = [];
    for (let i = 0; i < script.length; i++) {
      for (const e of await watcher.evaluate()) changes.push(`${i}:${e.previousStatus}->${e.status}`);
      clock.advance(30_000);
    }
    db.close();
    // alert at 1; ok, ok, warn are three lower in a row, so warn is recorded at 4; then ok at 8.
    expect(changes).toEqual(['0:no_data->ok', '1:ok->alert', '4:alert->warn', '8:warn->ok']);
  });
});
