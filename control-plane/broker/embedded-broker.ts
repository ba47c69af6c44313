import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { Duplex } from 'node:stream';
import { createServer as createTlsServer } from 'node:tls';
import { Aedes, type AuthenticateError, type Client } from 'aedes';
import { listenFailed } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import { checkClientIdentity, checkDevicePublish, checkDeviceSubscribe, checkDeviceWill } from './device-acl.js';

export type CredentialVerdict = 'ok' | 'unknown' | 'decommissioned' | 'bad_secret';

export interface EmbeddedBrokerOptions {
  host: string;
  port: number;
  tls?: { cert: string; key: string } | undefined;
  maxPacketBytes: number;
  verifyDeviceCredential(deviceId: string, secret: string): CredentialVerdict;
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
  readonly stats: { refusedConnects: number; refusedPublishes: number; refusedSubscribes: number };
  shutdown(): Promise<void>;
}

const SERVICE_USERNAME = 'driftline-control-plane';
const SERVICE_CLIENT_PREFIX = 'driftline-cp-';

/** MQTT CONNACK return codes (3.1.1). */
const IDENTIFIER_REJECTED = 2;
const BAD_USERNAME_OR_PASSWORD = 4;
const NOT_AUTHORIZED = 5;

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
  const servicePassword = randomBytes(32).toString('base64url');
  const serviceClients = new WeakSet<Client>();
  const stats = { refusedConnects: 0, refusedPublishes: 0, refusedSubscribes: 0 };

  const broker = await Aedes.createBroker({
    // Device ids are up to 64 characters; MQTT 3.1's 23-character limit does not apply to 3.1.1.
    maxClientsIdLength: 64,
    authenticate(client, username, password, done) {
      if (username === SERVICE_USERNAME) {
        const ok = client.id.startsWith(SERVICE_CLIENT_PREFIX) && password?.toString() === servicePassword;
        if (ok) serviceClients.add(client);
        else stats.refusedConnects++;
        return ok ? done(null, true) : done(authError(BAD_USERNAME_OR_PASSWORD, 'bad service credential'), false);
      }
      const identity = checkClientIdentity(client.id, username);
      if (!identity.allowed) {
        stats.refusedConnects++;
        logger.warn({ clientId: client.id, reason: identity.reason }, 'mqtt connect refused');
        return done(authError(IDENTIFIER_REJECTED, identity.reason), false);
      }
      const will = (client as unknown as { _will?: { topic: string; retain: boolean } })._will;
      const willDecision = checkDeviceWill(client.id, will);
      if (!willDecision.allowed) {
        stats.refusedConnects++;
        logger.warn({ deviceId: client.id, reason: willDecision.reason }, 'mqtt connect refused: will message');
        return done(authError(NOT_AUTHORIZED, willDecision.reason), false);
      }
      const verdict = options.verifyDeviceCredential(client.id, password?.toString() ?? '');
      if (verdict === 'ok') return done(null, true);
      stats.refusedConnects++;
      logger.warn({ deviceId: client.id, verdict }, 'mqtt connect refused');
      return done(authError(verdict === 'decommissioned' ? NOT_AUTHORIZED : BAD_USERNAME_OR_PASSWORD, verdict), false);
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
      logger.warn({ deviceId: client.id, topic: packet.topic, reason }, 'mqtt publish refused; disconnecting');
      done(new Error(reason));
    },
    authorizeSubscribe(client, subscription, done) {
      if (serviceClients.has(client)) return done(null, subscription);
      const decision = checkDeviceSubscribe(client.id, subscription.topic);
      if (decision.allowed) return done(null, subscription);
      stats.refusedSubscribes++;
      logger.warn({ deviceId: client.id, filter: subscription.topic, reason: decision.reason }, 'mqtt subscribe refused');
      done(null, null); // negative SUBACK (0x80), the connection stays up
    },
  });

  const clientsById = new Map<string, Client>();
  // 'client' fires when the session registers, before the CONNACK goes out.
  broker.on('client', (client) => clientsById.set(client.id, client));
  broker.on('clientDisconnect', (client) => {
    if (clientsById.get(client.id) === client) clientsById.delete(client.id);
  });
  broker.on('clientError', (client, err) => logger.debug({ clientId: client.id, err: err.message }, 'mqtt client error'));

  const server: Server = options.tls
    ? createTlsServer({ cert: readFileSync(options.tls.cert), key: readFileSync(options.tls.key) }, broker.handle)
    : createServer(broker.handle);
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
    connectInProcess() {
      const [ours, theirs] = duplexPair();
      broker.handle(theirs);
      return ours;
    },
    disconnectDevice(deviceId) {
      clientsById.get(deviceId)?.close();
    },
    async shutdown() {
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
