/**
 * Devices whose clocks are hours off: one six hours ahead of the control plane, one six
 * hours behind that is then stepped to the right time (NTP finally answering) between
 * uploads. Real control plane and agents in this process; the agents get their clock
 * injected. Records are accepted and stored exactly once, acks still match, the device's
 * own time is kept on each record, and rollups and windowed totals use the control plane's
 * time (the device time corrected by the batch's sent_at offset, never in the future).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type AgentHandle } from '../agent/agent.js';
import { loadAgentConfig } from '../agent/config.js';
import { systemClock, type Clock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { ROLLUP_BUCKETS_MS } from '../control-plane/store/sqlite/telemetry-repository.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { driveInferences, inferOnce } from './helpers/agent-traffic.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { waitFor } from './helpers/processes.js';
import { byHand } from './helpers/wired-agent.js';

const HOURS = 3_600_000;

/** The real time shifted by an offset the test can change, like a device clock before and after NTP. */
class SkewedClock implements Clock {
  constructor(public offsetMs: number) {}
  readonly setTimeout = systemClock.setTimeout;
  readonly setInterval = systemClock.setInterval;
  now(): number {
    return Date.now() + this.offsetMs;
  }
}

describe('telemetry from devices with skewed clocks', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  const agents: AgentHandle[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-clock-skew-'));
    cp = await startControlPlane({ dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } }, { logger: silentLogger() });
    api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
  });

  afterAll(async () => {
    for (const agent of agents) await agent.shutdown();
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const start = async (deviceId: string, clock: Clock): Promise<AgentHandle> => {
    const agent = await startAgent(
      loadAgentConfig({
        env: {},
        flags: {
          deviceId,
          enrollToken: await api.createEnrollmentToken(deviceId),
          server: cp.addresses.grpc,
          dataDir: join(dir, deviceId),
          localApi: { port: 0 },
          uplink: { ackTimeout: '2s' },
          schedule: { uplinkCheck: '* * * * * *' },
        },
      }),
      // System metrics and drift windows run only when the test advances their clock: it never does.
      { logger: silentLogger(), clock, scheduleClocks: byHand(['system', 'driftWindow']).scheduleClocks },
    );
    agents.push(agent);
    return agent;
  };

  it("clock skew - records from clocks six hours ahead and behind are stored once, acknowledged, and rolled up at the control plane's time", async () => {
    const startedAt = Date.now();
    const aheadClock = new SkewedClock(6 * HOURS);
    const behindClock = new SkewedClock(-6 * HOURS);
    const ahead = await start('edge-clock-ahead', aheadClock);
    const behind = await start('edge-clock-behind', behindClock);
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration');
    for (const agent of [ahead, behind]) {
      await waitFor(
        () => inferOnce(agent.localApiUrl, [1, 2, 3, 4, 5, 6, 7, 8]).then((r) => r.status),
        (s) => s === 200,
        { what: 'model active' },
      );
    }

    expect(await Promise.all([driveInferences(ahead.localApiUrl, 60, 1), driveInferences(behind.localApiUrl, 60, 2)])).toEqual([60, 60]);
    // Between uploads, the device that was behind gets the right time: a step of six hours forward.
    await waitFor(
      () => behind.stats(),
      (s) => s.bufferDepth === 0,
      { what: 'behind device caught up' },
    );
    behindClock.offsetMs = 0;
    expect(await driveInferences(behind.localApiUrl, 40, 3)).toBe(40);

    for (const agent of [ahead, behind]) {
      await waitFor(
        () => agent.stats(),
        (s) => s.bufferDepth === 0 && s.recordsAcknowledged === s.recordsEnqueued,
        { what: `${agent.deviceId} drained` },
      );
    }
    const endedAt = Date.now();

    const db = new Database(join(dir, 'cp', 'control-plane.db'), { readonly: true });
    try {
      for (const [agent, skewMs] of [
        [ahead, 6 * HOURS],
        [behind, -6 * HOURS],
      ] as const) {
        const { recordsEnqueued, recordsDropped } = agent.stats();
        expect(recordsDropped).toBe(0);
        const rows = db
          .prepare(
            `SELECT count(*) AS n, count(DISTINCT boot || ':' || seq) AS distinctIds, min(time_ms) AS firstDeviceTime FROM telemetry_records WHERE device_id = ?`,
          )
          .get(agent.deviceId) as { n: number; distinctIds: number; firstDeviceTime: number };
        // Stored exactly once, and the device's own time is kept on the record.
        expect({ n: rows.n, distinctIds: rows.distinctIds }).toEqual({ n: recordsEnqueued, distinctIds: recordsEnqueued });
        expect(Math.abs(rows.firstDeviceTime - (startedAt + skewMs))).toBeLessThan(HOURS);

        // Every record is in exactly one bucket of each size, and every bucket is on the control plane's clock.
        for (const bucketMs of ROLLUP_BUCKETS_MS) {
          const buckets = db
            .prepare('SELECT bucket_start AS start, records FROM telemetry_rollups WHERE bucket_ms = ? AND device_id = ?')
            .all(bucketMs, agent.deviceId) as Array<{ start: number; records: number }>;
          expect(buckets.reduce((n, b) => n + b.records, 0)).toBe(recordsEnqueued);
          for (const { start } of buckets) {
            expect(start).toBeGreaterThanOrEqual(Math.floor(startedAt / bucketMs) * bucketMs);
            expect(start).toBeLessThanOrEqual(endedAt);
          }
        }
      }
    } finally {
      db.close();
    }

    // A window on the control plane's clock holds every record of both devices, whatever their clocks said.
    const windowed = await api.summary('', startedAt);
    expect(windowed.devices.map((d) => [d.deviceId, d.records])).toEqual([
      [ahead.deviceId, ahead.stats().recordsEnqueued],
      [behind.deviceId, behind.stats().recordsEnqueued],
    ]);
  });
});
