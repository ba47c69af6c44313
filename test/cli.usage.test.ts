import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));
// A directory without ./.driftline/admin.token, so no token is picked up by accident.
const cwd = mkdtempSync(join(tmpdir(), 'driftline-cli-usage-'));
afterAll(() => rmSync(cwd, { recursive: true, force: true }));

function driftline(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { ...process.env };
  delete env.DRIFTLINE_SERVER;
  delete env.DRIFTLINE_TOKEN;
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd, env }, (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr }));
  });
}

/** A port nothing listens on: the OS hands it out, then it is closed again. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('driftline CLI usage', () => {
  it('lists every command, the token lookup order and the exit codes in --help', async () => {
    const { code, stdout } = await driftline('--help');
    expect(code).toBe(0);
    for (const command of ['serve', 'devices', 'models', 'telemetry', 'tokens']) expect(stdout).toContain(command);
    expect(stdout).toContain('DRIFTLINE_TOKEN');
    expect(stdout).toMatch(/Exit codes:[\s\S]*6\s+conflict/);
  });

  it('exits 2 on an unknown option, with one error line on stderr', async () => {
    const { code, stdout, stderr } = await driftline('devices', 'list', '--no-such-option');
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/^error \[USAGE\]: /);
  });

  it('exits 2 on an unknown command and when no command is given', async () => {
    expect((await driftline('fly')).code).toBe(2);
    expect((await driftline()).code).toBe(2);
  });

  it('exits 2 when tokens create lacks a role or names one that does not exist', async () => {
    expect((await driftline('tokens', 'create', '--name', 'ci')).code).toBe(2);
    expect((await driftline('tokens', 'create', '--name', 'ci', '--role', 'root')).code).toBe(2);
  });

  it('exits 2 on a port that is not a port', async () => {
    expect((await driftline('serve', '--grpc-port', 'seventy')).code).toBe(2);
    expect((await driftline('serve', '--http-port', '70000')).code).toBe(2);
  });

  it('exits 2 on a duration it cannot read', async () => {
    expect((await driftline('devices', 'token', 'cam-1', '--ttl', 'tomorrow')).code).toBe(2);
  });

  it('exits 2 when devices label is given nothing to change', async () => {
    const { code, stderr } = await driftline('--server', `127.0.0.1:${await closedPort()}`, 'devices', 'label', 'cam-1');
    expect(code).toBe(2);
    expect(stderr).toMatch(/^error \[USAGE\]: /);
  });

  it('exits 2 when the model file to push cannot be read, before contacting the server', async () => {
    const { code } = await driftline('--server', `127.0.0.1:${await closedPort()}`, 'models', 'push', join(cwd, 'missing.onnx'), '--name', 'm');
    expect(code).toBe(2);
  });

  it('exits 2 when an explicit token file cannot be read', async () => {
    const { code } = await driftline('--token-file', join(cwd, 'no-token'), 'devices', 'list');
    expect(code).toBe(2);
  });

  it('exits 5 and says how to start the control plane when nothing listens at --server', async () => {
    const server = `127.0.0.1:${await closedPort()}`;
    const { code, stdout, stderr } = await driftline('--server', server, 'devices', 'list');
    expect(code).toBe(5);
    expect(stdout).toBe('');
    expect(stderr).toMatch(/^error \[UNAVAILABLE\]: /);
    expect(stderr).toContain(server);
    expect(stderr).toContain('driftline serve');
  });

  it('reads the server address from DRIFTLINE_SERVER', async () => {
    const server = `127.0.0.1:${await closedPort()}`;
    const env = { ...process.env, DRIFTLINE_SERVER: server };
    const { code, stderr } = await new Promise<{ code: number; stderr: string }>((resolve) =>
      execFile(process.execPath, [BIN, 'tokens', 'list'], { cwd, env }, (error, _stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stderr })),
    );
    expect(code).toBe(5);
    expect(stderr).toContain(server);
  });
});

describe('driftline CLI usage - help shows defaults as a user types them', () => {
  // Help wraps long lines: compare with the line breaks and indentation folded away.
  const help = async (bin: string, ...args: string[]): Promise<string> => {
    const { code, stdout } = await new Promise<{ code: number; stdout: string }>((resolve) =>
      execFile(process.execPath, [bin, ...args, '--help'], { cwd }, (error, out) => resolve({ code: error ? Number(error.code) : 0, stdout: out })),
    );
    expect(code).toBe(0);
    return stdout.replace(/\s+/g, ' ');
  };

  it('rollout start --help shows the bake as 10m and the waves as 1,10,50,100', async () => {
    const text = await help(BIN, 'rollout', 'start');
    expect(text).toContain('(default: 10m)');
    expect(text).toContain('(default: 1,10,50,100)');
    expect(text).not.toMatch(/600000|\[1,10,50,100\]|default: ""/);
  });

  it('keys show --help shows the warning window as 30d and the key folder without quotes', async () => {
    const text = await help(BIN, 'keys', 'show');
    expect(text).toContain('(default: 30d)');
    expect(text).toContain('(default: ./.driftline-keys)');
    expect(text).not.toContain('2592000000');
  });

  it('serve --help shows the default ports', async () => {
    const text = await help(BIN, 'serve');
    expect(text).toMatch(/--grpc-port <port> .*\(default: 7443\)/);
    expect(text).toMatch(/--http-port <port> .*\(default: 7480\)/);
    expect(text).toMatch(/--mqtt-port <port> .*\(default: 1883\)/);
  });

  it('driftline-agent run --help shows the default local API port and control plane address', async () => {
    const text = await help(fileURLToPath(new URL('../bin/driftline-agent.js', import.meta.url)), 'run');
    expect(text).toContain('(default: 7390)');
    expect(text).toContain('(default: 127.0.0.1:7443)');
  });
});
