import { DriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { AgentConfig } from '../config.js';
import type { DeviceIdentity } from '../enrollment/identity.js';
import { MqttUplink } from './mqtt/mqtt-uplink.js';
import type { Uplink } from './ports.js';

/**
 * The uplink the device's credential and configuration call for. Enrollment hands out MQTT
 * passwords today; an Azure IoT Hub uplink (SAS key or X.509) is a later adapter beside mqtt/.
 */
export function createUplink(input: { mqtt: AgentConfig['mqtt']; identity: DeviceIdentity; logger: Logger }): Uplink {
  const { mqtt, identity, logger } = input;
  const { credential } = identity;
  switch (credential.kind) {
    case 'mqtt-password':
      return new MqttUplink({
        url: mqtt.url ?? identity.uplinkUrl,
        deviceId: identity.deviceId,
        password: credential.password,
        caFile: mqtt.caFile,
        keepaliveSeconds: Math.max(1, Math.round(mqtt.keepalive / 1000)),
        reconnectMinMs: mqtt.reconnectMin,
        reconnectMaxMs: mqtt.reconnectMax,
        connectTimeoutMs: mqtt.connectTimeout,
        publishTimeoutMs: mqtt.connectTimeout,
        logger,
      });
    case 'sas-key':
    case 'x509':
      throw new DriftlineError('CONFIG_INVALID', `this agent has no uplink for a ${credential.kind} credential yet (only MQTT passwords); enroll the device again`);
  }
}
