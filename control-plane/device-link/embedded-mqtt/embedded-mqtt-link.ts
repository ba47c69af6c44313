import { DriftlineError } from '../../../common/errors.js';
import { connectServiceSession, serviceClientId } from '../mqtt-session/service-session.js';
import { SessionDeviceLink } from '../mqtt-session/session-link.js';
import type { DeviceLinkStats, UpHandler } from '../ports.js';
import { startEmbeddedBroker, type EmbeddedBroker, type EmbeddedBrokerOptions } from './embedded-broker.js';

/**
 * The default device link: the embedded broker (per-device credentials, topic ACL) and the
 * control plane's own session into it over an in-process stream.
 */
export class EmbeddedMqttLink extends SessionDeviceLink {
  readonly kind = 'embedded';
  private broker: EmbeddedBroker | undefined;

  constructor(private readonly options: EmbeddedBrokerOptions) {
    super();
  }

  get deviceUrl(): string {
    if (!this.broker) throw new DriftlineError('UPLINK_UNAVAILABLE', 'the embedded broker has not started');
    return this.broker.url;
  }

  get stats(): DeviceLinkStats {
    const broker = this.broker;
    const s = broker?.stats;
    return {
      refusedConnects: s?.refusedConnects ?? 0,
      refusedPublishes: s?.refusedPublishes ?? 0,
      refusedPackets: s?.refusedPackets ?? 0,
      refusedConnections: s?.refusedConnections ?? 0,
      connectTimeouts: s?.connectTimeouts ?? 0,
      pendingConnections: broker?.pendingConnections ?? 0,
    };
  }

  async start(onUp: UpHandler): Promise<void> {
    const broker = await startEmbeddedBroker(this.options);
    try {
      this.session = await connectServiceSession({
        url: broker.url,
        connect: () => broker.connectInProcess(),
        username: broker.serviceCredential.username,
        password: broker.serviceCredential.password,
        clientId: serviceClientId(broker.serviceCredential.clientIdPrefix),
        logger: this.options.logger,
        onUp,
      });
    } catch (err) {
      await broker.shutdown();
      throw err;
    }
    this.broker = broker;
  }

  disconnect(deviceId: string): void {
    this.broker?.disconnectDevice(deviceId);
  }

  async shutdown(): Promise<void> {
    const { session, broker } = this;
    this.session = undefined;
    this.broker = undefined;
    try {
      await session?.shutdown();
    } finally {
      await broker?.shutdown();
    }
  }
}
