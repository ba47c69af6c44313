import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buffer } from 'node:stream/consumers';
import { setTimeout as sleep } from 'node:timers/promises';
import ort from 'onnxruntime-node';
import { DriftlineError } from '../common/errors.js';
import { DatasetServiceService } from '../common/proto/driftline/v1/datasets.js';
import {
  FederatedServiceService,
  type FederatedRoundSummary,
  type FederatedTask,
  type StartFederatedTaskRequest,
} from '../common/proto/driftline/v1/federated.js';
import { DeviceServiceService } from '../common/proto/driftline/v1/fleet.js';
import { ModelServiceService, type ModelVersion } from '../common/proto/driftline/v1/models.js';
import { ReleaseServiceService } from '../common/proto/driftline/v1/releases.js';
import { RolloutServiceService, type Rollout } from '../common/proto/driftline/v1/rollouts.js';
import { seededRandom } from '../common/seeded-random.js';
import { peekManifest } from '../common/trust/manifest.js';
import { createOperatorClient, type OperatorClient } from '../client/operator-client.js';
import { COHORT_LABEL } from '../control-plane/fleet/labels.js';
import { ArtifactStore } from '../control-plane/registry/artifact-store.js';
import { dirichletClassWeights, writeFederatedBaseModel } from './model/federated-model.js';
import { generateVibrationData, VIBRATION_CLASSES, VIBRATION_FEATURES, vibrationRowSampler, type VibrationRow } from './model/vibration-data.js';
import { describeExit, ProcessGroup, REPO_ROOT, type DemoChild } from './processes.js';

/**
 * `npm run demo -- --scenario federated`: federated learning on real processes, raw data never
 * leaving the devices. `driftline serve` (trust root + automation key) and N agents. Each
 * device's application sends its own labelled rows (infer, then the true label to /feedback):
 * every device sees its own mix of faults (a Dirichlet(α) draw per device, non-IID), and its
 * agent keeps the inputs and labels in its local sample store (the learner). The model goes up
 * with `--no-raw-capture`, so the control plane keeps no sample of it, and its v1 ships a weak
 * head (fitted in the lab on two of the four classes). A federated task then trains the head
 * across the fleet for a few rounds (each device trains on its own samples and sends only an
 * update; the control plane aggregates them, with central differential privacy); the devices
 * evaluate each round's head on their own held-out samples. The final head passes the evaluation
 * gate, becomes v2 with its lineage (task, rounds, clients, strategy, ε, δ), the automation key
 * signs it as a canary for the cohort and the canary rolls out. The final JSON line holds the
 * accuracy per round, the clients per round, ε and δ, the rollout's state and seconds per phase.
 */

export interface FederatedScenarioOptions {
  /** Upper bound in seconds on the whole run after the agents are up; default 420. */
  duration?: number | undefined;
  /** Agent processes; default 6. */
  devices?: number | undefined;
  json?: boolean | undefined;
  dataDir?: string | undefined;
  keep?: boolean | undefined;
}

const MODEL = 'vibration';
const COHORT = 'field';
const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const DEFAULT_DEVICES = 6;
const DEFAULT_DURATION_S = 420;
/** Labelled rows each device's application sends before the task; about a fifth become the device's held-out samples. */
const ROWS_PER_DEVICE = 250;
/**
 * One-row requests per second per device while the rows are collected. The learner trains only
 * on an idle device (the firmware profile's maxInferencesPerSecond, over a minute): 250 rows at
 * this rate keep the minute's average well under the generic profiles' 10/s.
 */
const COLLECT_RATE = 20;
/** Requests per second per device while the canary rolls out: enough telemetry for its gates. */
const CANARY_RATE = 4;
/** Flower's niid_bench split: α = 0.5 gives devices dominated by one or two classes. */
const DIRICHLET_ALPHA = 0.5;
/** Fresh rows per device, never sent, for the offline check of v1 and v2 on each device's own mix. */
const OFFLINE_ROWS_PER_DEVICE = 500;
const START_TIMEOUT_MS = 90_000;
const STOP_GRACE_MS = 20_000;
const FEEDBACK_BATCH = 50;
const REQUEST_TIMEOUT_MS = 10_000;
const POLL_MS = 500;
const PASSPHRASE_ENV = 'DRIFTLINE_AUTOMATION_KEY_PASSPHRASE';
/** The demo's own passphrase for the automation key it creates (a real one comes from a secret store). */
const DEMO_PASSPHRASE = 'driftline federated demo passphrase';

