import type { DownChannel } from '../../../common/device-protocol/topics.js';
import type { DownMessages } from '../../../common/device-protocol/messages.js';
import { DriftlineError } from '../../../common/errors.js';
import type { Command, DesiredState, FederatedInvitation, TelemetryAck } from '../../../common/proto/driftline/v1/device_link.js';
import type { DeviceLink, DeviceLinkStats, UpHandler } from '../ports.js';
import type { ServiceSession } from './service-session.js';

/**
 * What both MQTT device links share: every message goes down over the control plane's own
 * session. They differ in where that session connects and in what else they run.
 */
export abstract class SessionDeviceLink implements DeviceLink {
  protected session: ServiceSession | undefined;

  abstract readonly kind: string;
  abstract readonly deviceUrl: string;
  abstract readonly stats: DeviceLinkStats;
  abstract start(onUp: UpHandler): Promise<void>;
  abstract disconnect(deviceId: string): void;
  abstract shutdown(): Promise<void>;

  get connected(): boolean {
    return this.session?.connected ?? false;
  }

  sendDesired(deviceId: string, desired: DesiredState): Promise<void> {
    return this.send(deviceId, 'desired', desired);
  }

  sendAck(deviceId: string, ack: TelemetryAck): Promise<void> {
    return this.send(deviceId, 'ack', ack);
  }

  sendCommand(deviceId: string, command: Command): Promise<void> {
    return this.send(deviceId, 'command', command);
  }

  sendFederated(deviceId: string, invitation: FederatedInvitation): Promise<void> {
    return this.send(deviceId, 'federated', invitation);
  }

  private async send<C extends DownChannel>(deviceId: string, channel: C, message: DownMessages[C]): Promise<void> {
    if (!this.session) throw new DriftlineError('UPLINK_UNAVAILABLE', 'the device link has not started');
    await this.session.send(deviceId, channel, message);
  }
}

export const NO_REFUSALS: DeviceLinkStats = Object.freeze({
  refusedConnects: 0,
  refusedPublishes: 0,
  refusedPackets: 0,
  refusedConnections: 0,
  connectTimeouts: 0,
  pendingConnections: 0,
});
