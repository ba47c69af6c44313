import { connectServiceSession, type ServiceSessionOptions } from '../mqtt-session/service-session.js';
import { NO_REFUSALS, SessionDeviceLink } from '../mqtt-session/session-link.js';
import type { DeviceLinkStats, UpHandler } from '../ports.js';

/** The service session's options, less what only the embedded broker (an in-process stream) or the link itself (the up handler) gives. */
export type ExternalMqttLinkOptions = Omit<ServiceSessionOptions, 'connect' | 'onUp'>;

/**
 * An external MQTT broker (EMQX, HiveMQ, Mosquitto) that enforces the device ACL and
 * authenticates devices itself; the control plane is one more client of it.
 */
export class ExternalMqttLink extends SessionDeviceLink {
  readonly kind = 'external';
  /** The broker counts its own refusals. */
  readonly stats: DeviceLinkStats = NO_REFUSALS;

  constructor(private readonly options: ExternalMqttLinkOptions) {
    super();
  }

  get deviceUrl(): string {
    return this.options.url;
  }

  async start(onUp: UpHandler): Promise<void> {
    const { url, username, password, caFile, clientId, sharedGroup, logger } = this.options;
    this.session = await connectServiceSession({ url, username, password, caFile, clientId, sharedGroup, logger, onUp });
  }

  disconnect(deviceId: string): void {
    this.options.logger.warn({ deviceId }, 'decommissioned device stays connected to the external broker until it revokes the credential');
  }

  async shutdown(): Promise<void> {
    const session = this.session;
    this.session = undefined;
    await session?.shutdown();
  }
}
