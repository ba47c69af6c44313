/**
 * `npm run bench:agent-footprint [-- --minutes 10 --binary dist/driftline-agent-linux-x64 --runs 5 --concurrency 4 --node-options='--max-semi-space-size=1']`
 *
 * The packaged agent's footprint: binary size, start-to-ready time (an enrolled data folder
 * with the demo model active, against a control plane), idle RSS with the model loaded, and
 * RSS during and after `--minutes` of steady inference (a leak shows as growth). Builds the
 * binary first unless --binary is given. Progress goes to stderr; the last stdout line is JSON.
 *
 * The baseline, in the same run: bare Node (the same pinned runtime the binary carries, stripped
 * the same way) with onnxruntime-node and one session of the same model, no agent code
 * (bench/bare-onnxruntime.cjs), with Node's default flags; `idle_rss_vs_bare` is the agent's
 * idle RSS over that one's. File-backed RSS depends on how a file came into the page cache (the
 * kernel maps whole large folios on a fault), so every executable file either side runs (the
 * agent binary, whose addons it extracts itself; the bare Node and onnxruntime-node's binaries)
 * is a fresh copy written the same way in the scratch folder.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { silentLogger } from '../common/logger.js';
import { fleetApi } from '../test/helpers/fleet-api.js';
import { startControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { vibrationRowSampler } from '../demo/model/vibration-data.js';
import { buildAgentBinary } from '../packaging/build-agent.js';
import { agentBuildInputs, ensureNodeRuntime, type Arch } from '../packaging/node-runtime.js';

const ROOT = resolve(import.meta.dirname, '..');
const READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const TARGETS = { idle_rss_mb: 80, idle_rss_vs_bare: 1.25, ready_ms: 1500 };
/** How long start-up garbage gets to settle before an idle RSS sample (agent and bare alike). */
const SETTLE_MS = 3000;
const log = (line: string): void => void process.stderr.write(`[agent-footprint] ${line}\n`);
const mb = (kb: number): number => Math.round((kb / 1024) * 10) / 10;
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    binary: { type: 'string' },
    runs: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '4' },
    /** NODE_OPTIONS for the agent; by default the ones the systemd unit sets, so the figures are the installed agent's. */
    'node-options': { type: 'string' },
    /** A folder to write both sides' /proc/<pid>/smaps into at the idle sample (agent.smaps, bare.smaps), to see which mappings differ. */
    'smaps-out': { type: 'string' },
    /** Also write a V8 heap snapshot of the idle agent there (agent.heapsnapshot; its NODE_OPTIONS gain --heapsnapshot-signal). */
    'heap-snapshot': { type: 'boolean', default: false },
  },
});
const unitNodeOptions =
  readFileSync(join(ROOT, 'packaging', 'install', 'driftline-agent.service'), 'utf8').match(/^Environment=NODE_OPTIONS=(.*)$/m)?.[1] ?? '';
const nodeOptions = values['node-options'] ?? unitNodeOptions;
const minutes = Number(values.minutes);
const runs = Number(values.runs);
const concurrency = Number(values.concurrency);
if (!(minutes >= 0) || !(runs >= 1) || !(concurrency >= 1)) throw new Error('--minutes, --runs and --concurrency must be positive numbers');

interface Agent {
  child: ChildProcess;
  readyMs: number;
  localApi: string;
  exited: Promise<number | null>;
}

const scratch = mkdtempSync(join(tmpdir(), 'driftline-footprint-'));
const home = join(scratch, 'home');
const env: NodeJS.ProcessEnv = {
  PATH: '/usr/bin:/bin',
  HOME: home,
  DRIFTLINE_LOG_LEVEL: 'warn',
  DRIFTLINE_AGENT_NATIVE_DIR: join(scratch, 'native'),
  ...(nodeOptions || values['heap-snapshot']
    ? { NODE_OPTIONS: `${nodeOptions}${values['heap-snapshot'] ? ' --heapsnapshot-signal=SIGUSR2' : ''}`.trim() }
    : {}),
};

function startAgent(binary: string, args: string[]): Promise<Agent> {
  const started = process.hrtime.bigint();
  const child = spawn(binary, ['run', ...args], { cwd: scratch, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  return new Promise((res, rej) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = line.match(READY);
      if (m) res({ child, readyMs: Number(process.hrtime.bigint() - started) / 1e6, localApi: m[2]!, exited });
    });
    void exited.then((code) => rej(new Error(`agent exited with ${code} before ready:\n${stderr}`)));
  });
}

