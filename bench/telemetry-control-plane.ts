/**
 * The control-plane side of bench:telemetry, in a worker thread (its own core, as a
 * separate process would have): embedded broker, service link, ingest and SQLite store.
 */
import { join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { systemClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { startEmbeddedBroker } from '../control-plane/broker/embedded-broker.js';
import { connectServiceLink, serviceClientId, type ServiceLink } from '../control-plane/broker/service-link.js';
import { parseControlPlaneConfig } from '../control-plane/config.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { TelemetryIngest } from '../control-plane/telemetry/ingest.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';

const { dir, deviceId } = workerData as { dir: string; deviceId: string };
const logger = silentLogger();
const { mqtt, ingest: ingestLimits } = parseControlPlaneConfig({ dataDir: dir });
const broker = await startEmbeddedBroker({
  host: '127.0.0.1',
  port: 0,
  maxPacketBytes: 4 * 1024 * 1024,
  maxConnectPacketBytes: mqtt.maxConnectPacketBytes,
  maxPendingConnections: mqtt.maxPendingConnections,
  connectTimeoutMs: mqtt.connectTimeout,
  refusalLogIntervalMs: mqtt.refusalLogInterval,
  verifyDeviceCredential: (id) => (id === deviceId ? 'ok' : 'unknown'),
  logger,
});
const db = openDatabase(join(dir, 'control-plane.db'));
const repository = new SqliteTelemetryRepository(db);
let link: ServiceLink | undefined;
const ingest = new TelemetryIngest({
  repository,
  devices: { recordSeen: async () => undefined, saveReported: async () => undefined, getDesired: async () => undefined },
  downlink: { publishAck: (id, payload) => link!.publish(id, 'ack', payload), publishDesired: async () => undefined },
  clock: systemClock,
  logger,
  // The configured ingest limits without the per-device rate limit: one device sends as fast as it can here.
  limits: { ...ingestLimits, deviceRate: undefined },
});
link = await connectServiceLink({
  url: broker.url,
  username: broker.serviceCredential.username,
  password: broker.serviceCredential.password,
  clientId: serviceClientId(broker.serviceCredential.clientIdPrefix),
  logger,
  onUp: (id, channel, payload) => ingest.handle(id, channel, payload),
});
parentPort!.postMessage({ url: broker.url });
parentPort!.on('message', async (message: string) => {
  if (message !== 'finish') return;
  const { stored, uniq } = db.prepare(`SELECT count(*) AS stored, count(DISTINCT boot || ':' || seq) AS uniq FROM telemetry_records WHERE device_id = ?`).get(deviceId) as { stored: number; uniq: number };
  await link!.shutdown();
  await broker.shutdown();
  db.close();
  parentPort!.postMessage({ stored, distinct: uniq });
});
