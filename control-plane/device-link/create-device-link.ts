import { hostname } from 'node:os';
import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { ControlPlaneConfig } from '../config.js';
import type { CredentialVerdict } from './embedded-mqtt/embedded-broker.js';
import { EmbeddedMqttLink } from './embedded-mqtt/embedded-mqtt-link.js';
import { ExternalMqttLink } from './external-mqtt/external-mqtt-link.js';
import type { DeviceLink } from './ports.js';

export interface DeviceLinkDeps {
  clock: Clock;
  logger: Logger;
  /** The embedded broker's check of a device's credential on CONNECT. */
  verifyDeviceCredential(deviceId: string, secret: string): CredentialVerdict | Promise<CredentialVerdict>;
}

/**
 * The device link the configuration names: an external MQTT broker when `mqtt.url` is set, the
 * embedded broker otherwise. Each takes its compiled slice of the mqtt section as it is.
 */
export function createDeviceLink(mqtt: Pick<ControlPlaneConfig['mqtt'], 'external' | 'embedded'>, deps: DeviceLinkDeps): DeviceLink {
  const { clock, logger, verifyDeviceCredential } = deps;
  if (mqtt.external) {
    // The client id is stable per host, so an external broker keeps this replica's session across restarts.
    return new ExternalMqttLink({ ...mqtt.external, clientId: `driftline-cp-${hostname()}`.slice(0, 64), logger });
  }
  return new EmbeddedMqttLink({ ...mqtt.embedded, clock, verifyDeviceCredential, logger });
}
