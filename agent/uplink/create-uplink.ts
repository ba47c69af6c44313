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
      // The configuration's mqtt slice is already in the uplink's terms; the enrollment gives the rest.
      return new MqttUplink({ ...mqtt, url: mqtt.url ?? identity.uplinkUrl, deviceId: identity.deviceId, password: credential.password, logger });
    case 'sas-key':
    case 'x509':
      throw new DriftlineError(
        'CONFIG_INVALID',
        `this agent has no uplink for a ${credential.kind} credential yet (only MQTT passwords); enroll the device again`,
      );
  }
}
