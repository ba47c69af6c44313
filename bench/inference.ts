/**
 * `npm run bench:inference [-- --seconds 2]`
 *
 * The agent's inference path against bare onnxruntime-node, in one process and one run:
 * - the larger model (bench/conv-model.ts, ~3.9M parameters, 1x3x64x64): bare
 *   `session.run` vs the engine in-process, batch 1, one client alternating request by request;
 * - the demo model: bare batch 1; the engine in-process; the local HTTP API (JSON, one
 *   keep-alive client); 8 concurrent clients with micro-batching, in-process and over HTTP;
 * - a realistic-size model (1x3x224x224) through a real agent process's local API, binary and
 *   JSON, 1 and 8 clients, against bare onnxruntime-node in this process: with onnxruntime's
 *   default session options (`large_binary_p50_vs_bare`) and with the agent's own
 *   (`large_binary_p50_vs_bare_same_options`: thread pools that do not spin, as agent.ts sets).
 *   With the defaults, onnxruntime's pool threads keep spinning after a bare run returns
 *   (`large_bare_cpu_ms_in_50ms_after_run`), on a core the agent's next paired call needs: on a
 *   2-core machine that figure penalizes the agent; the same-options one does not.
 * The engine uses the settings of the generic-x86_64-cpu firmware profile, as the agent does.
 * Progress and a table go to stderr; the last stdout line is JSON with the figures.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import ort from 'onnxruntime-node';
import { Registry } from 'prom-client';
import { InferenceEngine, type InferenceService } from '../agent/inference/engine.js';
import { createOnnxRuntime, sessionOptions as agentSessionOptions } from '../agent/inference/onnxruntime-runtime.js';
import { startLocalApi } from '../agent/local-api/server.js';
import { AGENT_ORT_SPINNING, inferenceSettings } from '../agent/profiles/inference-settings.js';
import { loadFirmwareProfiles } from '../common/firmware-profile.js';
import { silentLogger } from '../common/logger.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { buildConvModel, buildLargeConvModel, CONV_INPUT_SHAPE, LARGE_INPUT_SHAPE } from './conv-model.js';
import { startProcess, stopProcess, waitFor } from '../test/helpers/processes.js';
import { startTestControlPlane } from '../test/helpers/wired-agent.js';

const TARGETS = {
  engine_vs_bare: 0.95,
  batching_speedup: 1.5,
  http_added_p50_ms: 1,
  large_binary_vs_bare_8_clients: 0.8,
  large_binary_p50_vs_bare: 1.1,
  agent_cpu_vs_bare: 1.2,
  large_json_p50_vs_binary: 2,
};
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const CLIENTS = 8;

const { values } = parseArgs({
  options: { seconds: { type: 'string', default: '2' }, profile: { type: 'string', default: 'generic-x86_64-cpu' }, 'agent-cpu-prof': { type: 'string' } },
});
const phaseMs = Number(values.seconds) * 1000;
const log = (line: string): void => void process.stderr.write(`[inference] ${line}\n`);

interface Phase {
  requests: number;
  elapsedMs: number;
  latencies: number[];
}

const throughput = (p: Phase): number => (p.requests / p.elapsedMs) * 1000;
function percentile(p: Phase, q: number): number {
  const sorted = [...p.latencies].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** `clients` loops calling `call` back to back for `ms` after a warm-up; every request timed. */
/** `call(client)` gets the index of the concurrent client making it, so a stateful client is never shared. */
async function measure(call: (client: number) => Promise<unknown>, { clients = 1, ms = phaseMs, warmup = 50 } = {}): Promise<Phase> {
  for (let i = 0; i < warmup; i++) await Promise.all(Array.from({ length: clients }, (_, c) => call(c)));
  const latencies: number[] = [];
  const started = performance.now();
  const end = started + ms;
  const loop = async (_: unknown, client: number) => {
    while (performance.now() < end) {
      const t = performance.now();
      await call(client);
      latencies.push(performance.now() - t);
    }
  };
  await Promise.all(Array.from({ length: clients }, loop));
  return { requests: latencies.length, elapsedMs: performance.now() - started, latencies };
}

/**
 * One client alternating between the calls request by request, each timed on its own: on a
 * noisy machine both sides see the same interference, so their ratio is what it measures.
 */
