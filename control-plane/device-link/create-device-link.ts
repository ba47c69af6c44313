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

/** The device link the configuration names: an external MQTT broker when `mqtt.url` is set, the embedded broker otherwise. */
export function createDeviceLink(mqtt: ControlPlaneConfig['mqtt'], deps: DeviceLinkDeps): DeviceLink {
  const { clock, logger, verifyDeviceCredential } = deps;
  if (mqtt.url) {
    return new ExternalMqttLink({
      url: mqtt.url,
      username: mqtt.username,
      password: mqtt.password,
      caFile: mqtt.caFile,
      // Stable per host, so an external broker keeps this replica's session across restarts.
      clientId: `driftline-cp-${hostname()}`.slice(0, 64),
      sharedGroup: mqtt.sharedGroup,
      logger,
    });
  }
  return new EmbeddedMqttLink({
    host: mqtt.host,
    port: mqtt.port,
    tls: mqtt.tls,
    maxPacketBytes: mqtt.maxPacketBytes,
    maxConnectPacketBytes: mqtt.maxConnectPacketBytes,
    maxPendingConnections: mqtt.maxPendingConnections,
    connectTimeoutMs: mqtt.connectTimeout,
    refusalLogIntervalMs: mqtt.refusalLogInterval,
    clock,
    verifyDeviceCredential,
    logger,
  });
}
