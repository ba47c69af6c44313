import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { createServer as createTlsServer } from 'node:tls';
import { Aedes, type AuthenticateError, type Client } from 'aedes';
import { systemClock, type Clock } from '../../../common/clock.js';
import { listenFailed } from '../../../common/errors.js';
import { MAX_DEVICE_ID_LENGTH } from '../../../common/ids.js';
import { LogThrottle } from '../../../common/log-throttle.js';
import type { Logger } from '../../../common/logger.js';
import { UP_CHANNELS, upTopic } from '../../../common/device-protocol/topics.js';
import { truncateUntrusted } from '../../../common/untrusted-text.js';
import { checkClientIdentity, checkDevicePublish, checkDeviceSubscribe, checkDeviceWill } from '../device-acl.js';
import { MqttPacketGate, type GateRefusal } from './packet-gate.js';

export type CredentialVerdict = 'ok' | 'unknown' | 'decommissioned' | 'bad_secret';

export interface EmbeddedBrokerOptions {
  host: string;
  port: number;
  tls?: { cert: string; key: string } | undefined;
  /** Largest publish payload after login; a packet's header may claim this plus the longest device topic. */
  maxPacketBytes: number;
  /** Largest packet, and total bytes, a connection may send before it has logged in. */
  maxConnectPacketBytes: number;
  /** Connections accepted but not yet logged in, at most; more are closed on arrival. */
  maxPendingConnections: number;
  /** A connection that has not logged in within this is closed (also the TLS handshake's limit). */
  connectTimeoutMs: number;
  /** At most one log line per refusal reason per interval; the next line says how many were left out. */
  refusalLogIntervalMs: number;
  clock?: Clock | undefined;
  /** Answers synchronously when it can (the fleet's credential cache), so a CONNECT costs no store round trip. */
  verifyDeviceCredential(deviceId: string, secret: string): CredentialVerdict | Promise<CredentialVerdict>;
  logger: Logger;
}

export interface EmbeddedBroker {
  /** mqtt:// or mqtts:// URL the broker listens on. */
  readonly url: string;
  /** The control plane's own credential: full access, never given to a device. */
  readonly serviceCredential: { clientIdPrefix: string; username: string; password: string };
  /** A connection into the broker that never touches the network (for the control plane's own session). */
  connectInProcess(): Duplex;
  disconnectDevice(deviceId: string): void;
  readonly stats: BrokerStats;
  /** Connections accepted and not yet logged in. */
  readonly pendingConnections: number;
  /**
   * Closes connections that have not logged in within connectTimeoutMs of the clock. Runs on a
   * timer; tests with a ManualClock advance it and call this themselves.
   */
  closeStaleConnections(): number;
  shutdown(): Promise<void>;
}

export interface BrokerStats {
  refusedConnects: number;
  refusedPublishes: number;
  refusedSubscribes: number;
  /** Packets refused on their fixed header (too large for the connection's state, or malformed). */
  refusedPackets: number;
  /** Connections closed on arrival because maxPendingConnections were already waiting to log in. */
  refusedConnections: number;
  /** Connections closed because they had not logged in within connectTimeoutMs. */
  connectTimeouts: number;
}

/** PUBLISH's variable header around the topic: two bytes of topic length, two of packet id (MQTT 3.1.1). */
const PUBLISH_HEADER_BYTES = 4;

/** The longest topic a device may publish to: the header allowance over maxPacketBytes. */
const MAX_DEVICE_TOPIC_BYTES = Math.max(...UP_CHANNELS.map((channel) => Buffer.byteLength(upTopic('x'.repeat(MAX_DEVICE_ID_LENGTH), channel))));

/** How often, within one connect timeout, stale connections are looked for. */
const STALE_CHECKS_PER_TIMEOUT = 4;

const SERVICE_USERNAME = 'driftline-control-plane';
const SERVICE_CLIENT_PREFIX = 'driftline-cp-';

/** MQTT CONNACK return codes (3.1.1). */
const IDENTIFIER_REJECTED = 2;
const SERVER_UNAVAILABLE = 3;
const BAD_USERNAME_OR_PASSWORD = 4;
const NOT_AUTHORIZED = 5;
/** MQTT control packet type of PUBLISH. */
const MQTT_PUBLISH = 3;