async function paired(calls: Array<() => Promise<unknown>>, { ms = phaseMs, warmup = 50 } = {}): Promise<Phase[]> {
  for (let i = 0; i < warmup; i++) for (const call of calls) await call();
  const phases: Phase[] = calls.map(() => ({ requests: 0, elapsedMs: 0, latencies: [] }));
  const end = performance.now() + ms * calls.length;
  while (performance.now() < end) {
    for (let c = 0; c < calls.length; c++) {
      const t = performance.now();
      await calls[c]!();
      const took = performance.now() - t;
      const phase = phases[c]!;
      phase.requests++;
      phase.elapsedMs += took;
      phase.latencies.push(took);
    }
  }
  return phases;
}

/**
 * The thinnest keep-alive HTTP/1.1 client: a prepared request written to a socket, the
 * response read up to its content-length. What it measures is what the server adds, not
 * what a client library costs (node:http's client costs about as much again).
 */
class RawHttpClient {
  private socket: Socket;
  private buffer: Buffer = Buffer.alloc(0);
  private waiting: { resolve(): void; reject(err: Error): void } | undefined;
  private closed = false;

  private constructor(
    socket: Socket,
    private readonly url: URL,
    private readonly requestBytes: Buffer,
  ) {
    this.socket = this.attach(socket);
  }

  private attach(socket: Socket): Socket {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
      this.tryComplete();
    });
    // A connection the server closed fails the request waiting on it instead of leaving it hanging.
    socket.on('error', (err) => socket === this.socket && this.waiting?.reject(err));
    socket.on('close', () => socket === this.socket && this.waiting?.reject(new Error('the server closed the connection before answering')));
    return socket;
  }

  private static async connect(url: URL): Promise<Socket> {
    const socket = connect(Number(url.port), url.hostname);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return socket;
  }

  static async open(url: URL, body: string | Buffer, headers: Record<string, string | number> = {}): Promise<RawHttpClient> {
    const socket = await RawHttpClient.connect(url);
    const bytes = typeof body === 'string' ? Buffer.from(body) : body;
    const extra = Object.entries(headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('');
    const head = `POST ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nContent-Type: application/json\r\nContent-Length: ${bytes.length}\r\n${extra}\r\n`;
    return new RawHttpClient(socket, url, Buffer.concat([Buffer.from(head), bytes]));
  }

  async call(): Promise<void> {
    // As any keep-alive client: a connection the server closed while idle (its keep-alive or
    // headers timeout; phases can take a minute on a loaded machine) is opened again.
    if (this.socket.destroyed && !this.closed) {
      this.buffer = Buffer.alloc(0);
      this.socket = this.attach(await RawHttpClient.connect(this.url));
    }
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.socket.write(this.requestBytes);
    });
  }

  private tryComplete(): void {
    const headerEnd = this.buffer.indexOf('\r\n\r\n');
    if (headerEnd < 0 || !this.waiting) return;
    const head = this.buffer.subarray(0, headerEnd).toString('latin1');
    const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
    if (this.buffer.length < headerEnd + 4 + length) return;
    const status = Number(head.slice(9, 12));
    this.buffer = this.buffer.subarray(headerEnd + 4 + length);
    const waiting = this.waiting;
    this.waiting = undefined;
    if (status === 200) waiting.resolve();
    else waiting.reject(new Error(`HTTP ${status}`));
  }

  close(): void {
    this.closed = true;
    this.socket.destroy();
  }
}

const dir = mkdtempSync(join(tmpdir(), 'driftline-bench-inference-'));
const logger = silentLogger();
const settings = inferenceSettings(loadFirmwareProfiles().get(values.profile)!);
const sessionOptions: ort.InferenceSession.SessionOptions = {
  executionProviders: ['cpu'],
  ...(settings.intraOpThreads === undefined ? {} : { intraOpNumThreads: settings.intraOpThreads }),
  ...(settings.interOpThreads === undefined ? {} : { interOpNumThreads: settings.interOpThreads }),
};
// The agent's own options for the same profile (agent.ts: spinning off, its log level): the
// like-with-like baseline. `sessionOptions` above is onnxruntime's defaults with the profile's
// thread counts, the baseline a user trying bare onnxruntime-node would see; both are reported.
const agentOptions = agentSessionOptions(
  'cpu',
  { providers: ['cpu'], intraOpThreads: settings.intraOpThreads, interOpThreads: settings.interOpThreads },
  AGENT_ORT_SPINNING,
);
const newEngine = () =>
  InferenceEngine.create({
    runtime: createOnnxRuntime({ logger }),
    providers: ['cpu'],
    intraOpThreads: settings.intraOpThreads,
    interOpThreads: settings.interOpThreads,
    batching: settings.batching,
    logger,
  });

