import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger, type Logger } from '../common/logger.js';
import { type TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { DriftlineError } from '../common/errors.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';
import { RetentionPruner, type PrunableStore } from '../control-plane/telemetry/retention-pruner.js';
import { inferenceRecord } from './helpers/telemetry-records.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

const inference = (seq: number, timeMs: number): TelemetryRecord => inferenceRecord({ seq, timeMs });

const retention = { rawMs: DAY, minuteMs: DAY, hourMs: 30 * DAY };

describe('telemetry retention', () => {
  it('telemetry - the retention pruner deletes raw records past their retention and keeps the newer ones', async () => {
    const db = openDatabase(':memory:');
    const clock = new ManualClock();
    const telemetry = new SqliteTelemetryRepository(db);
    await telemetry.commit('edge-1', [inference(1, clock.now())], clock.now());
    clock.advance(2 * DAY);
    await telemetry.commit('edge-1', [inference(2, clock.now())], clock.now());
    const pruner = RetentionPruner.create({ stores: [telemetry], retention, intervalMs: HOUR, clock, logger: silentLogger() });

    await pruner.pruneNow();

    const seqs = (db.prepare('SELECT seq FROM telemetry_records ORDER BY seq').all() as Array<{ seq: number }>).map((r) => r.seq);
    expect(seqs).toEqual([2]);
    db.close();
  });

  it('telemetry - a store whose retention pass fails is logged and the other stores are still pruned', async () => {
    const clock = new ManualClock();
    const warnings: unknown[] = [];
    const logger = { ...silentLogger(), warn: (obj: unknown) => warnings.push(obj) } as unknown as Logger;
    const pruned: number[] = [];
    const failing: PrunableStore = { prune: async () => Promise.reject(new DriftlineError('STORE_FAILED', 'database is locked')) };
    const working: PrunableStore = {
      prune: async (nowMs) => {
        pruned.push(nowMs);
        return 0;
      },
    };
    const pruner = RetentionPruner.create({ stores: [failing, working], retention, intervalMs: HOUR, clock, logger });

    await pruner.pruneNow();

    expect(pruned).toEqual([clock.now()]);
    expect(warnings).toEqual([{ err: expect.objectContaining({ code: 'STORE_FAILED' }) }]);
  });
});
