import { readFileSync } from 'node:fs';
import mqtt, { type MqttClient } from 'mqtt';
import { DriftlineError } from '../../../common/errors.js';
import type { Logger } from '../../../common/logger.js';
import { DOWN_CHANNELS, downPrefix, upTopic, type DownChannel, type UpChannel } from '../../../common/device-protocol/topics.js';
import { backoffDelay } from '../backoff.js';
import type { Uplink, UplinkStatus } from '../ports.js';

export interface MqttUplinkOptions {
  url: string;
  deviceId: string;
  password: string;
  caFile?: string | undefined;
  keepaliveSeconds: number;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  connectTimeoutMs: number;
  /** How long to wait for a PUBACK (and for a polite disconnect) before giving up. */
  publishTimeoutMs: number;
  logger: Logger;
}

const CONNACK_NOT_AUTHORIZED = 5;

/** MQTT 3.1.1 uplink: client id = username = device id; reconnects with backoff and jitter. */
export class MqttUplink implements Uplink {
  private client: MqttClient | undefined;
  private messageHandlers: Array<(channel: DownChannel, payload: Buffer) => void> = [];
  private statusHandlers: Array<(status: UplinkStatus) => void> = [];
  private attempt = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  /** Set once the broker refused the device as not authorized: reconnecting would only be refused again. */
  private refused = false;
  private stopping = false;
  /** The down/ subscription is in place: acks and desired state can reach us. */
  private subscribed = false;

  constructor(private readonly options: MqttUplinkOptions) {}

  /**
   * Connected and subscribed. Between CONNACK and SUBACK an ack would be lost, so senders
   * wait for this rather than for the socket: what they sent in that gap went again after
   * the 'connected' status, as duplicates.
   */
  get connected(): boolean {
    return this.subscribed && (this.client?.connected ?? false);
  }

  onMessage(handler: (channel: DownChannel, payload: Buffer) => void): void {
    this.messageHandlers.push(handler);
  }

  onStatus(handler: (status: UplinkStatus) => void): void {
    this.statusHandlers.push(handler);
  }

  /** Starts connecting; does not wait for the broker (the agent works offline). */
  async start(): Promise<void> {
    const { url, deviceId, password, caFile, keepaliveSeconds, connectTimeoutMs, logger } = this.options;
    const client = mqtt.connect(url, {
      clientId: deviceId,
      username: deviceId,
      password,
      ca: caFile ? readFileSync(caFile) : undefined,
      protocolVersion: 4,
      clean: true,
      keepalive: keepaliveSeconds,
      connectTimeout: connectTimeoutMs,
      // Reconnects are ours, with backoff and jitter (mqtt.js only knows a fixed period).
      reconnectPeriod: 0,
      // Messages are never queued in memory while offline: the SQLite buffer holds them.
      queueQoSZero: false,
      // mqtt-packet otherwise pre-builds a 2-byte Buffer for every number below 65,536 on the
      // first packet: about 9 MB of heap held for the process's life, a device's idle RSS.
      writeCache: false,
    });
    this.client = client;
    const prefix = downPrefix(deviceId);
    client.on('connect', () => {
      // No Nagle: a batch written just after a small packet (the PUBACK of an ack) would wait
      // for the broker's delayed TCP ack, about 40 ms a batch, while a backlog drains.
      (client.stream as { setNoDelay?: (noDelay: boolean) => void }).setNoDelay?.(true);
      this.attempt = 0;
      this.subscribed = false;
      client.subscribe(`${prefix}#`, { qos: 1 }, (err, granted) => {
        if (err || granted?.some((g) => g.qos === 128)) logger.error({ err }, 'subscription to the down/ topics was refused');
        else {
          this.subscribed = true;
          this.emit({ type: 'connected' });
        }
      });
    });
    client.on('message', (topic, payload) => {
      const channel = topic.slice(prefix.length) as DownChannel;
      if (!topic.startsWith(prefix) || !DOWN_CHANNELS.includes(channel)) return;
      for (const handler of this.messageHandlers) handler(channel, payload);
    });
    client.on('error', (err) => {
      // CONNACK 5 (3.1.1 "not authorized"): the control plane revoked this device's credential.
      if ((err as { code?: unknown }).code === CONNACK_NOT_AUTHORIZED && !this.refused) {
        this.refused = true;
        this.emit({ type: 'refused', reason: 'not_authorized', message: err.message });
        return;
      }
      logger.warn({ err: err.message }, 'mqtt error');
    });
    client.on('close', () => {
      this.subscribed = false;
      if (this.stopping) return;
      this.emit({ type: 'disconnected', reason: 'connection closed' });
      this.scheduleReconnect();
    });
  }

  private scheduleReconnect(): void {
    if (this.reconnectTimer || this.stopping || this.refused) return;
    this.attempt++;
    const delayMs = backoffDelay(this.attempt, this.options.reconnectMinMs, this.options.reconnectMaxMs);
    this.emit({ type: 'reconnecting', attempt: this.attempt, delayMs });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (!this.stopping) this.client?.reconnect();
    }, delayMs);
  }

  private emit(status: UplinkStatus): void {
    for (const handler of this.statusHandlers) handler(status);
  }

  async publish(channel: UpChannel, payload: Uint8Array): Promise<void> {
    const client = this.client;
    if (!client?.connected) throw new DriftlineError('UPLINK_UNAVAILABLE', 'not connected to the broker');
    // A PUBACK lost with a dropped connection would otherwise leave the caller waiting
    // until some later reconnect; callers resend from their own buffer instead.
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new DriftlineError('UPLINK_UNAVAILABLE', 'the broker did not acknowledge the message in time')),
        this.options.publishTimeoutMs,
      );
    });
    try {
      await Promise.race([
        client.publishAsync(upTopic(this.options.deviceId, channel), Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength), { qos: 1 }),
        deadline,
      ]);
    } catch (err) {
      throw err instanceof DriftlineError ? err : new DriftlineError('UPLINK_UNAVAILABLE', 'the broker did not accept the message', { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends the session politely when the broker answers in time, otherwise drops it: everything unacknowledged is still buffered. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.reconnectTimer);
    const client = this.client;
    if (!client) return;
    let timer: NodeJS.Timeout | undefined;
    const forced = new Promise<void>((resolve) => {
      timer = setTimeout(() => client.end(true, {}, () => resolve()), this.options.publishTimeoutMs);
    });
    await Promise.race([client.endAsync(), forced]);
    clearTimeout(timer);
  }
}
