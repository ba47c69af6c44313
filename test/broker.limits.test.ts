import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { ManualClock } from '../common/clock.js';
import { LogThrottle } from '../common/log-throttle.js';
import { silentLogger } from '../common/logger.js';
import { upTopic } from '../common/device-protocol/topics.js';
import { truncateUntrusted, UNTRUSTED_LOG_CHARS } from '../common/untrusted-text.js';
import { startEmbeddedBroker, type EmbeddedBroker, type EmbeddedBrokerOptions } from '../control-plane/device-link/embedded-mqtt/embedded-broker.js';
import { MqttPacketGate, type GateRefusal } from '../control-plane/device-link/embedded-mqtt/packet-gate.js';
import { capturingLogger } from './fixtures/logs.js';
import { connectClient, defaultBrokerLimits } from './helpers/mqtt.js';
import { waitFor } from './helpers/processes.js';

/** A fixed header claiming MQTT's largest remaining length (268,435,455 bytes) for a CONNECT. */
const HUGE_CONNECT_HEADER = Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f]);
const MAX_PACKET_BYTES = 64 * 1024;
const DEVICE = 'dev-limits';
const SECRET = 'secret-limits';

const sockets: Socket[] = [];
const clients: MqttClient[] = [];
afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const c of clients.splice(0)) c.end(true);
});

function rawSocket(url: string): Promise<Socket> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => resolve(socket));
    socket.on('error', () => undefined); // a reset from the broker is what some tests wait for
    socket.once('error', reject);
    sockets.push(socket);
  });
}

const socketClosed = (socket: Socket): Promise<void> => new Promise((resolve) => (socket.closed ? resolve() : socket.once('close', () => resolve())));

/** Writes junk after the header until the broker closes the socket; resolves with the bytes the client managed to write. */
async function floodUntilClosed(socket: Socket, header: Buffer): Promise<number> {
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  const gone = socketClosed(socket);
  let written = 0;
  let open = true;
  void gone.then(() => (open = false));
  socket.write(header);
  while (open) {
    written += chunk.length;
    if (!socket.write(chunk)) await Promise.race([new Promise((resolve) => socket.once('drain', resolve)), gone]);
  }
  return written;
}

async function startBroker(overrides: Partial<EmbeddedBrokerOptions> = {}): Promise<EmbeddedBroker> {
  return startEmbeddedBroker({
    host: '127.0.0.1',
    port: 0,
    maxPacketBytes: MAX_PACKET_BYTES,
    ...defaultBrokerLimits(),
    logger: silentLogger(),
    verifyDeviceCredential: (id, secret) => (id !== DEVICE ? 'unknown' : secret === SECRET ? 'ok' : 'bad_secret'),
    ...overrides,
  });
}

describe('untrusted text in logs', () => {
  it('log text - keeps short text as it is and cuts long text to a bounded length saying how much was cut', () => {
    expect(truncateUntrusted('dev-a')).toBe('dev-a');
    expect(truncateUntrusted(undefined)).toBeUndefined();
    const cut = truncateUntrusted('x'.repeat(65_535))!;
    expect(cut.length).toBeLessThan(UNTRUSTED_LOG_CHARS + 32);
    expect(cut.endsWith(`(+${65_535 - UNTRUSTED_LOG_CHARS} chars)`)).toBe(true);
  });

  it('log throttle - admits one line per reason per interval and reports how many it left out', () => {
    const clock = new ManualClock();
    const throttle = new LogThrottle({ clock, intervalMs: 10_000 });
    expect(throttle.admit('identity')).toEqual({ suppressed: 0 });
    for (let i = 0; i < 5; i++) expect(throttle.admit('identity')).toBeUndefined();
    expect(throttle.admit('will')).toEqual({ suppressed: 0 });
    clock.advance(10_000);
    expect(throttle.admit('identity')).toEqual({ suppressed: 5 });
    expect(throttle.admit('identity')).toBeUndefined();
  });
});

