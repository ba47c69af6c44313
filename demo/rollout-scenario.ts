import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { systemClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { createLogger } from '../common/logger.js';
import type { ModelVersion } from '../common/proto/driftline/v1/models.js';
import { RolloutServiceService, type Rollout } from '../common/proto/driftline/v1/rollouts.js';
import { toCliError } from '../cli/connection.js';
import { createOperatorClient, OperatorCallError, type OperatorClient } from '../client/operator-client.js';
import { enrollSimulatedDevices, FleetSimulator, type VersionBehavior } from '../simulator/fleet-simulator.js';
import { buildDemoModel } from './model/demo-model.js';
import { ProcessGroup, type DemoChild } from './processes.js';

/**
 * `npm run demo -- --scenario rollout|bad-model`: a staged rollout across a simulated fleet.
 * The control plane is the real `driftline serve` process; the fleet is 100 simulated devices
 * in this process, each its own MQTT client with its own credential on the real broker (90
 * the model fits, 10 Raspberry Pis it does not). They obey their desired state and send
 * inference telemetry whose latency and error rate depend on the version they run. A hundred
 * devices show waves, cohorts and gates far better than three agent processes could on two cores.
 *
 *   rollout    v2 is a little faster and errs less: it passes every wave and ends "succeeded".
 *   bad-model  v2 is 2.5x slower and errs 4x more: it stops at the canary and rolls back ("aborted").
 */
export type RolloutScenario = 'rollout' | 'bad-model';
export const ROLLOUT_SCENARIOS: readonly RolloutScenario[] = ['rollout', 'bad-model'];

export interface RolloutScenarioOptions {
  scenario: RolloutScenario;
  /** Seconds the rollout may take, a bound: the scenario ends when the rollout does; default 40. */
  duration?: number | undefined;
  /** Bake of each wave in seconds; default a fifth of the duration. */
  bake?: number | undefined;
  json?: boolean | undefined;
  dataDir?: string | undefined;
  keep?: boolean | undefined;
}

const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const MODEL = 'vibration';
const FITS = 90;
const DOES_NOT_FIT = 10;
const WAVES = [5, 25, 100];
const MIN_DEVICES = 3;
const DEFAULT_DURATION_S = 40;
const INFERENCES_PER_DEVICE_PER_S = 10;
const START_TIMEOUT_MS = 60_000;
const CONVERGE_TIMEOUT_MS = 15_000;

// Half of the answers get their true label back from the application (the accuracy gate reads them).
const LABEL_RATE = 0.5;
/** v1, the model the fleet runs before either rollout. */
const CURRENT: VersionBehavior = { latencyMs: 12, errorRate: 0.01, labelRate: LABEL_RATE, accuracy: 0.9 };
const BEHAVIOR: Record<RolloutScenario, Record<number, VersionBehavior>> = {
  rollout: { 1: CURRENT, 2: { latencyMs: 10, errorRate: 0.005, labelRate: LABEL_RATE, accuracy: 0.95 } },
  'bad-model': { 1: CURRENT, 2: { latencyMs: 30, errorRate: 0.04, labelRate: LABEL_RATE, accuracy: 0.78 } },
};

export async function runRolloutScenario(options: RolloutScenarioOptions): Promise<number> {
  const say = (text: string): void => {
    if (!options.json) process.stdout.write(`${text}\n`);
  };
  const durationS = options.duration ?? DEFAULT_DURATION_S;
  const bakeS = options.bake === undefined ? Math.max(2, Math.floor(durationS / 5)) : Math.ceil(options.bake);
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'driftline-demo-rollout-'));
  mkdirSync(join(dataDir, 'logs'), { recursive: true });
  const group = new ProcessGroup();
  let controlPlane: DemoChild | undefined;
  let sim: FleetSimulator | undefined;
  let client: OperatorClient | undefined;
  let traffic: Promise<void> | undefined;
  const stopTraffic = new AbortController();
  let ok = false;
  try {
    // A fast driver tick so short bakes end on time; everything else as `driftline serve` defaults.
    const configFile = join(dataDir, 'control-plane.yaml');
    writeFileSync(configFile, 'rollout:\n  tickInterval: 1s\n  watchInterval: 500ms\n');
    const args = ['serve', '--config', configFile, '--data-dir', join(dataDir, 'control-plane'), '--grpc-port', '0', '--http-port', '0', '--mqtt-port', '0'];
    say(`demo: starting the control plane: driftline ${args.join(' ')}`);
    controlPlane = await group.start({
      name: 'control plane',
      script: 'bin/driftline.js',
      args,
      logFile: join(dataDir, 'logs', 'control-plane.log'),
      ready: LISTENING,
      readyTimeoutMs: START_TIMEOUT_MS,
    });
    const [, grpc, mqttUrl, , tokenFile] = controlPlane.ready;
    const token = readFileSync(tokenFile!, 'utf8').trim();
    client = createOperatorClient({ address: grpc!, token, timeoutMs: 30_000, streamTimeoutMs: 30_000 });
    const rollouts = client.service(RolloutServiceService);

    // Two versions of the demo classifier; the model fits Jetsons and x86 boxes, not Raspberry Pis.
    const constraints = { 'driftline.profiles': 'jetson-*,x86_64-*' };
    const v1 = await upload(client, buildDemoModel({ seed: 1 }).bytes, 'current model', constraints);
    const v2 = await upload(
      client,
      buildDemoModel({ seed: 2 }).bytes,
      options.scenario === 'rollout' ? 'retrained: faster' : 'retrained: slower and wrong more often',
      constraints,
    );
    say(`demo: pushed ${MODEL}@v${v1.version} and ${MODEL}@v${v2.version} (constraint driftline.profiles=${constraints['driftline.profiles']})`);

    const profiles = ['jetson-orin-nano-jp6', 'jetson-agx-orin-jp6', 'x86_64-nvidia-cuda12'];
    const specs = [
      ...Array.from({ length: FITS }, (_, i) => ({
        id: `sim-${String(i + 1).padStart(3, '0')}`,
        profile: profiles[i % profiles.length]!,
        labels: { site: 'plant-3' },
      })),
      ...Array.from({ length: DOES_NOT_FIT }, (_, i) => ({ id: `sim-pi-${i + 1}`, profile: 'raspberry-pi-5', labels: { site: 'plant-3' } })),
    ];
    say(`demo: enrolling ${specs.length} simulated devices and connecting each to the broker with its own credential`);
    const creds = await enrollSimulatedDevices({ address: grpc!, token, devices: specs });
    const behavior = BEHAVIOR[options.scenario];
    sim = await FleetSimulator.start({
      brokerUrl: mqttUrl!,
      devices: creds,
      behavior: (v) => behavior[v] ?? behavior[1]!,
      clock: systemClock,
      logger: createLogger('simulator', 'warn'),
    });

    // Everyone that fits starts on v1 (a single wave with no gates), then traffic flows all along.
    const initial = await rollouts.startRollout(startRequest(v1.version, [100], 0, ['none'], 'demo-initial'));
    await until(
      async () => (await rollouts.getRollout({ id: initial.id })).state === 'succeeded',
      Math.max(CONVERGE_TIMEOUT_MS, durationS * 1000),
      'the fleet to run v1',
    );
    say(`demo: ${FITS} devices run ${MODEL}@v${v1.version}; sending ${INFERENCES_PER_DEVICE_PER_S} inferences/s from each`);
    traffic = (async () => {
      while (!stopTraffic.signal.aborted) {
        await sim!.emitInferences(INFERENCES_PER_DEVICE_PER_S).catch(() => undefined);
        await sleep(1000, undefined, { signal: stopTraffic.signal }).catch(() => undefined);
      }
    })();

    const gates = ['install-failure-rate<=0.2', 'error-rate-delta<=0.02', 'p95-latency-ratio<=1.5', 'accuracy-delta>=-0.02'];
    say(
      `demo: $ driftline rollout start --model ${MODEL} --version ${v2.version} --waves ${WAVES.join(',')} --bake ${bakeS}s --min-devices ${MIN_DEVICES} --target site=plant-3 ${gates.map((g) => `--gate '${g}'`).join(' ')}`,
    );
    const started = await rollouts.startRollout(startRequest(v2.version, WAVES, bakeS, gates, `demo-${options.scenario}`));
    say(
      `demo: rollout ${started.id}: ${started.targetedDevices} compatible devices, ${started.incompatible.length} incompatible (${started.incompatible[0]?.reason ?? '-'}); cohorts ${started.waves.map((w) => w.devices).join(' < ')}`,
    );
    say(`demo: $ driftline rollout status ${started.id} --watch`);

    const deadline = performance.now() + durationS * 1000;
    // Convergence waits are bounded by what is left of the duration, never less than their own bound.
    const convergeMs = (): number => Math.max(CONVERGE_TIMEOUT_MS, deadline - performance.now());
    let current: Rollout = started;
    let lastLine = '';
    while (performance.now() < deadline) {
      current = await rollouts.getRollout({ id: started.id });
      const line = statusLine(current);
      if (line !== lastLine) say(`  ${line}`);
      lastLine = line;
      if (current.state === 'succeeded' || current.state === 'aborted') break;
      await sleep(500);
    }

    // The rollout has decided; the devices follow by themselves (to v2, or back to v1).
    const target = current.state === 'succeeded' ? v2.version : v1.version;
    if (current.state === 'succeeded' || current.state === 'aborted') {
      await until(
        async () => ((await rollouts.getRollout({ id: started.id })).versions[target] ?? 0) === FITS,
        convergeMs(),
        `every device on v${target}`,
      ).catch(() => undefined);
    }
    current = await rollouts.getRollout({ id: started.id });
    for (const g of current.lastEvaluation) say(`  gate ${g.gate}: ${g.verdict} - ${g.detail}`);
    const versions = Object.fromEntries(
      Object.entries(current.versions)
        .filter(([v]) => v !== '0')
        .map(([v, n]) => [v, n]),
    );
    const expected = options.scenario === 'rollout' ? 'succeeded' : 'aborted';
    ok = current.state === expected && versions[String(target)] === FITS;
    if (!ok) say(`demo: expected the rollout to end ${expected} with every device on v${target}`);
    const report = {
      ok,
      scenario: options.scenario,
      rollout: { id: current.id, state: current.state, wave: current.wave, waves: current.waves.length, reason: current.reason },
      versions,
      devices: specs.length,
      compatible: current.targetedDevices,
      incompatible: current.incompatible.length,
      rolledBack: current.rolledBackDevices,
      bakeSeconds: bakeS,
    };
    if (!options.json) say(`demo: rollout ${current.state} at wave ${current.wave}/${current.waves.length}${current.reason ? `: ${current.reason}` : ''}`);
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return ok ? 0 : 1;
  } catch (err) {
    // A failed call is worded as the CLI words it (the control plane's code, or why it was unreachable).
    const error = err instanceof DriftlineError && !(err instanceof OperatorCallError) ? err : toCliError(err, '');
    const failure = { ok: false, scenario: options.scenario, error: { code: error.code, message: error.message }, dataDir };
    if (options.json) process.stdout.write(`${JSON.stringify(failure)}\n`);
    else process.stderr.write(`demo: error [${error.code}]: ${error.message} (logs in ${dataDir}/logs)\n`);
    return 1;
  } finally {
    stopTraffic.abort();
    await traffic;
    await sim?.shutdown().catch(() => undefined);
    client?.close();
    group.close();
    await controlPlane?.stop(10_000);
    if (ok && !options.keep && !options.dataDir) rmSync(dataDir, { recursive: true, force: true });
  }
}

