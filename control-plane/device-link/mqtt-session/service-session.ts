import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import mqtt, { MqttClient, type IClientOptions } from 'mqtt';
import { encodeDown, type DownMessages } from '../../../common/device-protocol/messages.js';
import { ALL_UP_FILTER, downTopic, parseUpTopic, type DownChannel } from '../../../common/device-protocol/topics.js';
import { DriftlineError } from '../../../common/errors.js';
import type { Logger } from '../../../common/logger.js';
import { truncateUntrusted } from '../../../common/untrusted-text.js';
import type { UpHandler } from '../ports.js';

export interface ServiceSessionOptions {
  /** Where the broker is; for the embedded broker, `connect` opens an in-process stream instead. */
  url: string;
  connect?: (() => Duplex) | undefined;
  username?: string | undefined;
  password?: string | undefined;
  caFile?: string | undefined;
  clientId: string;
  /** On an external broker, replicas share the ingest through `$share/<group>/…`. */
  sharedGroup?: string | undefined;
  logger: Logger;
  onUp: UpHandler;
}

export interface ServiceSession {
  send<C extends DownChannel>(deviceId: string, channel: C, message: DownMessages[C]): Promise<void>;
  readonly connected: boolean;
  shutdown(): Promise<void>;
}

/**
 * Desired state is retained: a device that is offline now finds it when it subscribes. Acks
 * and commands are for a device that is connected now; a stale one must not greet it later.
 */
const RETAINED: Readonly<Record<DownChannel, boolean>> = { desired: true, ack: false, command: false, federated: false };

/**
 * The control plane's own MQTT session (to the embedded broker or an external one), shared
 * by both MQTT device links. Each inbound message is handled before its PUBACK goes out, so
 * the broker keeps anything the control plane had not finished with when it stopped.
 */
export async function connectServiceSession(options: ServiceSessionOptions): Promise<ServiceSession> {
  const { logger } = options;
  const clientOptions: IClientOptions = {
    clientId: options.clientId,
    username: options.username,
    password: options.password,
    ca: options.caFile ? readFileSync(options.caFile) : undefined,
    protocolVersion: 4,
    // A persistent session lets an external broker queue device messages while we restart.
    clean: false,
    reconnectPeriod: 1000,
    connectTimeout: 10_000,
  };
  const connect = options.connect;
  const client: MqttClient = connect ? new MqttClient(() => connect(), clientOptions) : mqtt.connect(options.url, clientOptions);

  client.handleMessage = (packet, done) => {
    const topic = packet.topic;
    const parsed = parseUpTopic(topic);
    if (!parsed) {
      logger.warn({ topic: truncateUntrusted(topic) }, 'ignoring message on unexpected topic');
      return done();
    }
    const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
    options.onUp(parsed.deviceId, parsed.channel, payload).then(
      () => done(),
      (err: unknown) => {
        // Not acknowledging to the device is the safe failure: it resends.
        logger.error({ err, deviceId: parsed.deviceId, channel: parsed.channel }, 'failed to handle device message');
        done();
      },
    );
  };
  client.on('error', (err) => logger.warn({ err: err.message }, 'service mqtt error'));
  client.on('reconnect', () => logger.debug('service mqtt reconnecting'));

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      client.end(true);
      reject(new DriftlineError('UPLINK_UNAVAILABLE', `cannot connect to the MQTT broker at ${options.url}: ${err.message}`, { cause: err }));
    };
    client.once('error', onError);
    client.once('connect', () => {
      client.off('error', onError);
      resolve();
    });
  });
  const filter = options.sharedGroup ? `$share/${options.sharedGroup}/${ALL_UP_FILTER}` : ALL_UP_FILTER;
  await client.subscribeAsync(filter, { qos: 1 });
  logger.info({ url: options.url, filter }, 'control plane subscribed to device uplinks');

  return {
    get connected() {
      return client.connected;
    },
    async send(deviceId, channel, message) {
      await client.publishAsync(downTopic(deviceId, channel), Buffer.from(encodeDown(channel, message)), { qos: 1, retain: RETAINED[channel] });
    },
    async shutdown() {
      await client.endAsync();
    },
  };
}

export const serviceClientId = (prefix: string): string => `${prefix}${randomUUID().slice(0, 8)}`;
