/**
 * The control-plane side of bench:telemetry, in a worker thread (its own core, as a
 * separate process would have): the embedded device link (broker and service session), ingest and SQLite store.
 */
import { join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { systemClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { EmbeddedMqttLink } from '../control-plane/device-link/embedded-mqtt/embedded-mqtt-link.js';
import { parseControlPlaneConfig } from '../control-plane/config.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { TelemetryIngest } from '../control-plane/telemetry/ingest.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';

const { dir, deviceId } = workerData as { dir: string; deviceId: string };
const logger = silentLogger();
const { mqtt, ingest: ingestLimits } = parseControlPlaneConfig({ dataDir: dir });
const link = new EmbeddedMqttLink({
  ...mqtt.embedded,
  host: '127.0.0.1',
  port: 0,
  tls: undefined,
  maxPacketBytes: 4 * 1024 * 1024,
  verifyDeviceCredential: (id) => (id === deviceId ? 'ok' : 'unknown'),
  logger,
});
const db = openDatabase(join(dir, 'control-plane.db'));
const repository = new SqliteTelemetryRepository(db);
const ingest = new TelemetryIngest({
  repository,
  devices: { recordSeen: async () => undefined, saveReported: async () => undefined, getDesired: async () => undefined },
  downlink: link,
  clock: systemClock,
  logger,
  // The configured ingest limits without the per-device rate limit: one device sends as fast as it can here.
  limits: { ...ingestLimits, deviceRate: undefined },
});
await link.start((id, channel, payload) => ingest.handle(id, channel, payload));
parentPort!.postMessage({ url: link.deviceUrl });
parentPort!.on('message', async (message: string) => {
  if (message !== 'finish') return;
  const { stored, uniq } = db
    .prepare(`SELECT count(*) AS stored, count(DISTINCT boot || ':' || seq) AS uniq FROM telemetry_records WHERE device_id = ?`)
    .get(deviceId) as { stored: number; uniq: number };
  await link.shutdown();
  db.close();
  parentPort!.postMessage({ stored, distinct: uniq });
});
