import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { artifactCredential, identityFile, readIdentity, writeIdentity, type DeviceIdentity } from '../agent/enrollment/identity.js';
import { DriftlineError } from '../common/errors.js';

const IDENTITY: DeviceIdentity = {
  deviceId: 'edge-7',
  credential: { kind: 'mqtt-password', username: 'edge-7', password: 's3cret' },
  uplinkUrl: 'mqtts://broker.example:8883',
  artifactBaseUrl: 'https://cp.example:7480/',
  enrolledAtMs: 1_700_000_000_000,
};

describe('device identity file', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-identity-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads back what it wrote, the credential tagged by kind', () => {
    writeIdentity(dir, IDENTITY);
    expect(readIdentity(dir)).toEqual(IDENTITY);
    expect(JSON.parse(readFileSync(identityFile(dir), 'utf8'))).toMatchObject({ credential: { kind: 'mqtt-password' } });
  });

  it('reads a file written by an older agent (MQTT-named fields) as an MQTT password credential', () => {
    writeFileSync(
      identityFile(dir),
      JSON.stringify({
        deviceId: 'edge-7',
        mqttUsername: 'edge-7',
        mqttPassword: 's3cret',
        mqttUrl: 'mqtts://broker.example:8883',
        artifactBaseUrl: 'https://cp.example:7480/',
        enrolledAtMs: 1_700_000_000_000,
      }),
    );
    expect(readIdentity(dir)).toEqual(IDENTITY);
  });

  it('says a file that is neither shape is damaged (CONFIG_INVALID)', () => {
    writeFileSync(
      identityFile(dir),
      JSON.stringify({
        deviceId: 'edge-7',
        credential: { kind: 'mqtt-password', username: 'edge-7' },
        uplinkUrl: 'mqtt://x',
        artifactBaseUrl: 'https://x/',
        enrolledAtMs: 1,
      }),
    );
    expect(() => readIdentity(dir)).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
  });

  it('downloads artifacts with the MQTT credential, and refuses other kinds with CONFIG_INVALID', () => {
    expect(artifactCredential(IDENTITY)).toEqual({ username: 'edge-7', password: 's3cret' });
    const sas: DeviceIdentity = { ...IDENTITY, credential: { kind: 'sas-key', key: 'k' } };
    expect(() => artifactCredential(sas)).toThrow(DriftlineError);
    expect(() => artifactCredential(sas)).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
  });
});