/** The task: every device each round, FedProx against the non-IID drift, central DP with a budget. */
const TASK = {
  rounds: 5,
  localEpochs: 2,
  batchSize: 16,
  learningRate: 0.3,
  roundDeadlineSeconds: 60,
  strategy: { name: 'fedprox', proximalMu: 0.01 },
  privacy: { mode: 'central-gaussian', clippingNorm: 2, noiseMultiplier: 0.3, targetEpsilon: 100, delta: 1e-3 },
  updateCompression: 'float32',
} as const;
/**
 * The evaluation gate: at least 10 points better on the devices' held-out samples. Not the
 * default class-recall-drop rule: v1's lab head calls most machines "imbalance" (one of the two
 * classes it knew), so its recall there is high for the wrong reason and any head that learnt
 * the other classes drops it.
 */
const FEDERATED_GATES = ['accuracy-delta>=0.1'];
/** Absolute gates: the canary's wave is the whole cohort, so no device is left on v1 to compare with. */
const CANARY_GATES = ['install-failure-rate<=0', 'error-rate<=0.01'];
const CANARY_BAKE = '10s';

type Phase = 'collect' | 'canary';

interface Tally {
  answered: number;
  correct: number;
}

interface Device {
  id: string;
  /** The device's class mix (Dirichlet draw), in VIBRATION_CLASSES order. */
  classWeights: number[];
  seed: number;
  localApiUrl: string;
}

/** One device's application: labelled rows from the device's own class mix, each answer scored, each label posted to /feedback. */
class DeviceApplication {
  failed = 0;
  lastError: string | undefined;
  /** Answers per `v<version>/<phase>`. */
  readonly tallies = new Map<string, Tally>();
  private readonly next: () => VibrationRow;
  private pending: Array<{ id: string; label: number }> = [];
  private seq = 0;

  constructor(private readonly device: Device) {
    this.next = vibrationRowSampler(device.seed, { classWeights: device.classWeights });
  }

  /** Sends `rows` labelled rows at `rate` per second (or until the signal), then posts their labels. */
  async send(phase: Phase, rate: number, rows: number, signal: AbortSignal): Promise<number> {
    const intervalMs = 1000 / rate;
    let due = performance.now();
    let answered = 0;
    while (answered < rows && !signal.aborted) {
      const waitMs = due - performance.now();
      if (waitMs > 0) await sleep(waitMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) break;
      if (await this.once(phase, signal)) answered++;
      if (this.pending.length >= FEEDBACK_BATCH) await this.flush();
      due = Math.max(due + intervalMs, performance.now());
    }
    await this.flush();
    return answered;
  }

  accuracy(version: number, phase: Phase): number | null {
    const t = this.tallies.get(`v${version}/${phase}`);
    return t && t.answered > 0 ? round(t.correct / t.answered) : null;
  }

