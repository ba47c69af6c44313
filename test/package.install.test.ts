import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { userInfo, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { loadAgentConfig } from '../agent/config.js';
import { Stream } from '../common/proto/driftline/v1/device_link.js';
import { REPO_ROOT } from './helpers/processes.js';

const KIT = join(REPO_ROOT, 'packaging', 'install');
const DATA = 'var/lib/driftline-agent';

/** The install kit, staged into a temporary root with DESTDIR (no systemd, no real users touched). */
describe('the agent install kit', () => {
  let scratch: string;
  let dest: string;
  const user = userInfo().username;
  const mode = (path: string): string => (statSync(join(dest, path)).mode & 0o777).toString(8).padStart(4, '0');
  const owner = (path: string): number => statSync(join(dest, path)).uid;
  const run = (script: string, args: string[]) => {
    const result = spawnSync('sh', [join(KIT, script), ...args], { env: { PATH: process.env.PATH, DESTDIR: dest }, encoding: 'utf8' });
    expect(result.stderr + result.stdout).not.toMatch(/unknown option|No such file/);
    return result;
  };
  const fakeBinary = (name: string, version: string): string => {
    const file = join(scratch, name);
    writeFileSync(file, `#!/bin/sh\necho ${version}\n`, { mode: 0o755 });
    return file;
  };

  beforeAll(() => {
    scratch = mkdtempSync(join(tmpdir(), 'driftline-install-'));
    dest = join(scratch, 'root');
    mkdirSync(dest);
    writeFileSync(join(scratch, 'root.json'), '{"signed":"the operator root"}');
  });
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it('places binary, configuration, enrollment settings, trust root, data folder and unit with their owners and modes', () => {
    const result = run('install.sh', [
      '--binary',
      fakeBinary('agent-v1', '1.0.0'),
      '--user',
      user,
      '--server',
      'cp.example.com:7443',
      '--device-id',
      'edge-17',
      '--enroll-token',
      'secret-token',
      '--trusted-root',
      join(scratch, 'root.json'),
    ]);
    expect(result.status).toBe(0);
    expect(mode('usr/local/bin/driftline-agent')).toBe('0755');
    expect(spawnSync(join(dest, 'usr/local/bin/driftline-agent'), { encoding: 'utf8' }).stdout.trim()).toBe('1.0.0');
    expect(mode('etc/driftline/agent.yaml')).toBe('0640');
    expect(mode('etc/driftline/agent.env')).toBe('0600');
    expect(readFileSync(join(dest, 'etc/driftline/agent.env'), 'utf8')).toBe(
      'DRIFTLINE_AGENT_SERVER=cp.example.com:7443\nDRIFTLINE_AGENT_DEVICE_ID=edge-17\nDRIFTLINE_AGENT_ENROLL_TOKEN=secret-token\n',
    );
    expect(mode(DATA)).toBe('0700');
    expect(mode('var/cache/driftline-agent')).toBe('0700');
    expect(mode(`${DATA}/trust/root.json`)).toBe('0600');
    expect(owner(DATA)).toBe(userInfo().uid);
    expect(owner(`${DATA}/trust/root.json`)).toBe(userInfo().uid);
    expect(mode('etc/systemd/system/driftline-agent.service')).toBe('0644');
  });

  it('writes a unit that restarts on failure, runs as the service user and may write only its own folders', () => {
    const unit = readFileSync(join(dest, 'etc/systemd/system/driftline-agent.service'), 'utf8');
    expect(unit).not.toContain('@');
    expect(unit).toMatch(/^User=.+$/m);
    expect(unit).toContain(`User=${user}\n`);
    expect(unit).toContain('Restart=on-failure\n');
    expect(unit).toContain('ProtectSystem=strict\n');
    expect(unit).toContain('ReadWritePaths=/var/lib/driftline-agent /var/cache/driftline-agent\n');
    expect(unit).toContain('StateDirectory=driftline-agent\n');
    expect(unit).toContain('exec /usr/local/bin/driftline-agent run --config /etc/driftline/agent.yaml');
  });

  it('installs a configuration the agent accepts', () => {
    const config = loadAgentConfig({ file: join(dest, 'etc/driftline/agent.yaml'), env: {} });
    expect(config.dataDir).toBe('/var/lib/driftline-agent');
    expect(config.localApi.host).toBe('127.0.0.1');
  });

  it('upgrades the binary and keeps configuration, enrollment, pinned trust root and every buffered record', async () => {
    // The device has run: it holds an identity and three unsent records.
    writeFileSync(join(dest, DATA, 'identity.json'), '{"deviceId":"edge-17"}', { mode: 0o600 });
    const buffer = SqliteBuffer.open({ file: join(dest, DATA, 'buffer.db'), synchronous: 'FULL' });
    await Promise.all([1, 2, 3].map((n) => buffer.enqueue({ stream: Stream.STREAM_EVENTS, timeMs: n, body: new Uint8Array([n]) })));
    await buffer.close();
    const config = join(dest, 'etc/driftline/agent.yaml');
    writeFileSync(config, `${readFileSync(config, 'utf8')}# edited by the operator\n`);
    writeFileSync(join(scratch, 'other-root.json'), '{"signed":"someone else"}');

    const result = run('install.sh', [
      '--binary',
      fakeBinary('agent-v2', '2.0.0'),
      '--user',
      user,
      '--enroll-token',
      'new-token',
      '--trusted-root',
      join(scratch, 'other-root.json'),
    ]);
    expect(result.status).toBe(0);
    expect(spawnSync(join(dest, 'usr/local/bin/driftline-agent'), { encoding: 'utf8' }).stdout.trim()).toBe('2.0.0');
    expect(readFileSync(config, 'utf8')).toContain('# edited by the operator');
    expect(readFileSync(join(dest, 'etc/driftline/agent.env'), 'utf8')).toBe(
      'DRIFTLINE_AGENT_SERVER=cp.example.com:7443\nDRIFTLINE_AGENT_DEVICE_ID=edge-17\nDRIFTLINE_AGENT_ENROLL_TOKEN=new-token\n',
    );
    expect(readFileSync(join(dest, DATA, 'trust/root.json'), 'utf8')).toBe('{"signed":"the operator root"}');
    expect(readFileSync(join(dest, DATA, 'identity.json'), 'utf8')).toBe('{"deviceId":"edge-17"}');
    const reopened = SqliteBuffer.open({ file: join(dest, DATA, 'buffer.db'), synchronous: 'FULL' });
    expect(reopened.peek(10, 0).map((r) => r.timeMs)).toEqual([1, 2, 3]);
    await reopened.close();
    expect(mode(DATA)).toBe('0700');
  });

  it('uninstalls the binary and unit but keeps configuration and data unless purged', () => {
    expect(run('uninstall.sh', []).status).toBe(0);
    expect(existsSync(join(dest, 'usr/local/bin/driftline-agent'))).toBe(false);
    expect(existsSync(join(dest, 'etc/systemd/system/driftline-agent.service'))).toBe(false);
    expect(existsSync(join(dest, 'var/cache/driftline-agent'))).toBe(false);
    expect(existsSync(join(dest, DATA, 'buffer.db'))).toBe(true);
    expect(existsSync(join(dest, 'etc/driftline/agent.yaml'))).toBe(true);

    expect(run('uninstall.sh', ['--purge']).status).toBe(0);
    expect(existsSync(join(dest, DATA))).toBe(false);
    expect(existsSync(join(dest, 'etc/driftline'))).toBe(false);
  });

  it('refuses an unknown option with exit code 2', () => {
    const result = spawnSync('sh', [join(KIT, 'install.sh'), '--bogus'], { env: { PATH: process.env.PATH, DESTDIR: dest }, encoding: 'utf8' });
    expect(result.status).toBe(2);
  });
});
