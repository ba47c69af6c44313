import type { DownChannel, UpChannel } from '../../common/device-protocol/topics.js';

export type UplinkStatus =
  | { type: 'connected' }
  | { type: 'disconnected'; reason: string }
  | { type: 'reconnecting'; attempt: number; delayMs: number }
  /** Final: the broker refused this device as not authorized (it was decommissioned); the uplink stops reconnecting. */
  | { type: 'refused'; reason: 'not_authorized'; message: string };

/**
 * The agent's link to the cloud, whatever carries it (MQTT, Azure IoT Hub). Delivery
 * guarantees are end to end (buffer until the control plane acks), so an uplink only
 * has to say whether the broker took a message.
 */
export interface Uplink {
  start(): Promise<void>;
  readonly connected: boolean;
  /** Resolves when the broker accepted the message (PUBACK); rejects when offline. */
  publish(channel: UpChannel, payload: Uint8Array): Promise<void>;
  onMessage(handler: (channel: DownChannel, payload: Buffer) => void): void;
  onStatus(handler: (status: UplinkStatus) => void): void;
  shutdown(): Promise<void>;
}