  /** One labelled row; true when the agent answered it (a model still arriving is retried, not counted). */
  private async once(phase: Phase, signal: AbortSignal): Promise<boolean> {
    const row = this.next();
    const id = `${this.device.id}-${++this.seq}`;
    try {
      const response = await fetch(`${this.device.localApiUrl}/v2/models/${MODEL}/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ id, inputs: [{ name: 'features', shape: [1, row.features.length], datatype: 'FP32', data: row.features }] }),
        signal: AbortSignal.any([signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
      });
      const body = (await response.json()) as { model_version?: string; code?: string; outputs?: Array<{ name: string; data: unknown[] }> };
      if (response.status !== 200) {
        if (body.code !== 'MODEL_NOT_LOADED' && body.code !== 'MODEL_NOT_FOUND') this.fail(`HTTP ${response.status} ${body.code ?? ''}`);
        else await sleep(250);
        return false;
      }
      const label = body.outputs?.find((o) => o.name === 'label')?.data[0];
      const key = `v${Number(body.model_version)}/${phase}`;
      const tally = this.tallies.get(key) ?? { answered: 0, correct: 0 };
      tally.answered++;
      if (label === row.label) tally.correct++;
      this.tallies.set(key, tally);
      this.pending.push({ id, label: row.label });
      return true;
    } catch (err) {
      if (!signal.aborted) this.fail(err instanceof Error ? err.message : String(err));
      return false;
    }
  }

  /** The true labels of the answers so far, as an application that learns the outcome posts them: the learner joins them to the kept inputs. */
  private async flush(): Promise<void> {
    const items = this.pending;
    this.pending = [];
    if (items.length === 0) return;
    try {
      const response = await fetch(`${this.device.localApiUrl}/v2/models/${MODEL}/feedback`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ items }),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      if (response.status !== 202) this.fail(`feedback: HTTP ${response.status} ${await response.text()}`);
    } catch (err) {
      this.fail(`feedback: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private fail(reason: string): void {
    this.failed++;
    this.lastError = reason;
  }
}

/** What the demo saw happen, with the wall-clock time of each step (ms since the epoch). */
interface Timeline {
  startedAtMs: number;
  agentsReadyAtMs?: number;
  collectedAtMs?: number;
  task?: FederatedTask;
  taskStartedAtMs?: number;
  version?: ModelVersion;
  rollout?: Rollout;
  rolloutEndedAtMs?: number;
}

export async function runFederatedScenario(options: FederatedScenarioOptions): Promise<number> {
  const say = (text: string): void => {
    if (!options.json) process.stdout.write(`demo: ${text}\n`);
  };
  const durationS = options.duration ?? DEFAULT_DURATION_S;
  const deviceCount = options.devices ?? DEFAULT_DEVICES;
  const createdDir = options.dataDir === undefined;
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'driftline-demo-federated-'));
  mkdirSync(join(dataDir, 'logs'), { recursive: true });
  const group = new ProcessGroup();
  const apps: DeviceApplication[] = [];
  const problems: string[] = [];
  const stopper = new AbortController();
  const timeline: Timeline = { startedAtMs: Date.now() };
  let client: OperatorClient | undefined;
  let controlPlane: DemoChild | undefined;
  let canaryTraffic: Promise<unknown> | undefined;
  let ok = false;
  const onSignal = (): void => stopper.abort();
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, onSignal);
  try {
    if (!Number.isInteger(deviceCount) || deviceCount < 2) {
      throw new DriftlineError(
        'CONFIG_INVALID',
        `--scenario federated needs --devices 2 or more (federated rounds average several devices), got ${deviceCount}`,
      );
    }
    const keysDir = join(dataDir, 'keys');
    const env = { [PASSPHRASE_ENV]: DEMO_PASSPHRASE };
    say(`creating release keys and an automation key for ${MODEL} canaries (at most ${deviceCount} devices each) in ${keysDir}`);
    await driftline(['keys', 'init', '--dir', keysDir, '--root-keys', '1', '--threshold', '1', '--json'], env);
    const automation = JSON.parse(
      await driftline(['keys', 'create-automation', '--dir', keysDir, '--scope-models', MODEL, '--scope-max-devices', String(deviceCount), '--json'], env),
    ) as { keyFile: string; keyId: string };

    // Short intervals so rounds and the canary turn within a demo; everything else is `driftline serve`'s default.
    const configFile = join(dataDir, 'control-plane.yaml');
    writeFileSync(configFile, ['rollout:', '  tickInterval: 1s', '  watchInterval: 500ms', ''].join('\n'));
    const cpDir = join(dataDir, 'control-plane');
    const serveArgs = ['serve', '--config', configFile, '--data-dir', cpDir, '--grpc-port', '0', '--http-port', '0', '--mqtt-port', '0'];
    serveArgs.push('--trust-root', join(keysDir, 'root'), '--automation-key', automation.keyFile);
    say(`starting the control plane: driftline ${serveArgs.join(' ')}`);
    const starting = group.start({
      name: 'control plane',
      script: 'bin/driftline.js',
      args: serveArgs,
      logFile: join(dataDir, 'logs', 'control-plane.log'),
      ready: LISTENING,
      readyTimeoutMs: START_TIMEOUT_MS,
      env,
    });
    starting.catch(() => undefined);
    const modelFile = join(dataDir, 'models', `${MODEL}.onnx`);
    const base = await writeFederatedBaseModel(modelFile);
    say(
      `wrote ${modelFile}: a frozen backbone (dense ReLU, L2-normalized embedding of ${base.head.inputs}) and a dense head fitted in the lab on two of the four classes ` +
        `(accuracy ${pct(base.accuracy)} on the fleet's mix; a head trained centrally on every class reaches ${pct(base.centralizedAccuracy)})`,
    );
    controlPlane = await starting;
    const [, grpc, , , tokenFile] = controlPlane.ready;
    const operatorEnv = { DRIFTLINE_SERVER: grpc!, DRIFTLINE_TOKEN: readFileSync(tokenFile!, 'utf8').trim() };
    client = createOperatorClient({ address: grpc!, token: operatorEnv.DRIFTLINE_TOKEN, timeoutMs: 10_000, streamTimeoutMs: 10_000 });
    watchForCrash(controlPlane, problems, stopper);

    // Agents: the learner keeps every answered one-row request of the model with its label; nothing is uploaded as a sample.
    const agentConfig = join(dataDir, 'agent.json');
    writeFileSync(agentConfig, `${JSON.stringify({ capture: { sampleRate: 0 }, learner: { enabled: true, sampleRate: 1 } }, null, 2)}\n`);
    const mixRandom = seededRandom(4242);
    const devices: Device[] = Array.from({ length: deviceCount }, (_, i) => ({
      id: `demo-field-${i + 1}`,
      classWeights: dirichletClassWeights(DIRICHLET_ALPHA, VIBRATION_CLASSES.length, mixRandom),
      seed: 3000 + i,
      localApiUrl: '',
    }));
    const tokens: string[] = [];
    for (const d of devices) {
      const labels = { site: d.id.replace('demo-', ''), [COHORT_LABEL]: COHORT };
      tokens.push((await client.service(DeviceServiceService).createEnrollmentToken({ deviceId: d.id, labels, ttlSeconds: 0 })).token);
    }
    say(`starting ${devices.length} agents in cohort ${COHORT}, each with its own mix of faults (Dirichlet α=${DIRICHLET_ALPHA}):`);
    for (const d of devices) say(`  ${d.id}: ${d.classWeights.map((w, c) => `${VIBRATION_CLASSES[c]} ${pct(w)}`).join(', ')}`);
    const agents = await Promise.all(
      devices.map((d, i) =>
        group.start({
          name: d.id,
          script: 'bin/driftline-agent.js',
          args: [
            'run',
            '--device-id',
            d.id,
            '--enroll-token',
            tokens[i]!,
            '--server',
            grpc!,
            '--data-dir',
            join(dataDir, 'agents', d.id),
            '--local-port',
            '0',
            '--config',
            agentConfig,
          ],
          logFile: join(dataDir, 'logs', `${d.id}.log`),
          ready: AGENT_READY,
          readyTimeoutMs: START_TIMEOUT_MS,
        }),
      ),
    );
    agents.forEach((a, i) => {
      devices[i]!.localApiUrl = a.ready[2]!;
      watchForCrash(a, problems, stopper);
    });
    timeline.agentsReadyAtMs = Date.now();
    const deadline = performance.now() + durationS * 1000;

    // v1: signed by the release key, marked no-raw-capture (no sample of it is kept centrally), deployed to the fleet.
    const pushArgs = ['models', 'push', modelFile, '--name', MODEL, '--no-raw-capture', '--sign', '--keys-dir', keysDir];
    say(`pushing v1 (the weak head), signed: driftline ${pushArgs.join(' ')}`);
    await driftline(pushArgs, operatorEnv);
    await client.service(ModelServiceService).deployModel({ name: MODEL, version: 0, deviceIds: [], selector: '' });

    // The canary's settings: the model's retraining policy's rollout section (no trigger: only the federated task releases).
    const policyArgs = ['training', 'policy', 'set', MODEL, '--trainer', 'typescript', '--disable'];
    policyArgs.push('--canary-waves', '100', '--canary-min-devices', '1', '--canary-bake', CANARY_BAKE);
    for (const gate of CANARY_GATES) policyArgs.push('--canary-gate', gate);
    say(`canary settings for ${MODEL}: driftline ${policyArgs.join(' ')}`);
    await driftline(policyArgs, operatorEnv);

    // Every device's application labels its rows; the agents keep inputs and labels locally.
    say(`each application sends ${ROWS_PER_DEVICE} labelled rows (${COLLECT_RATE}/s) to its agent's local API and posts the true labels to /feedback`);
    for (const d of devices) apps.push(new DeviceApplication(d));
    const collected = await Promise.all(apps.map((app) => app.send('collect', COLLECT_RATE, ROWS_PER_DEVICE, stopper.signal)));
    if (stopper.signal.aborted) throw new DriftlineError('SHUTTING_DOWN', 'stopped while the rows were collected');
    timeline.collectedAtMs = Date.now();
    const v1Live = pooled(apps, 1, 'collect');
    say(`collected ${collected.reduce((a, b) => a + b, 0)} labelled rows; v1 answered ${pct(v1Live ?? 0)} of them right`);

    // The federated task, as an operator starts it.
    // The federated task, as an operator starts it (FederatedService; `driftline federated start` says the same).
    const request = federatedTaskRequest(deviceCount);
    say(`starting the federated task: ${describeRequest(request)}`);
    const started = await client.service(FederatedServiceService).startFederatedTask(request);
    timeline.taskStartedAtMs = Date.now();
    const task = await watchTask(client, started.id, deadline, stopper.signal, say);
    timeline.task = task;
    if (task.state !== 'succeeded')
      problems.push(`federated task ${task.id} ended ${task.state}${task.errorCode ? ` [${task.errorCode}]` : ''}: ${task.reason}`);

    if (task.resultVersion > 0) {
      const model = await client.service(ModelServiceService).getModel({ name: MODEL });
      timeline.version = model.versions.find((v) => v.version === task.resultVersion);
    }
    if (timeline.version && task.release?.rolloutId) {
      // Live traffic while the canary rolls out: its gates judge it, and v2's answers are scored.
      const canaryStop = new AbortController();
      const both = AbortSignal.any([canaryStop.signal, stopper.signal]);
      canaryTraffic = Promise.all(apps.map((app) => app.send('canary', CANARY_RATE, Number.MAX_SAFE_INTEGER, both)));
      timeline.rollout = await watchRollout(client, task.release.rolloutId, deadline, stopper.signal, say);
      timeline.rolloutEndedAtMs = Date.now();
      // A little more traffic on v2 once every device runs it, for its live accuracy.
      if (timeline.rollout.state === 'succeeded')
        await waitUntil(() => pooledAnswers(apps, task.resultVersion, 'canary') >= 20 * deviceCount, deadline, stopper.signal);
      canaryStop.abort();
      await canaryTraffic;
      if (timeline.rollout.state !== 'succeeded')
        problems.push(`the canary rollout ${timeline.rollout.id} ended ${timeline.rollout.state}: ${timeline.rollout.reason}`);
    } else if (task.state === 'succeeded') {
      problems.push(
        `task ${task.id} succeeded without a ${timeline.version ? 'canary rollout' : 'registered version'} (release: ${task.release?.state ?? 'none'} ${task.release?.reason ?? ''})`,
      );
    }
    const failed = apps.reduce((n, a) => n + a.failed, 0);
    if (failed > 0) problems.push(`${failed} requests failed (last: ${apps.find((a) => a.lastError)?.lastError})`);

    // The independent check: v1 and v2 run here with onnxruntime on fresh rows of every device's own mix.
    const offline = timeline.version ? await offlineAccuracy(join(cpDir, 'artifacts'), base.sha256, timeline.version.sha256, devices) : undefined;
    const signature = timeline.version ? await signatureOf(client, timeline.version.version) : undefined;
    const stats = await client.service(DatasetServiceService).getSampleStats({ model: MODEL });
    const central = stats.models.find((m) => m.model === MODEL);

    const rounds = task.rounds;
    const accuracyPerRound = rounds.map((r) => (r.accuracy >= 0 ? round(r.accuracy) : null));
    const parentAccuracy = splitAccuracy(task, 'parent');
    const candidateAccuracy = splitAccuracy(task, 'candidate');
    const last = accuracyPerRound.at(-1) ?? null;
    const first = accuracyPerRound[0] ?? null;
    const targets = {
      last_round_above_first: last !== null && first !== null && last > first,
      last_round_above_base: last !== null && parentAccuracy !== null && last > parentAccuracy,
      v2_above_v1_offline: offline !== undefined && offline.v2 > offline.v1,
      signed_canary: signature?.status === 'canary' && signature.signedBy === 'automation-key',
      rollout_succeeded: timeline.rollout?.state === 'succeeded',
      no_raw_samples_at_control_plane: (central?.rows ?? 0) === 0,
    };
    for (const [name, met] of Object.entries(targets)) if (!met) problems.push(`target not met: ${name}`);
    ok = problems.length === 0;
    const report = {
      ok,
      scenario: 'federated',
      accuracy_per_round: accuracyPerRound,
      clients_per_round: rounds.map((r) => r.aggregated),
      epsilon: round(task.epsilon),
      delta: task.delta,
      result_version: task.resultVersion,
      rollout_state: timeline.rollout?.state ?? null,
      accuracy: {
        // The gate's figures: v1's head and the final head on the devices' own held-out samples.
        base_federated_evaluation: parentAccuracy,
        final_federated_evaluation: candidateAccuracy,
        // What the applications saw: v1's answers on the rows they labelled, v2's during and after the canary.
        v1_live: v1Live,
        v2_live: timeline.version ? pooled(apps, timeline.version.version, 'canary') : null,
        // This demo's own check, with onnxruntime-node on fresh rows of every device's mix.
        v1_offline: offline?.v1 ?? null,
        v2_offline: offline?.v2 ?? null,
        centralized_head_reference: round(base.centralizedAccuracy),
      },
      targets,
      rounds: rounds.map(roundOf),
      task: {
        id: task.id,
        state: task.state,
        error_code: task.errorCode || null,
        reason: task.reason,
        strategy: task.spec?.strategy?.name ?? null,
        privacy: task.spec?.privacy?.mode ?? null,
        evaluation: task.evaluation ? { verdict: task.evaluation.verdict, gates: task.evaluation.gates } : null,
        release: task.release ? { state: task.release.state, audience: task.release.audience, reason: task.release.reason } : null,
      },
      lineage: timeline.version ? lineageOf(timeline.version, signature?.manifestLineage) : null,
      signature: signature ? { status: signature.status, signed_by: signature.signedBy, audience: signature.audience } : null,
      rollout: timeline.rollout
        ? {
            id: timeline.rollout.id,
            state: timeline.rollout.state,
            target: timeline.rollout.target,
            version: timeline.rollout.version,
            reason: timeline.rollout.reason,
          }
        : null,
      raw_samples_at_control_plane: central?.rows ?? 0,
      devices: Object.fromEntries(
        devices.map((d, i) => [
          d.id,
          {
            class_mix: d.classWeights.map(round),
            labelled_rows: collected[i],
            v1_live: apps[i]!.accuracy(1, 'collect'),
            v1_offline: offline?.perDevice[i]?.v1 ?? null,
            v2_offline: offline?.perDevice[i]?.v2 ?? null,
          },
        ]),
      ),
      seconds: {
        setup: secondsBetween(timeline.startedAtMs, timeline.agentsReadyAtMs),
        collect: secondsBetween(timeline.agentsReadyAtMs, timeline.collectedAtMs),
        federated_rounds: secondsBetween(timeline.taskStartedAtMs, rounds.at(-1)?.endedAtMs),
        evaluation_and_register: secondsBetween(rounds.at(-1)?.endedAtMs, timeline.version?.createdAtMs),
        canary_rollout: secondsBetween(timeline.version?.createdAtMs, timeline.rolloutEndedAtMs),
        per_round: rounds.map((r) => secondsBetween(r.startedAtMs, r.endedAtMs)),
      },
      problems,
      ...(options.keep || !ok ? { dataDir } : {}),
    };
    process.stdout.write(options.json ? `${JSON.stringify(report)}\n` : `${JSON.stringify(report, null, 2)}\n`);
  } catch (err) {
    const error =
      err instanceof DriftlineError
        ? { code: err.code, message: err.message }
        : { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) };
    if (options.json) process.stdout.write(`${JSON.stringify({ ok: false, scenario: 'federated', error, problems, dataDir })}\n`);
    else process.stderr.write(`demo: error [${error.code}]: ${error.message}\n`);
  } finally {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) process.off(signal, onSignal);
    stopper.abort();
    await canaryTraffic;
    client?.close();
    group.close();
    const others = group.running.filter((c) => c !== controlPlane);
    await Promise.all(others.map((c) => c.stop(STOP_GRACE_MS)));
    await Promise.all(group.running.map((c) => c.stop(STOP_GRACE_MS)));
    if (ok && createdDir && !options.keep) rmSync(dataDir, { recursive: true, force: true });
    else say(`data and logs kept in ${dataDir}`);
  }
  return ok ? 0 : 1;
}

