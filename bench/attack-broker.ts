/**
 * `npm run bench:attack-broker [-- --sockets 4 --mb-per-socket 256 --attack-s 20 --settle-s 5 --repo <checkout>]`
 *
 * What an unauthenticated attacker costs the control plane's embedded broker: a real
 * `driftline serve` in its own process; `--sockets` raw TCP connections each send a fixed
 * header claiming MQTT's largest remaining length (`10 ff ff ff 7f`) and then junk, as fast
 * as the broker takes it, up to `--mb-per-socket`, reconnecting whenever the broker closes
 * one, for `--attack-s`; meanwhile `/healthz` on the
 * HTTP listener is polled and the server's RSS sampled. Then 200 CONNECTs with a
 * 65,535-character client id, counting the log bytes the server writes for them. The idle
 * `/healthz` latency and RSS, measured first in the same run, are the bare baseline.
 * `--repo` runs another checkout's `bin/driftline.js` (e.g. main's, for a before figure).
 * Progress goes to stderr; the last stdout line is JSON.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';

const HUGE_CONNECT_HEADER = Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f]);
const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const HOSTILE_CONNECTS = 200;
const HOSTILE_ID_CHARS = 65_535;
const log = (line: string): void => void process.stderr.write(`[attack-broker] ${line}\n`);
const round = (x: number): number => Math.round(x * 10) / 10;
const percentile = (xs: number[], p: number): number => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? Number.NaN;
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const { values } = parseArgs({
  options: {
    sockets: { type: 'string', default: '4' },
    'mb-per-socket': { type: 'string', default: '256' },
    'attack-s': { type: 'string', default: '20' },
    'settle-s': { type: 'string', default: '5' },
    repo: { type: 'string' },
  },
});
const SOCKETS = Number(values.sockets);
const BYTES_PER_SOCKET = Number(values['mb-per-socket']) * 1024 * 1024;
const ATTACK_MS = Number(values['attack-s']) * 1000;
const SETTLE_MS = Number(values['settle-s']) * 1000;
const REPO = resolve(values.repo ?? resolve(import.meta.dirname, '..'));

const dir = mkdtempSync(join(tmpdir(), 'driftline-attack-broker-'));
const server = spawn(
  process.execPath,
  [join(REPO, 'bin/driftline.js'), 'serve', '--data-dir', join(dir, 'cp'), '--grpc-port', '0', '--http-port', '0', '--mqtt-port', '0'],
  {
    cwd: REPO,
    env: { ...process.env, DRIFTLINE_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  },
);
let stderrBytes = 0;
server.stderr!.on('data', (chunk: Buffer) => (stderrBytes += chunk.length));

try {
  const ready = await new Promise<RegExpMatchArray>((resolveReady, reject) => {
    createInterface({ input: server.stdout! }).on('line', (line) => {
      const m = line.match(LISTENING);
      if (m) resolveReady(m);
    });
    server.once('exit', (code) => reject(new Error(`serve exited with ${code} before it was ready`)));
  });
  const mqttUrl = new URL(ready[2]!);
  const healthzUrl = `${ready[3]!}/healthz`;
  log(`serve ready (${REPO}): mqtt=${mqttUrl.href} http=${ready[3]}`);

  const rssMb = (): number => {
    const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
    return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? Number.NaN) / 1024;
  };
  const pollHealthz = async (until: () => boolean): Promise<number[]> => {
    const latencies: number[] = [];
    while (!until()) {
      const start = performance.now();
      await fetch(healthzUrl).then((r) => r.arrayBuffer());
      latencies.push(performance.now() - start);
      await sleep(20);
    }
    return latencies;
  };

  // Bare baseline: the idle server.
  await sleep(1000);
  const rssBefore = rssMb();
  const idleDeadline = Date.now() + 2000;
  const idleLatencies = await pollHealthz(() => Date.now() > idleDeadline);

  // The attack: huge headers, then junk until the broker closes the socket or the budget is spent.
  let rssPeak = rssBefore;
  const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, rssMb())), 100);
  const attackStart = Date.now();
  let attacking = true;
  const attackOver = (): boolean => Date.now() - attackStart > ATTACK_MS;
  /** One connection: the huge header, then junk until the broker closes it or this socket's budget or the attack's time is spent. */
  const floodOnce = (): Promise<{ closedByBroker: boolean; bytes: number; socket: Socket }> =>
    new Promise((done) => {
      const socket: Socket = connect(Number(mqttUrl.port), mqttUrl.hostname);
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      let bytes = 0;
      let finished = false;
      const finish = (closedByBroker: boolean): void => {
        if (finished) return;
        finished = true;
        done({ closedByBroker, bytes, socket });
      };
      socket.on('error', () => finish(true));
      socket.on('close', () => finish(true));
      socket.once('connect', () => {
        socket.write(HUGE_CONNECT_HEADER);
        const pump = (): void => {
          while (!finished) {
            if (bytes >= BYTES_PER_SOCKET || attackOver()) return finish(false);
            bytes += chunk.length;
            if (!socket.write(chunk)) return void socket.once('drain', pump);
          }
        };
        pump();
      });
    });
  /** An attacker's slot: reconnects whenever the broker closes it, until the attack's time is over. */
  const flood = async (): Promise<{ connections: number; closedByBroker: number; bytes: number }> => {
    const totals = { connections: 0, closedByBroker: 0, bytes: 0 };
    while (!attackOver()) {
      const once = await floodOnce();
      totals.connections++;
      totals.bytes += once.bytes;
      if (once.closedByBroker) {
        totals.closedByBroker++;
        continue;
      }
      // The broker kept it (and what it sent): hold it open until the attack ends.
      while (!attackOver() && !once.socket.destroyed) await sleep(100);
      once.socket.destroy();
    }
    return totals;
  };
  const floodsDone = Promise.all(Array.from({ length: SOCKETS }, flood)).finally(() => (attacking = false));
  const attackLatencies = await pollHealthz(() => !attacking);
  const floods = await floodsDone;
  const attackMs = Date.now() - attackStart;
  const sum = (read: (f: (typeof floods)[number]) => number): number => floods.reduce((n, f) => n + read(f), 0);
  log(`attack over in ${attackMs} ms: ${sum((f) => f.closedByBroker)} of ${sum((f) => f.connections)} connections closed by the broker`);
  const settleDeadline = Date.now() + SETTLE_MS;
  await pollHealthz(() => Date.now() > settleDeadline);
  clearInterval(sampler);
  const rssAfter = rssMb();

  // Log amplification: CONNECTs with a 65,535-character client id.
  const hostileId = 'x'.repeat(HOSTILE_ID_CHARS);
  const logBefore = stderrBytes;
  for (let i = 0; i < HOSTILE_CONNECTS; i++) {
    await new Promise<void>((done) => {
      const client = mqtt.connect(mqttUrl.href, {
        clientId: hostileId,
        username: hostileId,
        password: 'x',
        protocolVersion: 4,
        reconnectPeriod: 0,
        connectTimeout: 5000,
      });
      const end = (): void => {
        client.end(true);
        done();
      };
      client.once('connect', end);
      client.once('error', end);
      client.once('close', end);
    });
  }
  await sleep(500);
  const logBytes = stderrBytes - logBefore;

  const result = {
    bench: 'attack-broker',
    repo: REPO,
    sockets: SOCKETS,
    mb_written_by_attacker: round(sum((f) => f.bytes) / 1024 / 1024),
    attack_ms: attackMs,
    connections: sum((f) => f.connections),
    /** Connections the broker closed itself while they were sending. */
    sockets_closed: sum((f) => f.closedByBroker),
    rss_before_mb: round(rssBefore),
    rss_peak_mb: round(rssPeak),
    rss_after_mb: round(rssAfter),
    healthz_idle_p50_ms: round(percentile(idleLatencies, 50)),
    healthz_p50_ms: round(percentile(attackLatencies, 50)),
    healthz_max_ms: round(Math.max(...attackLatencies)),
    healthz_p50_vs_idle: round(percentile(attackLatencies, 50) / percentile(idleLatencies, 50)),
    hostile_connects: HOSTILE_CONNECTS,
    log_bytes_hostile_connects: logBytes,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  server.kill('SIGTERM');
  await new Promise((r) => (server.exitCode !== null ? r(undefined) : server.once('exit', r)));
  rmSync(dir, { recursive: true, force: true });
}