async function stop(agent: Agent): Promise<number | null> {
  agent.child.kill('SIGTERM');
  return agent.exited;
}

/** RSS of a process and the part of it that is onnxruntime's library and the binary's own pages. */
interface Memory {
  rss: number;
  anon: number;
  file: number;
  onnxruntime: number;
  binary: number;
  /** Resident kB per mapping name ([anon] for anonymous ones), largest first. */
  top: Array<[string, number]>;
}

function memory(pid: number, executable: string = binaryPath): Memory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => Number(status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm'))?.[1] ?? 0);
  let onnxruntime = 0;
  let binary = 0;
  let current = '';
  const byName = new Map<string, number>();
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const header = line.match(/^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/);
    if (header) current = header[1] ?? '';
    else if (line.startsWith('Rss:')) {
      const kb = Number(line.split(/\s+/)[1]);
      byName.set(current.split('/').at(-1) || '[anon]', (byName.get(current.split('/').at(-1) || '[anon]') ?? 0) + kb);
      if (current.includes('libonnxruntime')) onnxruntime += kb;
      else if (current === executable) binary += kb;
    }
  }
  const top = [...byName].sort((a, b) => b[1] - a[1]).slice(0, 6);
  return { rss: field('VmRSS'), anon: field('RssAnon'), file: field('RssFile'), onnxruntime, binary, top };
}

const describeMemory = (m: Memory): string =>
  `${mb(m.rss)} MB (anon ${mb(m.anon)}, file ${mb(m.file)}; libonnxruntime ${mb(m.onnxruntime)}, node binary ${mb(m.binary)}; top: ${m.top.map(([n, kb]) => `${n} ${mb(kb)}`).join(', ')})`;

/**
 * Bare Node + onnxruntime-node + one session of `model`, no agent code, on `node`: its idle
 * memory after the same settling time as the agent's, with Node's default flags unless `nodeOptions`.
 */