/** The demo's task: every device each round (one may drop), FedProx, central DP with a budget, the result released as a canary. */
function federatedTaskRequest(devices: number): StartFederatedTaskRequest {
  return {
    model: MODEL,
    baseVersion: 1,
    clientRequestId: `demo-federated-${Date.now()}`,
    cohortSelector: `${COHORT_LABEL}=${COHORT}`,
    rounds: TASK.rounds,
    clientsPerRound: devices,
    minClients: Math.max(2, devices - 1),
    overSelection: 0,
    roundDeadlineSeconds: TASK.roundDeadlineSeconds,
    localEpochs: TASK.localEpochs,
    batchSize: TASK.batchSize,
    learningRate: TASK.learningRate,
    strategy: { ...EMPTY_STRATEGY, name: TASK.strategy.name, proximalMu: TASK.strategy.proximalMu },
    privacy: { ...EMPTY_PRIVACY, ...TASK.privacy },
    mode: 'sync',
    asyncBufferSize: 0,
    maxStaleness: 0,
    updateCompression: TASK.updateCompression,
    maxUpdateNorm: 0,
    gates: FEDERATED_GATES,
    release: true,
  };
}

const EMPTY_STRATEGY = { serverLearningRate: 0, serverMomentum: 0, beta2: 0, tau: 0, proximalMu: 0, trimFraction: 0, byzantineClients: 0, krumSelected: 0 };
const EMPTY_PRIVACY = { adaptiveClipping: false, targetQuantile: 0, clippingLearningRate: 0 };