function startRequest(version: number, wavePercents: number[], bakeSeconds: number, gates: string[], clientRequestId: string) {
  return {
    model: MODEL,
    version,
    wavePercents,
    bakeSeconds,
    minDevices: MIN_DEVICES,
    target: 'site=plant-3',
    gates,
    failureLimit: 0,
    consecutiveErrorLimit: 0,
    minInferences: 0,
    intervalSeconds: 0,
    // As `--min-devices` given on the command line (the line the demo prints) would.
    requireMinDevices: true,
    clientRequestId,
  };
}

function statusLine(r: Rollout): string {
  const versions = Object.entries(r.versions)
    .filter(([v]) => v !== '0')
    .sort(([a], [b]) => Number(b) - Number(a))
    .map(([v, n]) => `v${v}:${n}`)
    .join(' ');
  return `wave ${r.wave}/${r.waves.length} ${r.state.padEnd(11)} ${versions}${r.reason ? `  ${r.reason}` : ''}`;
}

function upload(client: OperatorClient, bytes: Uint8Array, description: string, metadata: Record<string, string>): Promise<ModelVersion> {
  return client.uploadModelBytes(bytes, { name: MODEL, description, metadata });
}

/** Polls a condition on the control plane's state until it holds (bounded). */
async function until(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (await check().catch(() => false)) return;
    await sleep(200);
  }
  throw new DriftlineError('INTERNAL', `timed out waiting for ${what}`);
}
