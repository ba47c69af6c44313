import type { UpChannel } from '../../common/device-protocol/topics.js';
import type { Command, DesiredState, FederatedInvitation, TelemetryAck } from '../../common/proto/driftline/v1/device_link.js';

/**
 * Handles one message a device sent. The link acknowledges the message to its transport
 * only once this settles, so a control plane that stops mid-way leaves it with the transport.
 */
export type UpHandler = (deviceId: string, channel: UpChannel, payload: Buffer) => Promise<void>;

/** Refusals at the transport, for the metrics; a transport that refuses nothing itself reports zeros. */
export interface DeviceLinkStats {
  refusedConnects: number;
  refusedPublishes: number;
  /** Packets refused on their fixed header (too large for the connection's state, or malformed). */
  refusedPackets: number;
  /** Connections closed on arrival because too many were waiting to log in. */
  refusedConnections: number;
  /** Connections closed because they had not logged in in time. */
  connectTimeouts: number;
  /** Connections accepted and not yet logged in. */
  pendingConnections: number;
}

/**
 * How the control plane reaches devices and hears from them, whatever carries it (the
 * embedded MQTT broker, an external MQTT broker, later Azure IoT Hub). Callers say what a
 * device should have; how it gets there (a retained message, a twin property) is the
 * adapter's business.
 */
export interface DeviceLink {
  /** What carries it, for the health document: 'embedded' or 'external'. */
  readonly kind: string;
  /** Where devices connect (an mqtt:// or mqtts:// URL); known once started. */
  readonly deviceUrl: string;
  /** The control plane's own session is up: device messages arrive and sends can go. */
  readonly connected: boolean;
  readonly stats: DeviceLinkStats;
  /** Starts the transport and begins handing device messages to `onUp`; a failed start leaves nothing running. */
  start(onUp: UpHandler): Promise<void>;
  /** The device's desired state is now `desired`: it reaches the device now if it is connected, otherwise when it next connects. */
  sendDesired(deviceId: string, desired: DesiredState): Promise<void>;
  /** Acknowledges telemetry the control plane committed. */
  sendAck(deviceId: string, ack: TelemetryAck): Promise<void>;
  /** A one-off instruction for a device that is connected now. */
  sendCommand(deviceId: string, command: Command): Promise<void>;
  /** A federated round's invitation (train, evaluate, cancel) for a device connected now; one offline misses it. */
  sendFederated(deviceId: string, invitation: FederatedInvitation): Promise<void>;
  /** Drops the device's live connection, e.g. right after it is decommissioned (a transport that cannot, logs so). */
  disconnect(deviceId: string): void;
  /** Stops receiving, then stops the transport. */
  shutdown(): Promise<void>;
}