function describeRequest(r: StartFederatedTaskRequest): string {
  return (
    `${r.model} from v${r.baseVersion}, devices ${r.cohortSelector}, ${r.rounds} rounds of ${r.clientsPerRound} clients (quorum ${r.minClients}, deadline ${r.roundDeadlineSeconds} s), ` +
    `${r.localEpochs} local epochs of batches of ${r.batchSize} at learning rate ${r.learningRate}, ${r.strategy?.name} (μ ${r.strategy?.proximalMu}), ` +
    `${r.privacy?.mode} (clipping ${r.privacy?.clippingNorm}, noise multiplier ${r.privacy?.noiseMultiplier}, budget ε ${r.privacy?.targetEpsilon} at δ ${r.privacy?.delta}), ` +
    `${r.updateCompression} updates, released as a canary`
  );
}

/** Follows the task until it ends (or the deadline), saying each round as it closes. */
async function watchTask(client: OperatorClient, id: string, deadline: number, signal: AbortSignal, say: (text: string) => void): Promise<FederatedTask> {
  const federated = client.service(FederatedServiceService);
  let task = await federated.getFederatedTask({ id });
  let said = '';
  const closed = new Set<number>();
  for (;;) {
    const line = `task ${task.id}: ${task.state}, round ${task.round}/${task.spec?.rounds ?? '?'}`;
    if (line !== said) say((said = line));
    for (const r of task.rounds) {
      if (closed.has(r.round) || (r.state !== 'done' && r.state !== 'failed')) continue;
      closed.add(r.round);
      say(
        `  round ${r.round} ${r.state}: ${r.aggregated}/${r.invited} updates aggregated, train loss ${r.trainLoss.toFixed(3)}, ` +
          `accuracy on the devices' held-out samples ${r.accuracy >= 0 ? pct(r.accuracy) : 'not evaluated'}, ε ${r.epsilon.toFixed(2)}`,
      );
    }
    if (ENDED_TASK_STATES.has(task.state)) return task;
    if (performance.now() >= deadline || signal.aborted) {
      return { ...task, reason: `${task.reason ? `${task.reason}; ` : ''}the demo stopped waiting (${signal.aborted ? 'interrupted' : '--duration passed'})` };
    }
    await sleep(POLL_MS, undefined, { signal }).catch(() => undefined);
    task = await federated.getFederatedTask({ id });
  }
}

