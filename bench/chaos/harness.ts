import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { buildDemoModel } from '../../demo/model/demo-model.js';
import { vibrationRowSampler } from '../../demo/model/vibration-data.js';
import { fleetApi, type FleetApi } from '../../test/helpers/fleet-api.js';
import { freePort, startProcess, stopProcess, waitFor, type RunningProcess } from '../../test/helpers/processes.js';
import { rolloutApi } from '../../test/helpers/rollout-api.js';
import { bundleEntryPoints } from './bundle.js';
import { check, type CheckResult, type DeviceEvidence, type StoredRecord } from './checker.js';
import { seededRandom } from '../../demo/model/seeded-random.js';
import { Outcome, Stream, TelemetryRecord } from '../../common/proto/driftline/v1/device_link.js';

const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const AGENT_STOPPED = /^driftline-agent: stopped device=(\S+) enqueued=(\d+) acknowledged=(\d+) buffered=(\d+) dropped=(\d+)$/;
const MODEL = 'vibration';

/** What a trial kills, and what was going on when it did. */
export const KILL_KINDS = ['agent-enqueue', 'agent-upload', 'agent-swap', 'cp-commit', 'cp-ack', 'cp-rollout'] as const;
export type KillKind = (typeof KILL_KINDS)[number];

export interface ChaosOptions {
  trials: number;
  agents?: number;
  /** Concurrent application clients per agent. */
  clientsPerAgent?: number;
  seed?: number;
  /** Only these kinds (default: all). */
  kinds?: readonly KillKind[];
  keep?: boolean;
  /** Each kind in turn instead of at random (the CI run covers every kind in a few trials). */
  cycleKinds?: boolean;
  /** Start no trial after this many minutes (the check still runs); `trials` in the result says how many ran. */
  maxMinutes?: number;
  /** Progress lines (stderr in the CLI). */
  log?: (line: string) => void;
}

export interface ChaosResult extends Omit<CheckResult, 'devices'> {
  trials: number;
  kills: Record<KillKind, number>;
  /** Trials after which the killed side did not serve or ingest again within the bound (each is a finding). */
  stalls: number;
  /** Model swaps the kill interrupted before the agent served the new version. */
  swaps_interrupted: number;
  /** Rollouts that reached an end state (succeeded or aborted) by the end. */
  rollouts: number;
  versions_deployed: number;
  seconds: number;
  seconds_per_trial: number;
  /** Mean seconds from the kill to the restarted process's ready line, and on to the short load done. */
  restart_s_mean: number;
  recover_s_mean: number;
  /** Whether the final drain emptied every buffer in time (false: `buffered` says what was left, never counted lost). */
  drained: boolean;
  devices: CheckResult['devices'];
}

/** Generous bounds for a loaded machine: a wait that runs out is reported, never a pass. */
const START_TIMEOUT_MS = 120_000;
const RECOVER_TIMEOUT_MS = 60_000;
const SETTLE_TIMEOUT_MS = 120_000;
/** Answered inferences per agent after a restart before the next trial: the "short load". */
const LOAD_AFTER_RESTART = 20;
/** Between two requests of one application client (at most ~1000 / (this + latency) records a second per client). */
const CLIENT_PAUSE_MS = 5;
/** The final drain: how long the check waits for every buffer to be empty before it reports what is left (`buffered`). */
const DRAIN_TIMEOUT_MS = 300_000;

interface Agent {
  id: string;
  dir: string;
  process: RunningProcess | undefined;
  url: string | undefined;
  /** Boots started so far; requests are attributed to the boot running when they are sent. */
  starts: number;
  attempted: number[];
  answered: number[];
  stoppedCleanly: boolean;
}

interface AgentHealth {
  uplinkConnected: boolean;
  bufferDepth: number;
  activeModel: { name: string; version: number } | null;
}

async function health(url: string | undefined): Promise<AgentHealth | undefined> {
  if (!url) return undefined;
  try {
    const response = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(5000) });
    return ((await response.json()) as { details?: AgentHealth }).details;
  } catch {
    return undefined;
  }
}