async function bareIdle(node: string, model: string, nodeOptions?: string): Promise<Memory> {
  // onnxruntime-node as the agent loads it, from files freshly written (its other dependencies from node_modules).
  const bareDir = join(scratch, 'bare');
  const ort = join(ROOT, 'node_modules', 'onnxruntime-node');
  const ortNative = join('bin', 'napi-v6', 'linux', process.arch);
  for (const rel of ['package.json', 'dist', join(ortNative, 'onnxruntime_binding.node'), join(ortNative, 'libonnxruntime.so.1')])
    freshCopy(join(ort, rel), join(bareDir, 'node_modules', 'onnxruntime-node', rel));
  freshCopy(join(ROOT, 'bench', 'bare-onnxruntime.cjs'), join(bareDir, 'bare-onnxruntime.cjs'));
  const child = spawn(node, [join(bareDir, 'bare-onnxruntime.cjs'), model, 'features', '8'], {
    cwd: scratch,
    env: { PATH: env.PATH, HOME: home, NODE_PATH: join(ROOT, 'node_modules'), ...(nodeOptions ? { NODE_OPTIONS: nodeOptions } : {}) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  try {
    await new Promise<void>((res, rej) => {
      createInterface({ input: child.stdout! }).on('line', (line) => line === 'ready' && res());
      void exited.then((code) => rej(new Error(`bare onnxruntime exited with ${code}:\n${stderr}`)));
    });
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    saveSmaps(child.pid!, nodeOptions ? 'bare-same-flags' : 'bare');
    return memory(child.pid!, node);
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
}

async function infer(localApi: string, row: number[]): Promise<boolean> {
  const response = await fetch(`${localApi}/v2/models/vibration/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [{ name: 'features', shape: [1, row.length], datatype: 'FP32', data: row }] }),
  });
  await response.arrayBuffer();
  return response.ok;
}

async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Writes a copy of a file or folder the way the agent writes its extracted addons (one write per file), executable bits kept. */
function freshCopy(from: string, to: string): void {
  if (statSync(from).isDirectory()) {
    for (const name of readdirSync(from)) freshCopy(join(from, name), join(to, name));
    return;
  }
  mkdirSync(dirname(to), { recursive: true });
  writeFileSync(to, readFileSync(from));
  chmodSync(to, statSync(from).mode & 0o777);
}

function saveSmaps(pid: number, name: string): void {
  if (!values['smaps-out']) return;
  mkdirSync(values['smaps-out'], { recursive: true });
  writeFileSync(join(values['smaps-out'], `${name}.smaps`), readFileSync(`/proc/${pid}/smaps`));
}

/** Asks the agent for a heap snapshot (it writes one into its working folder) and moves it to `to` once complete. */
async function saveHeapSnapshot(child: ChildProcess, to: string): Promise<void> {
  const written = (): string[] => readdirSync(scratch).filter((f) => f.endsWith('.heapsnapshot'));
  const before = new Set(written());
  child.kill('SIGUSR2');
  let file = '';
  let size = -1;
  await waitUntil('the heap snapshot', async () => {
    file = written().find((f) => !before.has(f)) ?? '';
    if (!file) return false;
    const now = statSync(join(scratch, file)).size;
    const done = now > 0 && now === size;
    size = now;
    return done && readFileSync(join(scratch, file)).subarray(-2).toString().includes(']');
  });
  copyFileSync(join(scratch, file), to);
}

let binaryPath = '';
async function main(): Promise<void> {
  const built = resolve(values.binary ?? join(ROOT, 'dist', `driftline-agent-linux-${process.arch}`));
  const arch = process.arch as Arch;
  if (!values.binary) {
    log(`building ${built}`);
    const inputs = agentBuildInputs(arch, log);
    await buildAgentBinary({ arch, node: inputs.runtime.node, sqliteAddon: inputs.sqliteAddon, out: built, strip: true, log });
  }
  binaryPath = join(scratch, 'bin', basename(built));
  freshCopy(built, binaryPath);
  // The baseline's Node: the runtime the binary carries, stripped as the build strips it.
  const runtime = ensureNodeRuntime(arch, log);
  const stripped = join(scratch, 'node.stripped');
  copyFileSync(runtime.node, stripped);
  spawnSync('strip', ['--strip-all', stripped]);
  const bareNode = join(scratch, 'node');
  freshCopy(stripped, bareNode);
  rmSync(stripped);
  const bareModel = join(scratch, 'bare-model.onnx');
  writeFileSync(bareModel, buildDemoModel().bytes);
  const bare = await bareIdle(bareNode, bareModel);
  const bareSameFlags = nodeOptions ? await bareIdle(bareNode, bareModel, nodeOptions) : bare;
  log(`bare node ${runtime.version} + onnxruntime-node + one session, idle: ${describeMemory(bare)}`);
  if (nodeOptions) log(`  the same with NODE_OPTIONS=${nodeOptions}: ${mb(bareSameFlags.rss)} MB`);
  const binaryBytes = statSync(binaryPath).size;

  // First start of this binary: extracting the embedded addons (then `--version` with them cached).
  const timed = (args: string[]): number => {
    const t = process.hrtime.bigint();
    const r = spawnSync(binaryPath, args, { cwd: scratch, env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${args.join(' ')} failed: ${r.stderr}`);
    return Number(process.hrtime.bigint() - t) / 1e6;
  };
  const firstStartMs = timed(['--version']);
  const cachedStartMs = timed(['--version']);

  const cp = await startControlPlane({ dataDir: join(scratch, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } }, { logger: silentLogger() });
  const api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
  const dataDir = join(scratch, 'agent');
  const results: Record<string, unknown> = {};
  try {
    // Enroll once and activate the demo model, so later starts restore it from the data folder.
    const token = await api.createEnrollmentToken('footprint-1');
    let agent = await startAgent(binaryPath, [
      '--device-id',
      'footprint-1',
      '--enroll-token',
      token,
      '--server',
      cp.addresses.grpc,
      '--data-dir',
      dataDir,
      '--local-port',
      '0',
    ]);
    const model = buildDemoModel().bytes;
    await api.uploadModel('vibration', model);
    await api.deploy('vibration');
    const sample = vibrationRowSampler(11);
    await waitUntil('the demo model on the agent', () => infer(agent.localApi, sample().features));
    await stop(agent);
    log(
      `enrolled; binary ${(binaryBytes / 1048576).toFixed(1)} MB; first start (extracting addons) ${firstStartMs.toFixed(0)} ms, cached ${cachedStartMs.toFixed(0)} ms`,
    );

    // Start to ready, as an installed, enrolled device restarts.
    const readyRuns: number[] = [];
    for (let i = 0; i < runs; i++) {
      agent = await startAgent(binaryPath, ['--data-dir', dataDir, '--local-port', '0']);
      readyRuns.push(Math.round(agent.readyMs));
      if (i < runs - 1) await stop(agent);
    }
    log(`ready in ${readyRuns.join(', ')} ms`);

    // Idle with the model loaded: let start-up garbage settle, then sample.
    await waitUntil('the restored model', async () => (await fetch(`${agent.localApi}/v2/models/vibration/ready`)).ok);
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const idle = memory(agent.child.pid!);
    saveSmaps(agent.child.pid!, 'agent');
    if (values['heap-snapshot'] && values['smaps-out']) await saveHeapSnapshot(agent.child, join(values['smaps-out'], 'agent.heapsnapshot'));
    const vsBare = Math.round((idle.rss / bare.rss) * 100) / 100;
    log(`agent idle: ${describeMemory(idle)}; ${vsBare}x bare`);

    // Steady inference: `concurrency` callers back to back for `minutes`.
    const until = Date.now() + minutes * 60_000;
    let inferences = 0;
    let failures = 0;
    const samples: Array<{ t: number; rss: number }> = [];
    const sampler = setInterval(() => samples.push({ t: Date.now(), rss: memory(agent.child.pid!).rss }), 5000);
    const started = Date.now();
    await Promise.all(
      Array.from({ length: concurrency }, async (_, k) => {
        const rows = vibrationRowSampler(100 + k);
        while (Date.now() < until) {
          if (await infer(agent.localApi, rows().features).catch(() => false)) inferences++;
          else failures++;
        }
      }),
    );
    clearInterval(sampler);
    const seconds = (Date.now() - started) / 1000;
    const after = memory(agent.child.pid!);
    // Growth over the second half of the run, when warm-up allocations are done.
    const late = samples.filter((s) => s.t >= started + (seconds * 1000) / 2);
    const growth = late.length >= 2 ? (late.at(-1)!.rss - late[0]!.rss) / 1024 / ((late.at(-1)!.t - late[0]!.t) / 60_000) : null;
    log(
      `${inferences} inferences in ${seconds.toFixed(0)} s (${failures} failed); RSS after ${mb(after.rss)} MB, max ${mb(Math.max(after.rss, ...samples.map((s) => s.rss)))} MB`,
    );
    const exit = await stop(agent);

    Object.assign(results, {
      binary_mb: Math.round((binaryBytes / 1048576) * 10) / 10,
      ready_ms: median(readyRuns),
      ready_ms_runs: readyRuns,
      first_start_extract_ms: Math.round(firstStartMs),
      cached_version_ms: Math.round(cachedStartMs),
      idle_rss_mb: mb(idle.rss),
      idle_rss_anon_mb: mb(idle.anon),
      idle_rss_file_mb: mb(idle.file),
      idle_rss_onnxruntime_lib_mb: mb(idle.onnxruntime),
      idle_rss_binary_pages_mb: mb(idle.binary),
      bare_node: runtime.version,
      bare_idle_rss_mb: mb(bare.rss),
      bare_idle_rss_anon_mb: mb(bare.anon),
      bare_idle_rss_file_mb: mb(bare.file),
      bare_idle_rss_same_node_options_mb: mb(bareSameFlags.rss),
      idle_rss_vs_bare: vsBare,
      minutes,
      node_options: nodeOptions,
      inferences,
      inference_failures: failures,
      inferences_per_s: Math.round(inferences / Math.max(seconds, 1e-9)),
      rss_after_load_mb: mb(after.rss),
      rss_max_mb: mb(Math.max(after.rss, ...samples.map((s) => s.rss))),
      rss_growth_mb_per_min: growth === null ? null : Math.round(growth * 100) / 100,
      clean_exit: exit === 0,
      // Start-up times scale with how busy the machine is: read them against this.
      load_avg_1m: Math.round(loadavg()[0]! * 100) / 100,
      cpus: cpus().length,
      targets: TARGETS,
      met: {
        idle_rss_mb: mb(idle.rss) <= TARGETS.idle_rss_mb,
        idle_rss_vs_bare: vsBare <= TARGETS.idle_rss_vs_bare,
        ready_ms: median(readyRuns) <= TARGETS.ready_ms,
      },
    });
  } finally {
    api.close();
    await cp.shutdown();
    rmSync(scratch, { recursive: true, force: true });
  }
  process.stdout.write(`${JSON.stringify(results)}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench:agent-footprint failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