const ENDED_TASK_STATES = new Set(['succeeded', 'rejected', 'failed', 'cancelled']);

async function watchRollout(client: OperatorClient, id: string, deadline: number, signal: AbortSignal, say: (text: string) => void): Promise<Rollout> {
  let said = '';
  for (;;) {
    const rollout = await client.service(RolloutServiceService).getRollout({ id });
    const line = `canary rollout ${rollout.id} of v${rollout.version} to ${rollout.target}: ${rollout.state}${rollout.reason ? ` (${rollout.reason})` : ''}`;
    if (line !== said) say((said = line));
    if (rollout.state === 'succeeded' || rollout.state === 'aborted') return rollout;
    if (performance.now() >= deadline || signal.aborted) return rollout;
    await sleep(POLL_MS, undefined, { signal }).catch(() => undefined);
  }
}

async function waitUntil(condition: () => boolean, deadline: number, signal: AbortSignal): Promise<void> {
  while (!condition() && performance.now() < deadline && !signal.aborted) await sleep(POLL_MS, undefined, { signal }).catch(() => undefined);
}

function roundOf(r: FederatedRoundSummary): Record<string, unknown> {
  return {
    round: r.round,
    state: r.state,
    invited: r.invited,
    reported: r.reported,
    aggregated: r.aggregated,
    dropped: r.dropped,
    refused: r.refused,
    train_loss: round(r.trainLoss),
    accuracy: r.accuracy >= 0 ? round(r.accuracy) : null,
    eval_loss: round(r.evalLoss),
    eval_samples: r.evalSamples,
    clipping_norm: round(r.clippingNorm),
    epsilon: round(r.epsilon),
    ...(r.errorCode ? { error_code: r.errorCode, reason: r.reason } : {}),
  };
}

