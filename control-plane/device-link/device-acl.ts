import { isValidDeviceId } from '../../common/ids.js';
import { UP_CHANNELS, downPrefix, upPrefix, type UpChannel } from '../../common/device-protocol/topics.js';

/**
 * Reasons never echo what the client sent (a topic, a client id): the caller logs those,
 * truncated, next to the reason.
 */

/**
 * The topic policy for devices, independent of any broker: a device publishes only to
 * the known channels of its own `up/` subtree, never retained, and subscribes only within
 * its own `down/` subtree. Pure, so it is tested on its own and reused by every broker
 * adapter.
 */
export type AclDecision = { allowed: true } | { allowed: false; reason: string };

const allow: AclDecision = { allowed: true };
const deny = (reason: string): AclDecision => ({ allowed: false, reason });

export function checkDevicePublish(deviceId: string, topic: string, retain: boolean): AclDecision {
  const prefix = upPrefix(deviceId);
  if (!topic.startsWith(prefix)) return deny(`device ${deviceId} may publish only under ${prefix}`);
  const channel = topic.slice(prefix.length);
  if (!UP_CHANNELS.includes(channel as UpChannel)) return deny('unknown up/ channel');
  if (retain) return deny('devices may not publish retained messages');
  return allow;
}

export function checkDeviceSubscribe(deviceId: string, filter: string): AclDecision {
  const prefix = downPrefix(deviceId);
  if (!filter.startsWith(prefix)) return deny(`device ${deviceId} may subscribe only under ${prefix}`);
  const rest = filter.slice(prefix.length);
  // Wildcards are fine inside the device's own down/ subtree, nowhere above it.
  if (rest !== '#' && rest !== '+' && !/^[a-z]+$/.test(rest)) return deny('invalid subscription filter under down/');
  return allow;
}

/** A will message would be published on the device's behalf: same rule as a publish. */
export function checkDeviceWill(deviceId: string, will: { topic: string; retain: boolean } | undefined): AclDecision {
  return will ? checkDevicePublish(deviceId, will.topic, will.retain) : allow;
}

export function checkClientIdentity(clientId: string, username: string | undefined): AclDecision {
  if (!isValidDeviceId(clientId)) return deny('the client id is not a valid device id (1-64 letters, digits, ., _ or -)');
  if (username !== clientId) return deny('the username must equal the client id (the device id)');
  return allow;
}
