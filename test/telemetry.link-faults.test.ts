/**
 * A bad link between the agent and the control plane's broker: a loopback TCP proxy sits
 * on the MQTT connection and drops, stalls and flaps it while the agent records inference
 * telemetry and uploads it. Real control plane (embedded aedes broker, SQLite store), real
 * agent (SQLite buffer, onnxruntime), in this process. When the link is healthy again,
 * every record the agent buffered is stored exactly once and acknowledged exactly once.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { vibrationRowSampler } from '../demo/model/vibration-data.js';
import { inferOnce } from './helpers/agent-traffic.js';
import type { FleetApi } from './helpers/fleet-api.js';
import { waitFor } from './helpers/processes.js';
import { startEnrolledAgent, startTestControlPlane, type WiredAgent } from './helpers/wired-agent.js';
import { startTcpProxy, type TcpProxy } from './helpers/tcp-proxy.js';

const DEVICE = 'edge-bad-link';

describe('telemetry over a link that drops, stalls and flaps', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let proxy: TcpProxy;
  let agent: WiredAgent | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-link-faults-'));
    ({ cp, api } = await startTestControlPlane(dir));
    proxy = await startTcpProxy(Number(new URL(cp.addresses.mqtt).port));
  });

  afterAll(async () => {
    await agent?.shutdown();
    await proxy?.close();
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('link faults - every buffered record is stored and acknowledged exactly once after drops, stalls and flaps mid-upload', async () => {
    agent = await startEnrolledAgent(
      cp,
      api,
      DEVICE,
      join(dir, 'agent'),
      {
        // Through the proxy; short keepalive and ack timeout so a stalled link is noticed quickly.
        mqtt: { url: `mqtt://${proxy.address}`, keepalive: '1s', reconnectMin: '50ms', reconnectMax: '300ms', connectTimeout: '1s' },
        uplink: { maxBatchRecords: 20, batchDelay: '20ms', ackTimeout: '1s' },
        schedule: { uplinkCheck: '* * * * * *' },
        shutdownGrace: '10s',
      },
      { byHand: ['heartbeat', 'system', 'driftWindow'] },
    );
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration', [DEVICE]);
    let ok = 0;
    await waitFor(
      () => inferOnce(agent!.localApiUrl, [1, 2, 3, 4, 5, 6, 7, 8]).then((r) => r.status),
      (s) => s === 200,
      { what: 'model active on the agent' },
    );
    ok++;

    // Inference is local: traffic goes on whatever the link does.
    const next = vibrationRowSampler(5);
    let running = true;
    const traffic = (async () => {
      while (running) {
        const { status } = await inferOnce(agent!.localApiUrl, next().features);
        if (status === 200) ok++;
      }
    })();
    const stored = (): number => cp.ingest.stats.recordsStored;
    const moreStored = async (what: string): Promise<void> => {
      const from = stored();
      await waitFor(stored, (n) => n >= from + 20, { what });
    };

    await moreStored('upload over a healthy link');

    // Drop: every connection is torn down and every new one refused while records keep coming.
    proxy.setMode('drop');
    const refusedFrom = proxy.stats.accepted;
    const okBeforeDrop = ok;
    await waitFor(
      () => [proxy.stats.accepted - refusedFrom, ok - okBeforeDrop],
      ([refused, made]) => refused! >= 3 && made! >= 50,
      { what: 'reconnects refused while records pile up' },
    );
    proxy.setMode('pass');
    await moreStored('upload after the drops');

    // Stall: the open connection goes silent mid-upload; the agent must notice (keepalive, ack timeout) and reconnect.
    proxy.setMode('stall');
    const stalledFrom = proxy.stats.stalledAccepts;
    await waitFor(
      () => proxy.stats.stalledAccepts,
      (n) => n >= stalledFrom + 1,
      { what: 'a reconnect into the stalled link' },
    );
    proxy.setMode('pass');
    await moreStored('upload after the stall');

    // Flap: the link comes and goes every 150 ms.
    proxy.setMode('flap', { flapEveryMs: 150 });
    const cutFrom = proxy.stats.cut;
    await waitFor(
      () => proxy.stats.cut,
      (n) => n >= cutFrom + 5,
      { what: 'connections cut by the flapping link' },
    );
    proxy.setMode('pass');

    running = false;
    await traffic;
    // Healthy again: the backlog drains to nothing.
    await waitFor(
      () => agent!.stats(),
      (s) => s.bufferDepth === 0 && s.recordsAcknowledged === s.recordsEnqueued,
      { what: 'buffer drained' },
    );
    const stats = agent.stats();
    expect(stats.recordsDropped).toBe(0);

    const db = new Database(join(dir, 'cp', 'control-plane.db'), { readonly: true });
    const rows = db
      .prepare(
        `SELECT count(*) AS n, count(DISTINCT boot || ':' || seq) AS distinctIds, coalesce(sum(kind = 'inference' AND ok = 1), 0) AS inferences FROM telemetry_records WHERE device_id = ?`,
      )
      .get(DEVICE) as Record<string, number>;
    db.close();
    // Stored exactly once: as many rows as records enqueued, no two with the same (boot, seq),
    // and one inference record for every inference the local API answered.
    expect(rows).toEqual({ n: stats.recordsEnqueued, distinctIds: stats.recordsEnqueued, inferences: ok });
    expect(cp.ingest.stats.recordsStored).toBe(stats.recordsEnqueued);
    expect(proxy.stats.bytesUp).toBeGreaterThan(0);
  });
});