try {
  // The larger model: bare vs engine, batch 1, one client, interleaved rounds.
  const conv = buildConvModel();
  const convPath = join(dir, 'conv.onnx');
  writeFileSync(convPath, conv.bytes);
  log(`conv model: ${conv.parameters} parameters, ${(conv.bytes.length / 1024 ** 2).toFixed(1)} MiB`);
  const image = Float32Array.from({ length: CONV_INPUT_SHAPE.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i) * 0.5 + 0.5);
  const convDims = [1, ...CONV_INPUT_SHAPE];
  const bareConv = await ort.InferenceSession.create(convPath, sessionOptions);
  const convEngine = newEngine();
  await convEngine.load({ name: 'conv', version: 1, path: convPath, sha256: '0'.repeat(64) });
  const [bareConvPhase, engineConvPhase] = await paired(
    [
      () => bareConv.run({ image: new ort.Tensor('float32', image, convDims) }),
      () => convEngine.infer('conv', [{ name: 'image', datatype: 'FP32', shape: convDims, data: image }]),
    ],
    { warmup: 10, ms: phaseMs * 2 },
  );
  await convEngine.shutdown();
  await bareConv.release();

  // The demo model.
  const demoPath = join(dir, 'demo.onnx');
  writeFileSync(demoPath, buildDemoModel({ seed: 1 }).bytes);
  const row = Float32Array.from([4.1, 12.0, 2.9, 3.2, 2.5, 0.9, 0.4, 41.0]);
  const bareDemo = await ort.InferenceSession.create(demoPath, sessionOptions);
  const bareCall = () => bareDemo.run({ features: new ort.Tensor('float32', row, [1, 8]) });
  const engine = newEngine();
  await engine.load({ name: 'vibration', version: 1, path: demoPath, sha256: '0'.repeat(64) });
  const engineCall = () => engine.infer('vibration', [{ name: 'features', datatype: 'FP32', shape: [1, 8], data: row }]);
  const service: InferenceService = engine;
  const api = await startLocalApi({ engine: service, health: () => ({ ok: true, details: {} }), metrics: new Registry(), logger });
  const url = new URL(`${api.url}/v2/models/vibration/infer`);
  const body = JSON.stringify({ inputs: [{ name: 'features', shape: [1, 8], datatype: 'FP32', data: Array.from(row) }] });
  const clients = await Promise.all(Array.from({ length: CLIENTS }, () => RawHttpClient.open(url, body)));
  const httpCall = () => clients[0]!.call();

  const [bareDemoPhase, engineDemoPhase] = await paired([bareCall, engineCall]);
  // HTTP against the same engine, alternating with in-process calls: the difference is what HTTP adds.
  const [engineBesideHttp, httpDemoPhase] = await paired([engineCall, httpCall]);
  const runsBefore = engine.queueStats().runs;
  const engineConcurrent = await measure(engineCall, { clients: CLIENTS });
  const batchedRuns = engine.queueStats().runs - runsBefore;
  const httpConcurrent = await measure((c) => clients[c]!.call(), { clients: CLIENTS });
  const bareConcurrent = await measure(bareCall, { clients: CLIENTS });
  for (const client of clients) client.close();
  await api.close();
  await engine.shutdown();
  await bareDemo.release();

  // The realistic-size model through the real agent (its own process, enrolled with a control
  // plane in this one, the model pushed and deployed as an operator would), over HTTP, binary
  // and JSON, against bare onnxruntime-node in this process.
  const large = buildLargeConvModel();
  const largePath = join(dir, 'large.onnx');
  writeFileSync(largePath, large.bytes);
  log(`large conv model: ${large.parameters} parameters, input 1x${LARGE_INPUT_SHAPE.join('x')}`);
  const largeDims = [1, ...LARGE_INPUT_SHAPE];
  const largeImage = Float32Array.from({ length: LARGE_INPUT_SHAPE.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i) * 0.5 + 0.5);
  const { cp, api: fleet } = await startTestControlPlane(dir);
  const device = 'bench-inference-1';
  const agent = await startProcess(
    'bin/driftline-agent.js',
    [
      'run',
      '--server',
      cp.addresses.grpc,
      '--device-id',
      device,
      '--enroll-token',
      await fleet.createEnrollmentToken(device),
      '--data-dir',
      join(dir, 'agent'),
      '--local-port',
      '0',
      '--profile',
      values.profile,
    ],
    AGENT_READY,
    // --agent-cpu-prof DIR: a V8 CPU profile of the agent process, written there when it stops.
    { timeoutMs: 120_000, nodeArgs: values['agent-cpu-prof'] === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', values['agent-cpu-prof']] },
  );
  log(`agent ready at ${agent.ready[2]}; deploying the large model`);
  const largeUrl = new URL(`${agent.ready[2]}/v2/models/large/infer`);
  await fleet.uploadModel('large', large.bytes);
  await fleet.deploy('large', [device]);
  await waitFor(
    () =>
      fetch(`${agent.ready[2]}/v2/models/large/ready`).then(
        (r) => r.status,
        () => 0,
      ),
    (status) => status === 200,
    { what: 'large model active on the agent', timeoutMs: 120_000 },
  );
  const jsonBody = JSON.stringify({ inputs: [{ name: 'image', shape: largeDims, datatype: 'FP32', data: Array.from(largeImage) }] });
  const header = Buffer.from(
    JSON.stringify({ inputs: [{ name: 'image', shape: largeDims, datatype: 'FP32', parameters: { binary_data_size: largeImage.byteLength } }] }),
  );
  const binaryBody = Buffer.concat([header, Buffer.from(largeImage.buffer, largeImage.byteOffset, largeImage.byteLength)]);
  const binaryClients = await Promise.all(
    Array.from({ length: CLIENTS }, () => RawHttpClient.open(largeUrl, binaryBody, { 'inference-header-content-length': header.length })),
  );
  const jsonClients = await Promise.all(Array.from({ length: CLIENTS }, () => RawHttpClient.open(largeUrl, jsonBody)));
  const bareLarge = await ort.InferenceSession.create(largePath, sessionOptions);
  const bareLargeCall = () => bareLarge.run({ image: new ort.Tensor('float32', largeImage, largeDims) });
  const bareLargeAgentOptions = await ort.InferenceSession.create(largePath, agentOptions);
  const bareLargeAgentOptionsCall = () => bareLargeAgentOptions.run({ image: new ort.Tensor('float32', largeImage, largeDims) });
  // CPU time: the agent process's from /proc/<pid>/stat (user + system, clock ticks at 100 Hz),
  // bare onnxruntime's from this process's cpuUsage() during a bare-only phase (this process
  // then does nothing else: the agent is idle, the control plane has nothing to ingest).
  const agentCpuMs = (): number => {
    const fields = readFileSync(`/proc/${agent.child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  };
  const cpuPerRequest = async (call: (client: number) => Promise<unknown>, clients: number, cpu: () => number): Promise<{ phase: Phase; cpuMs: number }> => {
    const before = cpu();
    const phase = await measure(call, { clients, warmup: 3 });
    return { phase, cpuMs: (cpu() - before) / (phase.requests + 3 * clients) };
  };
  // Per thread of the agent (name from /proc/<pid>/task/<tid>/comm): where its CPU goes, for the log.
  const agentThreadCpuMs = (): Map<string, number> => {
    const out = new Map<string, number>();
    for (const tid of readdirSync(`/proc/${agent.child.pid}/task`)) {
      try {
        const name = readFileSync(`/proc/${agent.child.pid}/task/${tid}/comm`, 'utf8').trim();
        const fields = readFileSync(`/proc/${agent.child.pid}/task/${tid}/stat`, 'utf8').split(') ')[1]!.split(' ');
        out.set(`${name}#${tid}`, ((Number(fields[11]) + Number(fields[12])) * 1000) / 100);
      } catch {
        // The thread ended meanwhile.
      }
    }
    return out;
  };
  const selfCpuMs = (): number => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  log('large model active; measuring');
  const [bareLargePhase, binaryLargePhase, jsonLargePhase] = await paired([bareLargeCall, () => binaryClients[0]!.call(), () => jsonClients[0]!.call()], {
    warmup: 3,
    ms: phaseMs * 2,
  });
  // The same single-client comparison against bare onnxruntime with the agent's session options.
  const [bareSameOptionsPhase, binaryBesideSameOptionsPhase] = await paired([bareLargeAgentOptionsCall, () => binaryClients[0]!.call()], {
    warmup: 3,
    ms: phaseMs * 2,
  });
  // What a bare run leaves behind: with onnxruntime's default options its pool threads spin
  // after the run returns, on this process's CPU, while the next call of a paired loop (the
  // agent's, right after it) runs. This process's CPU in a 50 ms window after each run, median
  // of 5; the agent's options leave nothing.
  const leftoverCpuMs = async (call: () => Promise<unknown>): Promise<number> => {
    const samples: number[] = [];
    for (let i = 0; i < 5; i++) {
      await call();
      const before = selfCpuMs();
      await sleep(50);
      samples.push(selfCpuMs() - before);
    }
    return samples.sort((a, b) => a - b)[2]!;
  };
  const spinLeftover = { default: await leftoverCpuMs(bareLargeCall), agentOptions: await leftoverCpuMs(bareLargeAgentOptionsCall) };
  log(
    `CPU ms in the 50 ms after a bare run: ${spinLeftover.default.toFixed(1)} with onnxruntime's default options, ${spinLeftover.agentOptions.toFixed(1)} with the agent's`,
  );
  log('large model: 8 clients');
  const bareLarge8 = await cpuPerRequest(bareLargeCall, CLIENTS, selfCpuMs);
  // One keep-alive connection per concurrent client: a connection carries one request at a time.
  log('large model: 8 clients, binary');
  const threadsBefore = agentThreadCpuMs();
  const binaryLarge8 = await cpuPerRequest((c) => binaryClients[c]!.call(), CLIENTS, agentCpuMs);
  const requests8 = binaryLarge8.phase.requests + 3 * CLIENTS;
  const perThread = [...agentThreadCpuMs()]
    .map(([name, ms]) => [name, (ms - (threadsBefore.get(name) ?? 0)) / requests8] as const)
    .filter(([, ms]) => ms > 0.05)
    .sort((a, b) => b[1] - a[1]);
  log(`agent CPU ms per inference by thread (binary, ${CLIENTS} clients): ${perThread.map(([name, ms]) => `${name} ${ms.toFixed(2)}`).join(', ')}`);
  log('large model: 8 clients, JSON');
  const jsonLarge8 = await measure((c) => jsonClients[c]!.call(), { clients: CLIENTS, warmup: 1 });
  for (const client of [...binaryClients, ...jsonClients]) client.close();
  log('large model: measured; stopping the agent');
  await bareLarge.release();
  await bareLargeAgentOptions.release();
  await stopProcess(agent);
  fleet.close();
  await cp.shutdown();

  const rows: Array<[string, Phase]> = [
    ['large  bare session.run      b1 x1', bareLargePhase],
    ['large  agent HTTP binary     b1 x1', binaryLargePhase],
    ['large  agent HTTP JSON       b1 x1', jsonLargePhase],
    ['large  bare, agent options   b1 x1', bareSameOptionsPhase],
    ['large  agent HTTP binary     b1 x1', binaryBesideSameOptionsPhase],
    [`large  bare session.run      b1 x${CLIENTS}`, bareLarge8.phase],
    [`large  agent HTTP binary     b1 x${CLIENTS}`, binaryLarge8.phase],
    [`large  agent HTTP JSON       b1 x${CLIENTS}`, jsonLarge8],
    ['conv   bare session.run      b1 x1', bareConvPhase],
    ['conv   engine in-process     b1 x1', engineConvPhase],
    ['demo   bare session.run      b1 x1', bareDemoPhase],
    ['demo   engine in-process     b1 x1', engineDemoPhase],
    ['demo   local HTTP API (JSON) b1 x1', httpDemoPhase],
    [`demo   bare session.run      b1 x${CLIENTS}`, bareConcurrent],
    [`demo   engine micro-batched  b1 x${CLIENTS}`, engineConcurrent],
    [`demo   HTTP micro-batched    b1 x${CLIENTS}`, httpConcurrent],
  ];
  log('                                     req/s      p50 ms    p99 ms');
  for (const [name, p] of rows)
    log(`${name}  ${throughput(p).toFixed(0).padStart(8)}  ${percentile(p, 0.5).toFixed(3).padStart(9)} ${percentile(p, 0.99).toFixed(3).padStart(9)}`);
  log(
    `micro-batching: ${engineConcurrent.requests} requests in ${batchedRuns} runs (mean ${(engineConcurrent.requests / Math.max(1, batchedRuns)).toFixed(1)} rows per run; profile ${values.profile}, maxBatch ${settings.batching.maxBatch})`,
  );

  const round3 = (n: number) => Math.round(n * 1000) / 1000;
  const figures = {
    engine_vs_bare: round3(throughput(engineConvPhase) / throughput(bareConvPhase)),
    batching_speedup: round3(throughput(engineConcurrent) / throughput(bareDemoPhase)),
    http_added_p50_ms: round3(percentile(httpDemoPhase, 0.5) - percentile(engineBesideHttp, 0.5)),
    conv_parameters: conv.parameters,
    conv_bare_rps: Math.round(throughput(bareConvPhase)),
    conv_engine_rps: Math.round(throughput(engineConvPhase)),
    conv_bare_p50_ms: round3(percentile(bareConvPhase, 0.5)),
    conv_engine_p50_ms: round3(percentile(engineConvPhase, 0.5)),
    conv_engine_p99_ms: round3(percentile(engineConvPhase, 0.99)),
    demo_bare_rps: Math.round(throughput(bareDemoPhase)),
    demo_engine_rps: Math.round(throughput(engineDemoPhase)),
    demo_http_rps: Math.round(throughput(httpDemoPhase)),
    demo_bare_p50_ms: round3(percentile(bareDemoPhase, 0.5)),
    demo_engine_p50_ms: round3(percentile(engineDemoPhase, 0.5)),
    demo_http_p50_ms: round3(percentile(httpDemoPhase, 0.5)),
    demo_http_p99_ms: round3(percentile(httpDemoPhase, 0.99)),
    demo_bare_8_clients_rps: Math.round(throughput(bareConcurrent)),
    demo_batched_8_clients_rps: Math.round(throughput(engineConcurrent)),
    demo_batched_8_clients_p50_ms: round3(percentile(engineConcurrent, 0.5)),
    demo_batched_8_clients_p99_ms: round3(percentile(engineConcurrent, 0.99)),
    demo_http_batched_8_clients_rps: Math.round(throughput(httpConcurrent)),
    demo_http_batched_8_clients_p99_ms: round3(percentile(httpConcurrent, 0.99)),
    mean_rows_per_run: round3(engineConcurrent.requests / Math.max(1, batchedRuns)),
    large_parameters: large.parameters,
    large_binary_vs_bare_8_clients: round3(throughput(binaryLarge8.phase) / throughput(bareLarge8.phase)),
    large_binary_p50_vs_bare: round3(percentile(binaryLargePhase, 0.5) / percentile(bareLargePhase, 0.5)),
    large_binary_p50_vs_bare_same_options: round3(percentile(binaryBesideSameOptionsPhase, 0.5) / percentile(bareSameOptionsPhase, 0.5)),
    large_bare_same_options_p50_ms: round3(percentile(bareSameOptionsPhase, 0.5)),
    large_bare_cpu_ms_in_50ms_after_run: round3(spinLeftover.default),
    large_bare_same_options_cpu_ms_in_50ms_after_run: round3(spinLeftover.agentOptions),
    large_json_p50_vs_binary: round3(percentile(jsonLargePhase, 0.5) / percentile(binaryLargePhase, 0.5)),
    agent_cpu_vs_bare: round3(binaryLarge8.cpuMs / bareLarge8.cpuMs),
    large_bare_p50_ms: round3(percentile(bareLargePhase, 0.5)),
    large_binary_p50_ms: round3(percentile(binaryLargePhase, 0.5)),
    large_json_p50_ms: round3(percentile(jsonLargePhase, 0.5)),
    large_bare_8_clients_rps: round3(throughput(bareLarge8.phase)),
    large_binary_8_clients_rps: round3(throughput(binaryLarge8.phase)),
    large_json_8_clients_rps: round3(throughput(jsonLarge8)),
    large_bare_cpu_ms_per_inference: round3(bareLarge8.cpuMs),
    large_agent_cpu_ms_per_inference: round3(binaryLarge8.cpuMs),
    load_avg_1m: round3(loadavg()[0]!),
    targets_met: false,
  };
  figures.targets_met =
    figures.engine_vs_bare >= TARGETS.engine_vs_bare &&
    figures.batching_speedup >= TARGETS.batching_speedup &&
    figures.http_added_p50_ms <= TARGETS.http_added_p50_ms &&
    figures.large_binary_vs_bare_8_clients >= TARGETS.large_binary_vs_bare_8_clients &&
    figures.large_binary_p50_vs_bare <= TARGETS.large_binary_p50_vs_bare &&
    figures.agent_cpu_vs_bare <= TARGETS.agent_cpu_vs_bare &&
    figures.large_json_p50_vs_binary <= TARGETS.large_json_p50_vs_binary;
  process.stdout.write(`${JSON.stringify(figures)}\n`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
