import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { silentLogger } from '../common/logger.js';
import { downTopic, upTopic } from '../common/device-protocol/topics.js';
import { checkClientIdentity, checkDevicePublish, checkDeviceSubscribe } from '../control-plane/device-link/device-acl.js';
import { startEmbeddedBroker, type EmbeddedBroker } from '../control-plane/device-link/embedded-mqtt/embedded-broker.js';
import { closed, connectClient, defaultBrokerLimits } from './helpers/mqtt.js';

const secrets: Record<string, string> = { 'dev-a': 'secret-a', 'dev-b': 'secret-b', 'dev-gone': 'secret-gone' };

describe('device topic policy', () => {
  it('allows a device its own up/ channels and nothing else', () => {
    expect(checkDevicePublish('dev-a', upTopic('dev-a', 'telemetry'), false).allowed).toBe(true);
    expect(checkDevicePublish('dev-a', upTopic('dev-b', 'telemetry'), false).allowed).toBe(false);
    expect(checkDevicePublish('dev-a', downTopic('dev-a', 'desired'), false).allowed).toBe(false);
    expect(checkDevicePublish('dev-a', `${upTopic('dev-a', 'telemetry')}/extra`, false).allowed).toBe(false);
    expect(checkDevicePublish('dev-a', upTopic('dev-a', 'state'), true).allowed).toBe(false);
  });

  it('allows subscriptions only inside the device down/ subtree', () => {
    expect(checkDeviceSubscribe('dev-a', 'driftline/v1/d/dev-a/down/#').allowed).toBe(true);
    expect(checkDeviceSubscribe('dev-a', 'driftline/v1/d/+/down/#').allowed).toBe(false);
    expect(checkDeviceSubscribe('dev-a', 'driftline/v1/d/dev-a/#').allowed).toBe(false);
    expect(checkDeviceSubscribe('dev-a', '#').allowed).toBe(false);
    expect(checkDeviceSubscribe('dev-a', '$SYS/#').allowed).toBe(false);
  });

  it('federated - allows a device its own up/federated and down/federated, never another device’s', () => {
    expect(checkDevicePublish('dev-a', upTopic('dev-a', 'federated'), false).allowed).toBe(true);
    expect(checkDevicePublish('dev-a', upTopic('dev-b', 'federated'), false).allowed).toBe(false);
    expect(checkDevicePublish('dev-a', upTopic('dev-a', 'federated'), true).allowed).toBe(false);
    expect(checkDevicePublish('dev-a', downTopic('dev-a', 'federated'), false).allowed).toBe(false);
    expect(checkDeviceSubscribe('dev-a', downTopic('dev-a', 'federated')).allowed).toBe(true);
    expect(checkDeviceSubscribe('dev-a', downTopic('dev-b', 'federated')).allowed).toBe(false);
    expect(checkDeviceSubscribe('dev-a', 'driftline/v1/d/+/down/federated').allowed).toBe(false);
  });

  it('refuses client ids that are not device ids or differ from the username', () => {
    for (const id of ['+', '#', '__proto__', '$SYS', 'a/b', '', 'x'.repeat(65)]) {
      expect(checkClientIdentity(id, id).allowed, id).toBe(false);
    }
    expect(checkClientIdentity('dev-a', 'dev-b').allowed).toBe(false);
  });
});

