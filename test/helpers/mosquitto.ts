import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, writeFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { connectClient } from './mqtt.js';
import { freePort, waitFor } from './processes.js';

/**
 * The `mosquitto` binary, from $MOSQUITTO_BIN, the PATH or the sbin folders Debian
 * installs it to (which a non-root PATH often lacks); undefined when it is not installed.
 */
export function findMosquitto(): string | undefined {
  const candidates = [
    process.env.MOSQUITTO_BIN,
    ...(process.env.PATH ?? '')
      .split(delimiter)
      .filter(Boolean)
      .map((dir) => join(dir, 'mosquitto')),
    '/usr/sbin/mosquitto',
    '/usr/local/sbin/mosquitto',
    '/opt/homebrew/sbin/mosquitto',
  ];
  for (const candidate of candidates) {
    if (!candidate) continue;
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** "2.0.11", from `mosquitto -h` (which exits non-zero but prints the version first). */
export function mosquittoVersion(binary: string): string {
  const out = spawnSync(binary, ['-h'], { encoding: 'utf8' });
  return /mosquitto version (\S+)/.exec(`${out.stdout}${out.stderr}`)?.[1] ?? 'unknown';
}

export interface Mosquitto {
  readonly port: number;
  readonly url: string;
  /** Everything the broker logged so far, across restarts. */
  log(): string;
  /** Kills the broker (SIGKILL by default) and waits until it has exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts the broker again on the same port and waits until it accepts connections. */
  start(): Promise<void>;
}

/**
 * A real Mosquitto on 127.0.0.1, on a port the OS picked, anonymous and without
 * persistence: a restart loses every session and every queued message, which is the
 * harshest broker restart the control plane and the agent have to survive.
 */
export async function startMosquitto(options: { binary: string; dir: string }): Promise<Mosquitto> {
  const port = await freePort();
  const url = `mqtt://127.0.0.1:${port}`;
  const conf = join(options.dir, 'mosquitto.conf');
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'persistence false',
      // Started as root, Mosquitto 2 would switch to the `mosquitto` user; stay who we are.
      'user root',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'log_type notice',
      'log_type information',
      'log_type subscribe',
      'connection_messages true',
      '',
    ].join('\n'),
  );
  let output = '';
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  const start = async (): Promise<void> => {
    const proc = spawn(options.binary, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    proc.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    proc.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    await waitFor(
      async () => {
        if (proc.exitCode !== null) throw new Error(`mosquitto exited with ${proc.exitCode}: ${output}`);
        const probe = await connectClient(url, { clientId: `probe-${process.pid}`, connectTimeout: 1000 });
        await probe.endAsync();
        return true;
      },
      (ok) => ok,
      { timeoutMs: 15_000, intervalMs: 50, what: `mosquitto accepting connections on ${url}` },
    );
  };

  await start();
  return {
    port,
    url,
    log: () => output,
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (child && child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
    start,
  };
}