function authError(returnCode: number, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

/**
 * The embedded default broker (aedes), with per-device authentication and the device
 * topic ACL. Sessions live in memory: delivery guarantees come from the end-to-end
 * acknowledgement between agent and control plane, not from the broker.
 */
export async function startEmbeddedBroker(options: EmbeddedBrokerOptions): Promise<EmbeddedBroker> {
  const { logger } = options;
  const clock = options.clock ?? systemClock;
  const servicePassword = randomBytes(32).toString('base64url');
  const serviceClients = new WeakSet<Client>();
  const stats: BrokerStats = { refusedConnects: 0, refusedPublishes: 0, refusedSubscribes: 0, refusedPackets: 0, refusedConnections: 0, connectTimeouts: 0 };
  // Every refusal below can be triggered by anyone who reaches the port, as fast as they can
  // send: the log carries at most one line per refusal per interval, and untrusted text
  // (client ids, user names, topics) only truncated, once per line.
  const throttle = new LogThrottle({ clock, intervalMs: options.refusalLogIntervalMs });
  const logRefusal = (refusal: string, fields: Record<string, unknown>, message: string): void => {
    const admitted = throttle.admit(refusal);
    if (admitted) logger.warn({ refusal, ...fields, ...(admitted.suppressed > 0 ? { suppressed: admitted.suppressed } : {}) }, message);
  };

  const broker = await Aedes.createBroker({
    // Device ids are up to 64 characters; MQTT 3.1's 23-character limit does not apply to 3.1.1.
    maxClientsIdLength: MAX_DEVICE_ID_LENGTH,
    // A backstop on real time: aedes stops this timer once CONNECT arrives; ours
    // (closeStaleConnections, on the injected clock) runs until the login completes.
    connectTimeout: options.connectTimeoutMs,
    authenticate(client, username, password, done) {
      if (username === SERVICE_USERNAME) {
        const ok = client.id.startsWith(SERVICE_CLIENT_PREFIX) && password?.toString() === servicePassword;
        if (ok) serviceClients.add(client);
        else {
          stats.refusedConnects++;
          logRefusal('service_credential', { clientId: truncateUntrusted(client.id) }, 'mqtt connect refused: bad service credential');
        }
        return ok ? done(null, true) : done(authError(BAD_USERNAME_OR_PASSWORD, 'bad service credential'), false);
      }
      const identity = checkClientIdentity(client.id, username);
      if (!identity.allowed) {
        stats.refusedConnects++;
        logRefusal(
          'identity',
          { clientId: truncateUntrusted(client.id), username: truncateUntrusted(username), detail: identity.reason },
          'mqtt connect refused',
        );
        return done(authError(IDENTIFIER_REJECTED, identity.reason), false);
      }
      const will = (client as unknown as { _will?: { topic: string; retain: boolean } })._will;
      const willDecision = checkDeviceWill(client.id, will);
      if (!willDecision.allowed) {
        stats.refusedConnects++;
        logRefusal('will', { deviceId: client.id, topic: truncateUntrusted(will?.topic), detail: willDecision.reason }, 'mqtt connect refused: will message');
        return done(authError(NOT_AUTHORIZED, willDecision.reason), false);
      }
      const decide = (verdict: CredentialVerdict): void => {
        if (verdict === 'ok') return done(null, true);
        stats.refusedConnects++;
        logRefusal(`credential_${verdict}`, { deviceId: client.id, verdict }, 'mqtt connect refused');
        return done(authError(verdict === 'decommissioned' ? NOT_AUTHORIZED : BAD_USERNAME_OR_PASSWORD, verdict), false);
      };
      let verdict: CredentialVerdict | Promise<CredentialVerdict>;
      try {
        verdict = options.verifyDeviceCredential(client.id, password?.toString() ?? '');
      } catch (err) {
        verdict = Promise.reject(err);
      }
      if (typeof verdict === 'string') return decide(verdict);
      verdict.then(decide, (err: unknown) => {
        // The store failed, not the device: refused as unavailable, so the agent retries.
        stats.refusedConnects++;
        options.logger.error({ err, deviceId: client.id }, 'mqtt connect refused: device credential could not be checked');
        done(authError(SERVER_UNAVAILABLE, 'credential check failed'), false);
      });
    },
    authorizePublish(client, packet, done) {
      if (!client) return done(null); // the broker's own messages
      if (serviceClients.has(client)) return done(null);
      if (packet.topic.startsWith('$SYS')) {
        stats.refusedPublishes++;
        return done(new Error('$SYS is reserved'));
      }
      const decision = checkDevicePublish(client.id, packet.topic, packet.retain);
      const payloadBytes = typeof packet.payload === 'string' ? Buffer.byteLength(packet.payload) : packet.payload.length;
      const tooLarge = payloadBytes > options.maxPacketBytes;
      if (decision.allowed && !tooLarge) return done(null);
      stats.refusedPublishes++;
      const reason = tooLarge ? `payload of ${payloadBytes} bytes exceeds ${options.maxPacketBytes}` : (decision as { reason: string }).reason;
      logRefusal(
        tooLarge ? 'publish_too_large' : 'publish_acl',
        { deviceId: client.id, topic: truncateUntrusted(packet.topic), detail: reason },
        'mqtt publish refused; disconnecting',
      );
      done(new Error(reason));
    },
    authorizeSubscribe(client, subscription, done) {
      if (serviceClients.has(client)) return done(null, subscription);
      const decision = checkDeviceSubscribe(client.id, subscription.topic);
      if (decision.allowed) return done(null, subscription);
      stats.refusedSubscribes++;
      logRefusal('subscribe_acl', { deviceId: client.id, filter: truncateUntrusted(subscription.topic), detail: decision.reason }, 'mqtt subscribe refused');
      done(null, null); // negative SUBACK (0x80), the connection stays up
    },
  });

  // Connections from the network, gated, with when they were accepted, until they log in.
  const pending = new Map<MqttPacketGate, number>();
  const gateLimits = {
    unauthenticatedBytes: options.maxConnectPacketBytes,
    authenticatedPacketBytes: options.maxPacketBytes + PUBLISH_HEADER_BYTES + MAX_DEVICE_TOPIC_BYTES,
  };
  const onGateRefusal = (refusal: GateRefusal): void => {
    stats.refusedPackets++;
    // A publish refused on its header is a refused publish too, as when its payload is checked.
    if (refusal.authenticated && refusal.packetType === MQTT_PUBLISH) stats.refusedPublishes++;
    logRefusal(`packet_${refusal.reason}`, { ...refusal }, 'mqtt packet refused on its header; connection closed');
  };
  const accept = (socket: Socket): void => {
    if (pending.size >= options.maxPendingConnections) {
      stats.refusedConnections++;
      logRefusal(
        'too_many_pending',
        { pending: pending.size, limit: options.maxPendingConnections },
        'mqtt connection refused: too many connections waiting to log in',
      );
      socket.destroy();
      return;
    }
    const gate = new MqttPacketGate(socket, gateLimits, onGateRefusal);
    pending.set(gate, clock.now());
    gate.once('close', () => pending.delete(gate));
    broker.handle(gate);
  };
  const closeStaleConnections = (): number => {
    const now = clock.now();
    let closed = 0;
    for (const [gate, acceptedAt] of pending) {
      if (now - acceptedAt < options.connectTimeoutMs) continue;
      pending.delete(gate);
      stats.connectTimeouts++;
      closed++;
      gate.destroy();
    }
    if (closed > 0)
      logRefusal('connect_timeout', { closed, timeoutMs: options.connectTimeoutMs }, 'mqtt connections closed: no login within the connect timeout');
    return closed;
  };
  const staleTimer = setInterval(closeStaleConnections, Math.max(1, Math.floor(options.connectTimeoutMs / STALE_CHECKS_PER_TIMEOUT)));
  staleTimer.unref();

  const clientsById = new Map<string, Client>();
  // 'client' fires when the session registers (after authenticate), before the CONNACK goes out.
  broker.on('client', (client) => {
    clientsById.set(client.id, client);
    const conn: unknown = client.conn;
    if (conn instanceof MqttPacketGate) {
      conn.markAuthenticated();
      pending.delete(conn);
    }
  });
  broker.on('clientDisconnect', (client) => {
    if (clientsById.get(client.id) === client) clientsById.delete(client.id);
  });
  broker.on('clientError', (client, err) => logger.debug({ clientId: truncateUntrusted(client.id), err: truncateUntrusted(err.message) }, 'mqtt client error'));

  const server: Server = options.tls
    ? createTlsServer({ cert: readFileSync(options.tls.cert), key: readFileSync(options.tls.key), handshakeTimeout: options.connectTimeoutMs }, accept)
    : createServer(accept);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    // The broker holds timers of its own: closed here, a failed start leaves nothing running.
    clearInterval(staleTimer);
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    throw listenFailed('mqtt', `${options.host}:${options.port}`, err);
  }
  const { port } = server.address() as AddressInfo;
  const url = `${options.tls ? 'mqtts' : 'mqtt'}://${options.host}:${port}`;
  logger.info({ url }, 'embedded mqtt broker listening');

  return {
    url,
    serviceCredential: { clientIdPrefix: SERVICE_CLIENT_PREFIX, username: SERVICE_USERNAME, password: servicePassword },
    stats,
    get pendingConnections() {
      return pending.size;
    },
    closeStaleConnections,
    connectInProcess() {
      const [ours, theirs] = duplexPair();
      broker.handle(theirs);
      return ours;
    },
    disconnectDevice(deviceId) {
      clientsById.get(deviceId)?.close();
    },
    async shutdown() {
      clearInterval(staleTimer);
      // Connections still logging in are no session of aedes' yet: closing the broker would not end them.
      for (const gate of pending.keys()) gate.destroy();
      // Closing the broker ends the client connections the server would otherwise wait for.
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Two cross-wired in-memory streams: what one side writes, the other reads. */
function duplexPair(): [Duplex, Duplex] {
  const wire = (peer: () => Duplex): Duplex =>
    new Duplex({
      read() {},
      write(chunk, _encoding, callback) {
        peer().push(chunk);
        callback();
      },
      final(callback) {
        peer().push(null);
        callback();
      },
      destroy(err, callback) {
        peer().destroy();
        callback(err);
      },
    });
  const a: Duplex = wire(() => b);
  const b: Duplex = wire(() => a);
  return [a, b];
}