describe('embedded broker', () => {
  let broker: EmbeddedBroker;
  const clients: MqttClient[] = [];
  const device = async (id: string, password = secrets[id] ?? 'nope', extra: object = {}): Promise<MqttClient> => {
    const client = await connectClient(broker.url, { clientId: id, username: id, password, ...extra });
    clients.push(client);
    return client;
  };

  beforeAll(async () => {
    broker = await startEmbeddedBroker({
      host: '127.0.0.1',
      port: 0,
      maxPacketBytes: 64 * 1024,
      ...defaultBrokerLimits(),
      logger: silentLogger(),
      verifyDeviceCredential: (id, secret) =>
        id === 'dev-gone' ? 'decommissioned' : !(id in secrets) ? 'unknown' : secrets[id] === secret ? 'ok' : 'bad_secret',
    });
  });
  afterAll(async () => {
    for (const c of clients) c.end(true);
    await broker.shutdown();
  });

  it('broker - accepts a device with its own credential', async () => {
    const a = await device('dev-a');
    expect(a.connected).toBe(true);
  });

  it('broker - refuses a wrong secret, an unknown and a decommissioned device', async () => {
    await expect(device('dev-a', 'wrong')).rejects.toMatchObject({ code: 4 });
    await expect(device('dev-unknown')).rejects.toMatchObject({ code: 4 });
    await expect(device('dev-gone')).rejects.toMatchObject({ code: 5 });
  });

  it('broker - refuses taking over another device client id with a valid credential', async () => {
    // dev-a's own secret, but posing as dev-b: the client id must equal the username.
    await expect(connectClient(broker.url, { clientId: 'dev-b', username: 'dev-a', password: 'secret-a' })).rejects.toMatchObject({ code: 2 });
    // and dev-b's id with dev-a's secret fails the credential check.
    await expect(device('dev-b', 'secret-a')).rejects.toMatchObject({ code: 4 });
  });

  it('broker - refuses ids like +, #, __proto__ and $SYS cleanly', async () => {
    for (const id of ['+', '#', '__proto__', '$SYS']) {
      await expect(connectClient(broker.url, { clientId: id, username: id, password: 'x' }), id).rejects.toMatchObject({ code: 2 });
    }
    // The broker is still serving.
    expect((await device('dev-b')).connected).toBe(true);
  });

  it('broker - refuses a will message on a foreign topic', async () => {
    await expect(
      device('dev-a', 'secret-a', { will: { topic: upTopic('dev-b', 'state'), payload: Buffer.from('x'), qos: 1, retain: false } }),
    ).rejects.toMatchObject({ code: 5 });
    await expect(
      device('dev-a', 'secret-a', { will: { topic: upTopic('dev-a', 'state'), payload: Buffer.from('x'), qos: 1, retain: true } }),
    ).rejects.toMatchObject({ code: 5 });
  });

  it('broker - gives a negative suback for another device subtree, wildcards above its own and $SYS', async () => {
    const a = await device('dev-a');
    for (const filter of [downTopic('dev-b', 'desired'), 'driftline/v1/d/+/down/#', '#', '$SYS/#', upTopic('dev-a', 'telemetry')]) {
      // mqtt.js turns a 0x80 grant into a rejection carrying the SUBACK.
      const error = await a.subscribeAsync(filter, { qos: 1 }).then(
        () => undefined,
        (err: { packet?: { granted: number[] } }) => err,
      );
      expect(error?.packet?.granted[0], filter).toBe(128);
    }
    expect(a.connected).toBe(true);
    const own = await a.subscribeAsync('driftline/v1/d/dev-a/down/#', { qos: 1 });
    expect(own[0]?.qos).toBe(1);
  });

  it('broker - disconnects a device that publishes to another device, to $SYS or retained, and delivers nothing', async () => {
    const b = await device('dev-b');
    const seen: string[] = [];
    await b.subscribeAsync('driftline/v1/d/dev-b/down/#', { qos: 1 });
    b.on('message', (topic) => seen.push(topic));
    for (const [topic, retain] of [
      [downTopic('dev-b', 'desired'), false],
      ['$SYS/broker/x', false],
      [upTopic('dev-a', 'state'), true],
    ] as const) {
      const a = await device('dev-a');
      const gone = closed(a);
      a.publish(topic, 'evil', { qos: 1, retain });
      await gone;
    }
    // A round trip on b proves the broker processed everything sent before.
    await b.publishAsync(upTopic('dev-b', 'state'), 'ok', { qos: 1 });
    expect(seen).toEqual([]);
  });

  it('broker - disconnects a device that publishes an oversized payload', async () => {
    const a = await device('dev-a');
    const gone = closed(a);
    a.publish(upTopic('dev-a', 'telemetry'), Buffer.alloc(65 * 1024), { qos: 1 });
    await gone;
  });

  it('broker - lets the control plane kick a device', async () => {
    const a = await device('dev-a');
    const gone = closed(a);
    broker.disconnectDevice('dev-a');
    await gone;
  });
});