/** The gate's test split as the task recorded it: the final head ("candidate") or v1's ("parent") on the devices' held-out samples. */
function splitAccuracy(task: FederatedTask, which: 'candidate' | 'parent'): number | null {
  const split = task.evaluation?.splits.find((s) => s.split === 'test') ?? task.evaluation?.splits[0];
  const metrics = split?.[which];
  return metrics && metrics.rows > 0 ? round(metrics.accuracy) : null;
}

/** v2's lineage, from its version metadata and from the signed release manifest the devices verified. */
function lineageOf(version: ModelVersion, manifestLineage: unknown): Record<string, unknown> {
  const lineage = Object.fromEntries(Object.entries(version.metadata).filter(([k]) => k.startsWith('lineage.')));
  return { version: version.version, sha256: version.sha256, metadata: lineage, signed_manifest: manifestLineage ?? null };
}

async function signatureOf(
  client: OperatorClient,
  version: number,
): Promise<{ status: string; signedBy: string; audience: string[]; manifestLineage: unknown } | undefined> {
  const { statuses } = await client.service(ReleaseServiceService).listReleaseStatuses({ versions: [{ name: MODEL, version }] });
  const status = statuses[0];
  if (!status) return undefined;
  let manifestLineage: unknown;
  try {
    const release = await client.service(ReleaseServiceService).getRelease({ name: MODEL, version });
    manifestLineage = peekManifest(release.envelope).lineage;
  } catch {
    // Not signed (yet): the status says why.
  }
  return { status: status.status, signedBy: status.signedBy, audience: status.audience, manifestLineage };
}

