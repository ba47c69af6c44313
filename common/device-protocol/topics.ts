import { isValidDeviceId } from '../ids.js';

/**
 * The MQTT topic contract (what travels on each channel: ./messages.ts). A device publishes only under `up/` of its own subtree and
 * subscribes only under `down/` of its own subtree; the broker's ACL (and an external
 * broker's configuration) enforce exactly these two prefixes.
 */
export const TOPIC_ROOT = 'driftline/v1/d';

export type UpChannel = 'telemetry' | 'state' | 'result' | 'federated';
export type DownChannel = 'ack' | 'desired' | 'command' | 'federated';
export const UP_CHANNELS: readonly UpChannel[] = ['telemetry', 'state', 'result', 'federated'];
export const DOWN_CHANNELS: readonly DownChannel[] = ['ack', 'desired', 'command', 'federated'];

export const upTopic = (deviceId: string, channel: UpChannel): string => `${TOPIC_ROOT}/${deviceId}/up/${channel}`;
export const downTopic = (deviceId: string, channel: DownChannel): string => `${TOPIC_ROOT}/${deviceId}/down/${channel}`;
export const upPrefix = (deviceId: string): string => `${TOPIC_ROOT}/${deviceId}/up/`;
export const downPrefix = (deviceId: string): string => `${TOPIC_ROOT}/${deviceId}/down/`;
/** What the control plane subscribes to (wrapped in a shared subscription on external brokers). */
export const ALL_UP_FILTER = `${TOPIC_ROOT}/+/up/+`;

export function parseUpTopic(topic: string): { deviceId: string; channel: UpChannel } | undefined {
  const parts = topic.split('/');
  if (parts.length !== 6 || `${parts[0]}/${parts[1]}/${parts[2]}` !== TOPIC_ROOT || parts[4] !== 'up') return undefined;
  const deviceId = parts[3]!;
  const channel = parts[5] as UpChannel;
  if (!isValidDeviceId(deviceId) || !UP_CHANNELS.includes(channel)) return undefined;
  return { deviceId, channel };
}