export async function runChaos(options: ChaosOptions): Promise<ChaosResult> {
  const log = options.log ?? (() => undefined);
  // Seeded, so a run can be replayed with its seed.
  const rng = seededRandom(options.seed ?? Date.now());
  const random = () => rng.next();
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
  const kinds = options.kinds ?? KILL_KINDS;
  const started = performance.now();
  const dir = mkdtempSync(join(tmpdir(), 'driftline-chaos-'));
  const storeFile = join(dir, 'cp', 'control-plane.db');
  const ports = { grpc: await freePort(), http: await freePort(), mqtt: await freePort() };
  // A rollout driver that ticks often, so a trial's kill lands among its transitions.
  writeFileSync(join(dir, 'cp.yaml'), 'rollout:\n  tickInterval: 200ms\n');
  const serveArgs = [
    'serve',
    '--config',
    join(dir, 'cp.yaml'),
    '--data-dir',
    join(dir, 'cp'),
    '--grpc-port',
    `${ports.grpc}`,
    '--http-port',
    `${ports.http}`,
    '--mqtt-port',
    `${ports.mqtt}`,
  ];
  // Small batches and one in flight: an upload is nearly always under way. Fast reconnects keep trials short.
  writeFileSync(
    join(dir, 'agent.yaml'),
    [
      'mqtt:\n  reconnectMin: 50ms\n  reconnectMax: 300ms\n  keepalive: 2s',
      'uplink:\n  ackTimeout: 2s\n  maxBatchRecords: 10\n  maxInflightBatches: 1',
      // System metrics and drift windows every 5 s: their records are committed, killed and resent with the rest.
      `schedule:\n  uplinkCheck: '* * * * * *'\n  system: '*/5 * * * * *'\n  driftWindow: '*/5 * * * * *'`,
      'shutdownGrace: 30s\n',
    ].join('\n'),
  );
  const env = { DRIFTLINE_LOG_LEVEL: 'warn' };
  const bin = await bundleEntryPoints(join(dir, 'bin'));
  const agents: Agent[] = Array.from({ length: options.agents ?? 2 }, (_, i) => ({
    id: `chaos-edge-${i + 1}`,
    dir: join(dir, `agent-${i + 1}`),
    process: undefined,
    url: undefined,
    starts: 0,
    attempted: [],
    answered: [],
    stoppedCleanly: false,
  }));
  // Two trained models whose bytes alternate, so every push is a new version.
  const models = [buildDemoModel({ seed: 1 }).bytes, buildDemoModel({ seed: 2 }).bytes];
  const kills = Object.fromEntries(KILL_KINDS.map((k) => [k, 0])) as Record<KillKind, number>;
  let controlPlane: RunningProcess | undefined;
  let api: FleetApi | undefined;
  let rollouts: ReturnType<typeof rolloutApi> | undefined;
  let pushes = 0;
  let stalls = 0;
  let swapsInterrupted = 0;
  let load: Promise<void>[] = [];
  let restartMs = 0;
  let recoverMs = 0;
  let loadRunning = true;

  const connect = (): void => {
    api?.close();
    rollouts?.close();
    api = fleetApi(controlPlane!.ready[1]!, controlPlane!.ready[4]!);
    rollouts = rolloutApi(controlPlane!.ready[1]!, controlPlane!.ready[4]!);
  };
  const startControlPlane = async (): Promise<void> => {
    controlPlane = await startProcess(bin.controlPlane, serveArgs, LISTENING, { env, timeoutMs: START_TIMEOUT_MS });
    connect();
  };
  const startAgent = async (agent: Agent, extra: string[] = []): Promise<void> => {
    agent.attempted.push(0);
    agent.answered.push(0);
    agent.starts++;
    const args = ['run', '--config', join(dir, 'agent.yaml'), '--server', controlPlane!.ready[1]!, '--data-dir', agent.dir, '--local-port', '0', ...extra];
    agent.process = await startProcess(bin.agent, args, AGENT_READY, { env, timeoutMs: START_TIMEOUT_MS });
    agent.url = agent.process.ready[2]!;
  };
  const kill = async (p: RunningProcess | undefined): Promise<void> => {
    if (!p) return;
    p.child.kill('SIGKILL');
    await p.exited;
  };
  const storedCount = (): number => {
    const db = new Database(storeFile, { readonly: true, fileMustExist: true });
    try {
      return (db.prepare('SELECT count(*) AS n FROM telemetry_records').get() as { n: number }).n;
    } finally {
      db.close();
    }
  };
  /** One application client: requests one after another to the agent's current local API, across its restarts. */
  const client = async (agent: Agent, seed: number): Promise<void> => {
    const next = vibrationRowSampler(seed);
    while (loadRunning) {
      const url = agent.url;
      const boot = agent.starts;
      if (!url || !agent.process || agent.process.child.exitCode !== null || agent.process.child.signalCode !== null) {
        await sleep(20);
        continue;
      }
      const row = next().features;
      agent.attempted[boot - 1]!++;
      try {
        const response = await fetch(`${url}/v2/models/${MODEL}/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ inputs: [{ name: 'features', shape: [1, row.length], datatype: 'FP32', data: row }] }),
          signal: AbortSignal.timeout(10_000),
        });
        await response.arrayBuffer();
        if (response.status === 200) agent.answered[boot - 1]!++;
        else await sleep(20);
        // Paced: the load makes fewer records than the uplink's small batches drain, so the backlog
        // a trial leaves drains by the check instead of growing with every trial.
        await sleep(CLIENT_PAUSE_MS);
      } catch {
        await sleep(20);
      }
    }
  };
  const answeredNow = (agent: Agent): number => agent.answered[agent.starts - 1] ?? 0;
  const waitServing = async (agent: Agent, what: string): Promise<boolean> => {
    const from = answeredNow(agent);
    try {
      await waitFor(
        () => answeredNow(agent),
        (n) => n >= from + LOAD_AFTER_RESTART,
        { timeoutMs: RECOVER_TIMEOUT_MS, intervalMs: 20, what },
      );
      return true;
    } catch (err) {
      stalls++;
      log(`chaos: stall: ${String(err)}`);
      return false;
    }
  };
  const waitIngesting = async (): Promise<boolean> => {
    const from = storedCount();
    try {
      await waitFor(storedCount, (n) => n > from, { timeoutMs: RECOVER_TIMEOUT_MS, intervalMs: 20, what: 'the control plane storing telemetry again' });
      return true;
    } catch (err) {
      stalls++;
      log(`chaos: stall: ${String(err)}`);
      return false;
    }
  };
  const activeRollouts = async (): Promise<number> =>
    (await rollouts!.list()).filter((r) => r.state === 'pending' || r.state === 'progressing' || r.state === 'paused').length;
  /** Pushes the next model version (bytes alternate between the two trained models). */
  const pushNext = async (): Promise<number> => {
    const version = await api!.uploadModel(MODEL, models[pushes % models.length]!);
    pushes++;
    return version.version;
  };
  const noActiveRollout = (): Promise<number> =>
    waitFor(activeRollouts, (n) => n === 0, { timeoutMs: SETTLE_TIMEOUT_MS, intervalMs: 100, what: 'no active rollout' });

  try {
    await startControlPlane();
    for (const agent of agents) {
      const token = await api!.createEnrollmentToken(agent.id);
      await startAgent(agent, ['--device-id', agent.id, '--enroll-token', token]);
    }
    await pushNext();
    await api!.deploy(MODEL);
    load = agents.flatMap((agent, i) => Array.from({ length: options.clientsPerAgent ?? 2 }, (_, c) => client(agent, 1000 * (i + 1) + c)));
    for (const agent of agents) await waitServing(agent, `${agent.id} serving the first model`);
    log(`chaos: ${agents.length} agents serving under load; ${options.trials} trials in ${dir}`);

    let trialsRun = 0;
    for (let trial = 1; trial <= options.trials; trial++) {
      if (options.maxMinutes !== undefined && performance.now() - started > options.maxMinutes * 60_000) {
        log(`chaos: ${options.maxMinutes} min are up after ${trialsRun} trials; checking`);
        break;
      }
      trialsRun++;
      const kind = options.cycleKinds ? kinds[(trial - 1) % kinds.length]! : pick(kinds);
      const agent = pick(agents);
      kills[kind]++;
      switch (kind) {
        case 'agent-enqueue':
          // Two clients per agent keep the recorder's group commits going: a random moment lands in one.
          await sleep(random() * 300);
          await kill(agent.process);
          break;
        case 'agent-upload':
          // Records waiting and the uplink connected: a batch is on its way or about to be.
          await waitFor(
            () => health(agent.url),
            (h) => h !== undefined && h.uplinkConnected && h.bufferDepth > 0,
            { timeoutMs: RECOVER_TIMEOUT_MS, intervalMs: 5, what: 'an upload under way' },
          ).catch(() => undefined);
          await sleep(random() * 20);
          await kill(agent.process);
          break;
        case 'agent-swap': {
          await noActiveRollout();
          const version = await pushNext();
          await api!.deploy(MODEL);
          // Download, verify, self-test, load, swap: somewhere in there (or just after).
          await sleep(random() * 800);
          const before = await health(agent.url);
          await kill(agent.process);
          if (before?.activeModel?.version !== version) swapsInterrupted++;
          break;
        }
        case 'cp-commit':
          await sleep(random() * 300);
          await kill(controlPlane);
          break;
        case 'cp-ack': {
          // Right after a batch was committed: its ack is being published, or the next batch committed.
          const from = storedCount();
          await waitFor(storedCount, (n) => n > from, { timeoutMs: RECOVER_TIMEOUT_MS, intervalMs: 2, what: 'a batch committed' }).catch(() => undefined);
          await sleep(random() * 10);
          await kill(controlPlane);
          break;
        }
        case 'cp-rollout': {
          await noActiveRollout();
          const version = await pushNext();
          await rollouts!.start({
            model: MODEL,
            version,
            wavePercents: [50, 100],
            bakeSeconds: 1,
            minDevices: 1,
            gates: ['none'],
            clientRequestId: `chaos-${trial}`,
          });
          // Waves, bakes and desired-state writes go by every tick (200 ms): somewhere among them.
          await sleep(random() * 2500);
          await kill(controlPlane);
          break;
        }
      }
      const killedAt = performance.now();
      if (kind.startsWith('agent-')) {
        await startAgent(agent);
        restartMs += performance.now() - killedAt;
        await waitServing(agent, `${agent.id} serving again after the kill`);
      } else {
        await startControlPlane();
        restartMs += performance.now() - killedAt;
        await waitIngesting();
      }
      recoverMs += performance.now() - killedAt;
      if (trial % 10 === 0 || trial === options.trials) {
        const elapsed = (performance.now() - started) / 1000;
        log(`chaos: trial ${trial}/${options.trials} (${elapsed.toFixed(0)} s) kills ${JSON.stringify(kills)} stalls ${stalls}`);
      }
    }

    // Heal and settle: rollouts end, load stops, buffers drain, every device serves its desired model.
    await noActiveRollout().catch((err: unknown) => log(`chaos: ${String(err)}`));
    const rolloutCount = (await rollouts!.list()).length;
    loadRunning = false;
    await Promise.all(load);
    const desiredOf = async (): Promise<Map<string, { name: string; version: number } | null>> =>
      new Map((await api!.listDevices()).map((d) => [d.id, d.desiredModel ? { name: d.desiredModel.name, version: Number(d.desiredModel.version) } : null]));
    const reportedErrorOf = async (): Promise<Map<string, string>> => new Map((await api!.listDevices()).map((d) => [d.id, d.reported?.lastErrorCode ?? '']));
    // On its desired model, or saying why not: a refusal is final for that revision, waiting longer changes nothing.
    const settled = async (): Promise<boolean> => {
      const desired = await desiredOf();
      const errors = await reportedErrorOf();
      const healths = await Promise.all(agents.map((a) => health(a.url)));
      return healths.every((h, i) => {
        const want = desired.get(agents[i]!.id);
        return (
          h && h.bufferDepth === 0 && ((h.activeModel?.name === want?.name && h.activeModel?.version === want?.version) || errors.get(agents[i]!.id) !== '')
        );
      });
    };
    const drained = await waitFor(settled, (ok) => ok, {
      timeoutMs: DRAIN_TIMEOUT_MS,
      intervalMs: 200,
      what: 'buffers drained and every device on its desired model or reporting why not',
    }).then(
      () => true,
      (err: unknown) => (log(`chaos: ${String(err)}`), false),
    );
    const desired = await desiredOf();
    const reportedErrors = await reportedErrorOf();
    for (const agent of agents) {
      const h = await health(agent.url);
      const want = desired.get(agent.id);
      if (h?.activeModel?.version !== want?.version)
        log(
          `chaos: ${agent.id} serves ${JSON.stringify(h?.activeModel)} but its desired model is ${JSON.stringify(want)}; its log:\n${agent.process?.stderr().slice(-4000)}`,
        );
    }
    const served = new Map(await Promise.all(agents.map(async (a) => [a.id, (await health(a.url))?.activeModel ?? null] as const)));
    for (const agent of agents) {
      const stopped = agent.process!.line(AGENT_STOPPED);
      const code = await stopProcess(agent.process);
      agent.stoppedCleanly = code === 0 && (await Promise.race([stopped.then(() => true), sleep(1000).then(() => false)]));
    }
    await stopProcess(controlPlane);
    controlPlane = undefined;

    const evidence: DeviceEvidence[] = agents.map((agent) => {
      const buffer = readBuffer(join(agent.dir, 'buffer.db'));
      const servedModel = served.get(agent.id);
      return {
        deviceId: agent.id,
        ...buffer,
        starts: agent.starts,
        attempted: agent.attempted,
        answered: agent.answered,
        lastBootStoppedCleanly: agent.stoppedCleanly,
        stored: readStored(storeFile, agent.id),
        served: servedModel ? { name: servedModel.name, version: Number(servedModel.version) } : null,
        desired: desired.get(agent.id) ?? null,
        reportedError: reportedErrors.get(agent.id) ?? '',
      };
    });
    const verdict = check(evidence);
    const seconds = (performance.now() - started) / 1000;
    const { devices, ...totals } = verdict;
    return {
      trials: trialsRun,
      ...totals,
      drained,
      kills,
      stalls,
      swaps_interrupted: swapsInterrupted,
      rollouts: rolloutCount,
      versions_deployed: pushes,
      seconds: Number(seconds.toFixed(1)),
      seconds_per_trial: Number((seconds / Math.max(1, trialsRun)).toFixed(2)),
      restart_s_mean: Number((restartMs / 1000 / Math.max(1, trialsRun)).toFixed(2)),
      recover_s_mean: Number((recoverMs / 1000 / Math.max(1, trialsRun)).toFixed(2)),
      devices,
    };
  } finally {
    loadRunning = false;
    api?.close();
    rollouts?.close();
    for (const agent of agents) await stopProcess(agent.process, 'SIGKILL');
    await stopProcess(controlPlane, 'SIGKILL');
    if (options.keep) log(`chaos: data kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

function readBuffer(file: string): Pick<DeviceEvidence, 'committed' | 'pendingSeqs' | 'pendingOkInferences' | 'dropped' | 'boot'> {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const committed = (db.prepare(`SELECT seq FROM sqlite_sequence WHERE name = 'outbox'`).get() as { seq: number } | undefined)?.seq ?? 0;
    const pending = db.prepare('SELECT seq, boot, stream, body FROM outbox').all() as Array<{ seq: number; boot: number; stream: number; body: Buffer }>;
    const pendingSeqs = pending.map((r) => r.seq);
    // Answered inferences whose records still wait in the buffer: not lost, buffered.
    const pendingOkInferences: number[] = [];
    for (const r of pending) {
      if (r.stream !== Stream.STREAM_INFERENCE) continue;
      const body = TelemetryRecord.decode(r.body).body;
      if (body?.$case === 'inference' && body.value.outcome === Outcome.OUTCOME_OK)
        pendingOkInferences[r.boot - 1] = (pendingOkInferences[r.boot - 1] ?? 0) + 1;
    }
    const state = (key: string): string | undefined =>
      (db.prepare('SELECT value FROM agent_state WHERE key = ?').get(key) as { value: string } | undefined)?.value;
    const drops = JSON.parse(state('buffer.drops') ?? '{}') as Record<string, Record<string, number>>;
    const dropped = Object.values(drops).reduce((n, reasons) => n + Object.values(reasons).reduce((a, b) => a + b, 0), 0);
    return { committed, pendingSeqs, pendingOkInferences: Array.from(pendingOkInferences, (n) => n ?? 0), dropped, boot: Number(state('boot')) };
  } finally {
    db.close();
  }
}

function readStored(file: string, deviceId: string): StoredRecord[] {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT boot, seq, kind, ok FROM telemetry_records WHERE device_id = ?').all(deviceId) as StoredRecord[];
  } finally {
    db.close();
  }
}
