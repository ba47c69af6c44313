/**
 * Interop: the control plane and a real agent talking through an external Mosquitto 2
 * broker (`driftline serve --mqtt-url`, config `mqtt: { url }`) instead of the embedded one.
 *
 * What this proves: enrollment hands devices the external broker's URL; the control plane
 * ingests through a `$share/<group>/…` shared subscription, so several replicas can split
 * the load; telemetry is stored exactly once; and a broker restart that loses every session
 * and every queued message (Mosquitto without persistence, killed with SIGKILL) loses no
 * record: the agent keeps what it buffered until the control plane acknowledges it, and
 * the (device, boot, seq) key turns every resend into a counted duplicate, never a second row.
 *
 * What an external broker must enforce itself. Mosquitto runs here anonymous and without
 * Driftline's device ACL; the embedded broker (control-plane/device-link/device-acl.ts) is the
 * reference for what a production broker has to be configured to do, because the control
 * plane trusts the device id in the topic:
 *   - authenticate every device with its own credential (username = client id = device
 *     id; the secret handed out at enrollment), e.g. a Mosquitto auth plugin or dynamic
 *     security backed by the fleet store, and refuse revoked/decommissioned devices;
 *   - refuse a client id that differs from the username (no client-id takeover);
 *   - per-device topic ACL: publish only to `driftline/v1/d/<id>/up/{telemetry,state,result}`,
 *     never retained, subscribe only under `driftline/v1/d/<id>/down/` (in Mosquitto:
 *     `pattern write driftline/v1/d/%u/up/+` and `pattern read driftline/v1/d/%u/down/#`,
 *     with %u = %c enforced), no wildcards above the device's own subtree, nothing on `$SYS`;
 *   - the same rule for will messages, which are published on the device's behalf;
 *   - a maximum packet size (`max_packet_size`) that matches `mqtt.maxPacketBytes`;
 *   - disconnect a decommissioned device: the control plane can only stop trusting it,
 *     it cannot kick it off a broker it does not run;
 *   - give the control plane's own client its full-access credential and support
 *     shared subscriptions (Mosquitto >= 1.6, EMQX, HiveMQ).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import type { TelemetrySummary } from '../common/proto/driftline/v1/telemetry.js';
import { ALL_UP_FILTER } from '../common/device-protocol/topics.js';
import { startAgent, type AgentHandle } from '../agent/agent.js';
import { loadAgentConfig } from '../agent/config.js';
import { readIdentity } from '../agent/enrollment/identity.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { vibrationRowSampler } from '../demo/model/vibration-data.js';
import { driveInferences, inferOnce } from './helpers/agent-traffic.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { findMosquitto, mosquittoVersion, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';
import { waitFor } from './helpers/processes.js';
import { byHand } from './helpers/wired-agent.js';

const MOSQUITTO = findMosquitto();
const DEVICE = 'edge-mosquitto-1';
const SHARED_GROUP = 'driftline';

describe.skipIf(!MOSQUITTO)(
  `interop - agent and control plane through Mosquitto ${MOSQUITTO ? mosquittoVersion(MOSQUITTO) : '(skipped: no mosquitto binary; apt-get install mosquitto)'}`,
  () => {
    let dir: string;
    let broker: Mosquitto;
    let cp: ControlPlane;
    let api: FleetApi;
    let agent: AgentHandle;

    /** Counted from the stored rows themselves (a window from the epoch), not from running totals. */
    const storedRows = (): Promise<TelemetrySummary> => api.summary(DEVICE, 1);

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'driftline-mosquitto-'));
      broker = await startMosquitto({ binary: MOSQUITTO!, dir });
      cp = await startControlPlane(
        { dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { url: broker.url, sharedGroup: SHARED_GROUP } },
        { logger: silentLogger() },
      );
      api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);

      const token = await api.createEnrollmentToken(DEVICE, { site: 'interop' });
      const config = loadAgentConfig({
        env: {},
        flags: {
          deviceId: DEVICE,
          enrollToken: token,
          server: cp.addresses.grpc,
          dataDir: join(dir, 'agent'),
          localApi: { port: 0 },
          // Fast reconnects and resends keep the restart short; the defaults are for fleets.
          mqtt: { reconnectMin: '100ms', reconnectMax: '500ms' },
          uplink: { ackTimeout: '2s', maxBatchRecords: 20 },
          schedule: { uplinkCheck: '* * * * * *' },
          shutdownGrace: '30s',
        },
      });
      // Only inferences and events make records here (system metrics and drift windows wait on a clock
      // the test never advances), so counts can be compared at any moment.
      agent = await startAgent(config, { logger: silentLogger(), scheduleClocks: byHand(['system', 'driftWindow']).scheduleClocks });

      await api.uploadModel('vibration', buildDemoModel({}).bytes);
      await api.deploy('vibration', [DEVICE]);
      await waitFor(
        () => inferOnce(agent.localApiUrl, [1, 2, 3, 4, 5, 6, 7, 8]).then((r) => r.status),
        (s) => s === 200,
        { what: 'model active on the agent' },
      );
    });

    afterAll(async () => {
      await agent?.shutdown();
      api?.close();
      await cp?.shutdown();
      await broker?.kill();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it('interop - enrollment hands the device the Mosquitto URL and the agent connects there', async () => {
      expect(cp.addresses.mqtt).toBe(broker.url);
      expect(readIdentity(join(dir, 'agent'))).toMatchObject({
        deviceId: DEVICE,
        credential: { kind: 'mqtt-password', username: DEVICE },
        uplinkUrl: broker.url,
      });
      // The model came down the `desired` topic and the reported state went up: both ways work.
      const [device] = await waitFor(
        () => api.listDevices(),
        (d) => d[0]?.reported?.activeModel?.name === 'vibration',
        { what: 'reported state' },
      );
      expect(device).toMatchObject({ id: DEVICE, online: true });
      expect(broker.log()).toContain(`as ${DEVICE} `);
    });

    it('interop - the control plane ingests through a shared subscription on the external broker', () => {
      // Mosquitto logs each SUBSCRIBE as "<client id> <qos> <filter>".
      const subscriptions = broker
        .log()
        .split('\n')
        .filter((line) => line.includes(ALL_UP_FILTER));
      expect(subscriptions.some((line) => / driftline-cp-\S+ 1 /.test(line) && line.endsWith(`$share/${SHARED_GROUP}/${ALL_UP_FILTER}`))).toBe(true);
      expect(subscriptions.every((line) => line.includes(`$share/${SHARED_GROUP}/`))).toBe(true);
    });

    it('interop - stores the agent telemetry exactly once', async () => {
      expect(await driveInferences(agent.localApiUrl, 20)).toBe(20);
      const { stats, rows } = await waitFor(
        async () => ({ stats: agent.stats(), rows: (await storedRows()).devices[0] }),
        ({ stats, rows }) => stats.bufferDepth === 0 && stats.recordsAcknowledged === stats.recordsEnqueued && rows?.records === stats.recordsEnqueued,
        { what: 'every record acknowledged and stored' },
      );
      expect(rows!.records).toBe(stats.recordsEnqueued);
      expect(rows!.inferences).toBe(21); // the 20 above and the one that found the model active
      expect((await api.summary(DEVICE)).devices[0]!.records).toBe(stats.recordsEnqueued);
      expect(stats.recordsDropped).toBe(0);
    });

    it('interop - stores every buffered record exactly once after Mosquitto is killed and restarted mid-stream', async () => {
      const health = async (): Promise<{ uplinkConnected: boolean; bufferDepth: number }> =>
        ((await (await fetch(`${agent.localApiUrl}/healthz`)).json()) as { details: { uplinkConnected: boolean; bufferDepth: number } }).details;
      const next = vibrationRowSampler(23);
      let sent = 0;
      let running = true;
      const traffic = (async () => {
        while (running) {
          const { status } = await inferOnce(agent.localApiUrl, next().features);
          if (status !== 200) throw new Error(`inference answered ${status}`);
          sent++;
        }
      })();
      try {
        await waitFor(
          () => sent,
          (n) => n >= 100,
          { what: 'traffic before the kill' },
        );
        await broker.kill('SIGKILL');
        const sentAtKill = sent;
        // Inference is local: it goes on, and what it records waits in the buffer.
        await waitFor(health, (h) => !h.uplinkConnected && h.bufferDepth >= 50, { what: 'records buffered while the broker is down' });
        expect(sent).toBeGreaterThan(sentAtKill);
        await broker.start();
        const sentAtRestart = sent;
        await waitFor(health, (h) => h.uplinkConnected, { what: 'agent reconnected' });
        await waitFor(
          () => sent,
          (n) => n >= sentAtRestart + 100,
          { what: 'traffic after the restart' },
        );
      } finally {
        running = false;
        await traffic;
      }

      const stats = await waitFor(
        () => agent.stats(),
        (s) => s.bufferDepth === 0 && s.recordsAcknowledged === s.recordsEnqueued,
        {
          what: 'every buffered record acknowledged',
          timeoutMs: 45_000,
        },
      );
      await agent.shutdown();
      const final = agent.stats();
      expect(final).toEqual({ ...stats, bufferDepth: 0 });
      expect(final.recordsDropped).toBe(0);

      const rows = (await storedRows()).devices[0]!;
      const totals = await api.summary(DEVICE);
      expect(rows.records).toBe(final.recordsEnqueued);
      expect(rows.inferences).toBe(21 + sent);
      expect(totals.devices[0]!.records).toBe(final.recordsEnqueued);
      expect(totals.recordsStored).toBe(final.recordsEnqueued);
      expect(cp.ingest.stats.recordsStored).toBe(final.recordsEnqueued);
      // Resends after the restart may arrive twice; they are counted as duplicates, never stored.
      expect(totals.duplicatesDropped).toBe(cp.ingest.stats.duplicates);
      expect(totals.rejectedBatches).toBe(0);
    }, 120_000);
  },
);
