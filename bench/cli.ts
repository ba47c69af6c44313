/**
 * npm run bench:cli: what one CLI call costs, as a process, against its bare baselines in the
 * same run: `node -e 0` (starting Node at all) and a bare grpc-js unary call (Node, grpc-js and
 * one round trip to the same control plane), next to `driftline --version` and
 * `driftline devices list` against a local control plane (`driftline serve`, compiled).
 * Medians of BENCH_CLI_RUNS runs each, interleaved so load on the machine hits all alike.
 * Prints one JSON line last. Targets (issue #10): version_s <= 0.15, one_call_s <= 0.4.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT, startProcess, stopProcess } from '../test/helpers/processes.js';

const RUNS = Number(process.env.BENCH_CLI_RUNS ?? 15);
const BIN = join(REPO_ROOT, 'bin/driftline.js');
const log = (line: string): void => void process.stderr.write(`${line}\n`);

// The compiled CLI is what is measured: build it if this checkout has not yet.
if (!existsSync(join(REPO_ROOT, 'dist/js/driftline.js'))) execFileSync(process.execPath, [join(REPO_ROOT, 'packaging/build-js.mjs')], { stdio: 'inherit' });

/** One grpc-js unary call with no generated code: raw bytes in (an empty ListDevicesRequest), raw bytes out. */
const BARE_GRPC_CALL = `
const grpc = require('@grpc/grpc-js');
const [server, token] = process.argv.slice(1);
const client = new grpc.Client(server, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set('authorization', 'Bearer ' + token);
client.makeUnaryRequest('/driftline.v1.DeviceService/ListDevices', (b) => b, (b) => b, Buffer.alloc(0), metadata, { deadline: Date.now() + 30000 }, (err) => {
  client.close();
  if (err) { console.error(err.message); process.exit(1); }
});`;

function seconds(args: string[]): number {
  const started = process.hrtime.bigint();
  execFileSync(process.execPath, args, { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, DRIFTLINE_TOKEN: undefined } });
  return Number(process.hrtime.bigint() - started) / 1e9;
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
};

const dir = mkdtempSync(join(tmpdir(), 'driftline-bench-cli-'));
const plane = await startProcess(
  BIN,
  ['serve', '--data-dir', join(dir, 'cp'), '--grpc-port', '0', '--mqtt-port', '0', '--http-port', '0'],
  /^driftline: listening grpc=(\S+) .* token-file=(\S+)$/,
  {
    env: { DRIFTLINE_LOG_LEVEL: 'error' },
  },
);
try {
  const server = plane.ready[1]!;
  const token = readFileSync(plane.ready[2]!, 'utf8').trim();
  const cases = {
    node: ['-e', '0'],
    grpc_call: ['-e', BARE_GRPC_CALL, server, token],
    version: [BIN, '--version'],
    one_call: [BIN, '--server', server, '--token', token, 'devices', 'list'],
  };
  const samples: Record<keyof typeof cases, number[]> = { node: [], grpc_call: [], version: [], one_call: [] };
  // One warm-up round (file cache), then interleaved runs.
  for (const args of Object.values(cases)) seconds(args);
  for (let i = 0; i < RUNS; i++) for (const [name, args] of Object.entries(cases)) samples[name as keyof typeof cases].push(seconds(args));
  const m = Object.fromEntries(Object.entries(samples).map(([name, values]) => [name, median(values)])) as Record<keyof typeof cases, number>;
  const round = (n: number): number => Math.round(n * 1000) / 1000;
  log(
    `node -e 0 ${round(m.node)} s, bare grpc-js call ${round(m.grpc_call)} s, driftline --version ${round(m.version)} s, driftline devices list ${round(m.one_call)} s (medians of ${RUNS})`,
  );
  console.log(
    JSON.stringify({
      bench: 'cli',
      runs: RUNS,
      node_s: round(m.node),
      grpc_call_s: round(m.grpc_call),
      version_s: round(m.version),
      one_call_s: round(m.one_call),
      version_over_node: round(m.version / m.node),
      one_call_over_grpc_call: round(m.one_call / m.grpc_call),
      version_target_met: m.version <= 0.15,
      one_call_target_met: m.one_call <= 0.4,
    }),
  );
} finally {
  await stopProcess(plane);
  rmSync(dir, { recursive: true, force: true });
}
