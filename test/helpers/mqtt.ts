import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { EmbeddedBrokerOptions } from '../../control-plane/device-link/embedded-mqtt/embedded-broker.js';
import { parseControlPlaneConfig } from '../../control-plane/config.js';

/** Connects and resolves with the client, or rejects with the CONNACK refusal. */
export function connectClient(url: string, options: IClientOptions): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...options });
    client.once('connect', () => resolve(client));
    client.once('error', (err) => {
      client.end(true);
      reject(err);
    });
  });
}

/** Resolves once the client's connection closes (e.g. the broker dropped it). */
export const closed = (client: MqttClient): Promise<void> => new Promise((resolve) => client.once('close', () => resolve()));

/** The embedded broker's connection limits as `driftline serve` configures them by default, with overrides. */
export function defaultBrokerLimits(overrides: Partial<BrokerLimits> = {}): BrokerLimits {
  const { maxConnectPacketBytes, maxPendingConnections, connectTimeoutMs, refusalLogIntervalMs } = parseControlPlaneConfig({ dataDir: '.' }).mqtt.embedded;
  return { maxConnectPacketBytes, maxPendingConnections, connectTimeoutMs, refusalLogIntervalMs, ...overrides };
}

type BrokerLimits = Pick<EmbeddedBrokerOptions, 'maxConnectPacketBytes' | 'maxPendingConnections' | 'connectTimeoutMs' | 'refusalLogIntervalMs'>;