describe('packet gate', () => {
  let server: Server;
  let port: number;
  const accepted: Array<(socket: Socket) => void> = [];
  beforeAll(async () => {
    server = createServer((socket) => accepted.shift()?.(socket));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    port = (server.address() as { port: number }).port;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  /** A client socket and the gate around its server side, with what the gate passed on and refused. */
  async function gatePair(limits = { unauthenticatedBytes: 1024, authenticatedPacketBytes: 4096 }) {
    const serverSide = new Promise<Socket>((resolve) => accepted.push(resolve));
    const client = await rawSocket(`mqtt://127.0.0.1:${port}`);
    const refusals: GateRefusal[] = [];
    const gate = new MqttPacketGate(await serverSide, limits, (refusal) => refusals.push(refusal));
    const passed: Buffer[] = [];
    gate.on('data', (chunk: Buffer) => passed.push(chunk));
    gate.on('error', () => undefined);
    const gateClosed = new Promise<void>((resolve) => gate.once('close', () => resolve()));
    return { client, gate, refusals, passed, gateClosed, passedBytes: () => passed.reduce((n, b) => n + b.length, 0) };
  }

  it('packet gate - refuses a header claiming more than the CONNECT limit before passing on one byte', async () => {
    const { client, refusals, gateClosed, passedBytes } = await gatePair();
    client.write(HUGE_CONNECT_HEADER);
    await gateClosed;
    await socketClosed(client);
    expect(passedBytes()).toBe(0);
    expect(refusals).toEqual([{ reason: 'oversized', packetType: 1, remainingLength: 268_435_455, limit: 1024, authenticated: false }]);
  });

  it('packet gate - passes packets within the limit through unchanged, headers split across reads included', async () => {
    const { client, gate, refusals, passed, passedBytes } = await gatePair();
    // CONNECT-typed junk of 200 bytes (two-byte length), then a PINGREQ, written one byte at a time for the header.
    const packet = Buffer.concat([Buffer.from([0x10, 0xc8, 0x01]), Buffer.alloc(200, 7), Buffer.from([0xc0, 0x00])]);
    for (let i = 0; i < 3; i++) {
      client.write(packet.subarray(i, i + 1));
      await waitFor(passedBytes, (n) => n === i + 1);
    }
    client.write(packet.subarray(3));
    await waitFor(passedBytes, (n) => n === packet.length);
    expect(Buffer.concat(passed)).toEqual(packet);
    expect(refusals).toEqual([]);
    expect(gate.destroyed).toBe(false);
  });

  it('packet gate - allows the larger limit only after login, and refuses past it', async () => {
    const { client, gate, refusals, gateClosed, passedBytes } = await gatePair();
    gate.markAuthenticated();
    const publish = (bodyBytes: number): Buffer => Buffer.concat([Buffer.from([0x30, 0x80 | (bodyBytes & 0x7f), bodyBytes >> 7]), Buffer.alloc(bodyBytes)]);
    client.write(publish(4096));
    await waitFor(passedBytes, (n) => n === 4096 + 3);
    client.write(publish(4097));
    await gateClosed;
    expect(passedBytes()).toBe(4096 + 3);
    expect(refusals).toEqual([{ reason: 'oversized', packetType: 3, remainingLength: 4097, limit: 4096, authenticated: true }]);
  });

  it('packet gate - refuses a connection that sends more than the CONNECT limit in all before login', async () => {
    const { client, refusals, gateClosed } = await gatePair();
    // Small packets each within the limit, more than one CONNECT's worth together.
    const ping = Buffer.from([0xc0, 0x00]);
    client.write(Buffer.concat(Array.from({ length: 600 }, () => ping)));
    await gateClosed;
    expect(refusals.map((r) => r.reason)).toEqual(['unauthenticated_budget']);
  });

  it('packet gate - refuses a remaining length longer than four bytes', async () => {
    const { client, refusals, gateClosed, passedBytes } = await gatePair();
    client.write(Buffer.from([0x10, 0x80, 0x80, 0x80, 0x80, 0x01]));
    await gateClosed;
    expect(passedBytes()).toBe(0);
    expect(refusals.map((r) => r.reason)).toEqual(['malformed_length']);
  });
});

describe('embedded broker limits', () => {
  it('broker limits - closes a connection on a fixed header claiming the largest remaining length, before its body', async () => {
    const broker = await startBroker();
    try {
      const socket = await rawSocket(broker.url);
      socket.write(HUGE_CONNECT_HEADER);
      await socketClosed(socket);
      expect(broker.stats.refusedPackets).toBe(1);
      expect(broker.pendingConnections).toBe(0);
    } finally {
      await broker.shutdown();
    }
  });

  it('broker limits - closes four sockets flooding data after a huge header, and a device still logs in and publishes', async () => {
    const broker = await startBroker();
    try {
      const flooders = await Promise.all(Array.from({ length: 4 }, () => rawSocket(broker.url)));
      const written = await Promise.all(flooders.map((socket) => floodUntilClosed(socket, HUGE_CONNECT_HEADER)));
      expect(written).toHaveLength(4);
      expect(broker.stats.refusedPackets).toBe(4);
      await waitFor(
        () => broker.pendingConnections,
        (n) => n === 0,
      );
      const device = await connectClient(broker.url, { clientId: DEVICE, username: DEVICE, password: SECRET });
      clients.push(device);
      await device.publishAsync(upTopic(DEVICE, 'telemetry'), Buffer.alloc(16), { qos: 1 });
    } finally {
      await broker.shutdown();
    }
  });

  it('broker limits - a logged-in device may publish a payload of exactly maxPacketBytes on the longest topic', async () => {
    const longest = 'd'.repeat(64);
    const broker = await startBroker({ verifyDeviceCredential: (id) => (id === longest ? 'ok' : 'unknown') });
    try {
      const device = await connectClient(broker.url, { clientId: longest, username: longest, password: 'x' });
      clients.push(device);
      await device.publishAsync(upTopic(longest, 'telemetry'), Buffer.alloc(MAX_PACKET_BYTES), { qos: 1 });
      expect(broker.stats.refusedPackets).toBe(0);
      expect(broker.stats.refusedPublishes).toBe(0);
    } finally {
      await broker.shutdown();
    }
  });

  it('broker limits - closes connections past maxPendingConnections on arrival; a login frees its place', async () => {
    const broker = await startBroker({ maxPendingConnections: 2 });
    try {
      const idle = [await rawSocket(broker.url), await rawSocket(broker.url)];
      await waitFor(
        () => broker.pendingConnections,
        (n) => n === 2,
      );
      const third = await rawSocket(broker.url);
      await socketClosed(third);
      expect(broker.stats.refusedConnections).toBe(1);
      idle[0]!.destroy();
      await waitFor(
        () => broker.pendingConnections,
        (n) => n === 1,
      );
      const device = await connectClient(broker.url, { clientId: DEVICE, username: DEVICE, password: SECRET });
      clients.push(device);
      // Logged in, the device no longer counts against the limit.
      expect(broker.pendingConnections).toBe(1);
    } finally {
      await broker.shutdown();
    }
  });

  it('broker limits - closes a connection that has not logged in within connectTimeout on the injected clock, and no logged-in one', async () => {
    const clock = new ManualClock();
    // Long in real time, so aedes' own real-time backstop never fires first on a loaded machine.
    const timeoutMs = 10 * 60_000;
    const broker = await startBroker({ clock, connectTimeoutMs: timeoutMs });
    try {
      const device = await connectClient(broker.url, { clientId: DEVICE, username: DEVICE, password: SECRET });
      clients.push(device);
      const slow = await rawSocket(broker.url);
      slow.write(Buffer.from([0x10, 0x20, 0x00, 0x04])); // the start of a CONNECT, never finished
      await waitFor(
        () => broker.pendingConnections,
        (n) => n === 1,
      );
      clock.advance(timeoutMs - 1);
      expect(broker.closeStaleConnections()).toBe(0);
      clock.advance(1);
      expect(broker.closeStaleConnections()).toBe(1);
      await socketClosed(slow);
      expect(broker.stats.connectTimeouts).toBe(1);
      await device.publishAsync(upTopic(DEVICE, 'state'), Buffer.alloc(8), { qos: 1 });
      expect(device.connected).toBe(true);
    } finally {
      await broker.shutdown();
    }
  });
});

describe('embedded broker logs under attack', () => {
  const HOSTILE_ID = 'x'.repeat(65_535);
  const attempts = 200;
  const logBytes = (lines: Array<Record<string, unknown>>): number => lines.reduce((n, line) => n + JSON.stringify(line).length, 0);

  async function attack(broker: EmbeddedBroker): Promise<void> {
    for (let i = 0; i < attempts; i++) {
      await connectClient(broker.url, { clientId: HOSTILE_ID, username: HOSTILE_ID, password: 'x' }).then(
        (client) => {
          clients.push(client);
          throw new Error('a hostile client id was accepted');
        },
        () => undefined,
      );
    }
  }

  it('broker logs - 200 CONNECTs with a 65,535-character client id that reach authentication log a few short lines and count every one', async () => {
    const clock = new ManualClock();
    const { logger, lines } = capturingLogger('info');
    // A CONNECT limit large enough for the hostile id, so every attempt reaches the identity check.
    const broker = await startBroker({ clock, logger, maxConnectPacketBytes: 256 * 1024, refusalLogIntervalMs: 10_000 });
    try {
      const before = lines.length;
      await attack(broker);
      expect(broker.stats.refusedConnects).toBe(attempts);
      const refusals = lines.slice(before);
      expect(refusals).toHaveLength(1);
      expect(logBytes(refusals)).toBeLessThan(2048);
      // The next interval's first line says how many were left out.
      clock.advance(10_000);
      await attack(broker);
      const next = lines.slice(before + 1);
      expect(next).toHaveLength(1);
      expect(next[0]).toMatchObject({ refusal: 'identity', suppressed: attempts - 1 });
    } finally {
      await broker.shutdown();
    }
  });

  it('broker logs - with the default CONNECT limit the same attempts are refused on their header, logged once', async () => {
    const { logger, lines } = capturingLogger('info');
    const broker = await startBroker({ clock: new ManualClock(), logger });
    try {
      const before = lines.length;
      await attack(broker);
      expect(broker.stats.refusedPackets).toBe(attempts);
      const refusals = lines.slice(before);
      expect(refusals).toHaveLength(1);
      expect(refusals[0]).toMatchObject({ refusal: 'packet_oversized', authenticated: false });
      expect(logBytes(refusals)).toBeLessThan(2048);
    } finally {
      await broker.shutdown();
    }
  });
});