/** v1 and v2 run with onnxruntime-node on fresh rows of each device's own class mix (never sent to any device). */
async function offlineAccuracy(
  artifactsDir: string,
  v1Sha256: string,
  v2Sha256: string,
  devices: readonly Device[],
): Promise<{ v1: number; v2: number; perDevice: Array<{ v1: number; v2: number }> }> {
  const store = new ArtifactStore(artifactsDir);
  const [v1, v2] = await Promise.all([v1Sha256, v2Sha256].map(async (sha) => ort.InferenceSession.create(new Uint8Array(await buffer(store.read(sha))))));
  try {
    const perDevice: Array<{ v1: number; v2: number }> = [];
    let total = 0;
    const correct = { v1: 0, v2: 0 };
    for (const d of devices) {
      const rows = generateVibrationData({ rows: OFFLINE_ROWS_PER_DEVICE, seed: d.seed + 0x20000, classWeights: d.classWeights });
      const feeds = { features: new ort.Tensor('float32', rows.x, [OFFLINE_ROWS_PER_DEVICE, VIBRATION_FEATURES.length]) };
      const right = async (session: ort.InferenceSession): Promise<number> => {
        const labels = (await session.run(feeds)).label!.data as BigInt64Array;
        let n = 0;
        for (let r = 0; r < OFFLINE_ROWS_PER_DEVICE; r++) if (Number(labels[r]) === rows.y[r]) n++;
        return n;
      };
      const [a, b] = [await right(v1!), await right(v2!)];
      correct.v1 += a;
      correct.v2 += b;
      total += OFFLINE_ROWS_PER_DEVICE;
      perDevice.push({ v1: round(a / OFFLINE_ROWS_PER_DEVICE), v2: round(b / OFFLINE_ROWS_PER_DEVICE) });
    }
    return { v1: round(correct.v1 / total), v2: round(correct.v2 / total), perDevice };
  } finally {
    await Promise.all([v1!.release(), v2!.release()]);
  }
}

function pooled(apps: readonly DeviceApplication[], version: number, phase: Phase): number | null {
  let answered = 0;
  let correct = 0;
  for (const app of apps) {
    const t = app.tallies.get(`v${version}/${phase}`);
    answered += t?.answered ?? 0;
    correct += t?.correct ?? 0;
  }
  return answered > 0 ? round(correct / answered) : null;
}

function pooledAnswers(apps: readonly DeviceApplication[], version: number, phase: Phase): number {
  return apps.reduce((n, app) => n + (app.tallies.get(`v${version}/${phase}`)?.answered ?? 0), 0);
}

/** One `driftline` CLI command, as an operator types it; its stdout, or an error naming its stderr. */
function driftline(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(process.execPath, ['bin/driftline.js', ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env } }, (error, stdout, stderr) => {
      if (error)
        reject(
          new DriftlineError(
            'INTERNAL',
            `driftline ${args
              .filter((a) => !a.startsWith('--json'))
              .slice(0, 3)
              .join(' ')} failed: ${stderr.trim().slice(-800)}`,
          ),
        );
      else resolve(stdout);
    }),
  );
}

function watchForCrash(child: DemoChild, problems: string[], stopper: AbortController): void {
  void child.exited.then((exit) => {
    if (child.stopRequested) return;
    problems.push(`${child.name} exited unexpectedly with ${describeExit(exit)}; see ${child.spec.logFile}`);
    stopper.abort();
  });
}

const round = (v: number): number => Number(v.toFixed(4));
const pct = (v: number): string => `${(100 * v).toFixed(1)}%`;
const secondsBetween = (fromMs: number | undefined, toMs: number | undefined): number | null =>
  fromMs === undefined || toMs === undefined || toMs === 0 ? null : Number(((toMs - fromMs) / 1000).toFixed(1));
