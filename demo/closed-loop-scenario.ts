import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buffer } from 'node:stream/consumers';
import { setTimeout as sleep } from 'node:timers/promises';
import ort from 'onnxruntime-node';
import { DriftlineError } from '../common/errors.js';
import { DriftServiceService } from '../common/proto/driftline/v1/drift.js';
import { DeviceServiceService } from '../common/proto/driftline/v1/fleet.js';
import { TrainingServiceService, type TrainingJob } from '../common/proto/driftline/v1/learning.js';
import { ModelServiceService, type ModelVersion } from '../common/proto/driftline/v1/models.js';
import { RolloutServiceService, type Rollout } from '../common/proto/driftline/v1/rollouts.js';
import { createOperatorClient, type OperatorClient } from '../client/operator-client.js';
import { COHORT_LABEL } from '../control-plane/fleet/labels.js';
import { ArtifactStore } from '../control-plane/registry/artifact-store.js';
import { CLEAN_COHORT, DRIFTED_COHORT, REFERENCE_CLASSES, writeReferenceCsv } from './drift-scenario.js';
import { writeDemoModel } from './model/demo-model.js';
import { vibrationRowSampler, type VibrationRow } from './model/vibration-data.js';
import { describeExit, ProcessGroup, REPO_ROOT, type DemoChild } from './processes.js';

/**
 * `npm run demo -- --scenario closed-loop`: the retraining loop with no operator command after
 * start. Real processes: `driftline serve` (trust root + automation key), four agents (two per
 * cohort) serving v1, a `driftline worker`. The demo's applications send vibration rows to each
 * agent's local API and post every row's true label back to `/feedback`; the agents capture every
 * request (inputs go up as samples). After a clean phase, cohort plant-2's sensors age (drifted
 * inputs): its drift alert fires the retraining policy the demo set at setup, the control plane
 * snapshots the fleet's labelled samples and queues a job, the worker trains v2 from v1 (the
 * TypeScript trainer), the evaluation gate passes it, the automation key signs it as a canary for
 * plant-2's devices and the policy's rollout section rolls it out to them. The final JSON line
 * holds the accuracy per cohort, version and phase, the loop's timings and v2's lineage.
 */

export interface ClosedLoopOptions {
  /** Upper bound on the seconds of traffic (clean phase, drift until the rollout succeeds, the phase after); default 300. */
  duration?: number | undefined;
  json?: boolean | undefined;
  dataDir?: string | undefined;
  keep?: boolean | undefined;
  /** Inferences per second per device; default 20. */
  rate?: number | undefined;
}

const MODEL = 'vibration';
const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const WORKER_REGISTERED = /^worker (\S+) registered as (\S+):/;
const DEVICES_PER_COHORT = 2;
const DEFAULT_DURATION_S = 300;
const DEFAULT_RATE = 20;
/** Clean traffic on every cohort before plant-2's sensors age (at most a quarter of --duration): the labelled rows that keep the clean cohorts good. */
const BEFORE_DRIFT_S = 60;
/** Traffic after the canary rollout succeeded (at most an eighth of --duration): v2's answers on the drifted cohort. */
const AFTER_ROLLOUT_S = 30;
const START_TIMEOUT_MS = 90_000;
const STOP_GRACE_MS = 20_000;
const FEEDBACK_BATCH = 200;
const REQUEST_TIMEOUT_MS = 10_000;
const PASSPHRASE_ENV = 'DRIFTLINE_AUTOMATION_KEY_PASSPHRASE';
/** The demo's own passphrase for the automation key it creates (a real one comes from a secret store). */
const DEMO_PASSPHRASE = 'driftline closed-loop demo passphrase';

/** The lead's offline fine-tuning settings: recovers the drifted cohort without costing the clean ones. */
const HYPERPARAMETERS = { epochs: 60, learning_rate: 0.002, optimizer: 'adam', patience: 10 };
/**
 * The gate's splits for a drift-triggered job: `test` is the drifted cohort's held-out rows (its
 * clean rows from before the drift too, so the margin is small), `regression` the clean cohort's
 * (the policy's dataset is the whole fleet's; v1 was pushed, it has no training snapshot to replay).
 */
const EVALUATION_GATES = ['accuracy-delta>=0', 'regression-accuracy-delta>=-0.02'];
/** Absolute gates: the canary's wave is the whole cohort, so no device of it is left on v1 to compare with. */
const CANARY_GATES = ['install-failure-rate<=0', 'error-rate<=0.01'];
const CANARY_BAKE = '10s';

type Phase = 'before_drift' | 'drifted' | 'after_rollout';

interface Tally {
  answered: number;
  correct: number;
}

/** Rows of the clean cohorts v1 answered, kept to run v2 on offline (the canary never reaches those devices). */
interface CleanRow {
  features: number[];
  label: number;
  v1Correct: boolean;
  atMs: number;
}

/** Answers per (cohort, version, phase), on labelled rows: every row's true label is known to the application. */
class Scoreboard {
  readonly tallies = new Map<string, Tally>();
  readonly cleanRows: CleanRow[] = [];
  phase: Phase = 'before_drift';

  record(cohort: string, version: number, phase: Phase, row: VibrationRow, predicted: number | undefined): void {
    const key = `${cohort}/v${version}/${phase}`;
    const tally = this.tallies.get(key) ?? { answered: 0, correct: 0 };
    tally.answered++;
    if (predicted === row.label) tally.correct++;
    this.tallies.set(key, tally);
    if (cohort === CLEAN_COHORT && version === 1)
      this.cleanRows.push({ features: row.features, label: row.label, v1Correct: predicted === row.label, atMs: Date.now() });
  }

  accuracy(cohort: string, version: number, phase: Phase): number | null {
    const t = this.tallies.get(`${cohort}/v${version}/${phase}`);
    return t && t.answered > 0 ? round(t.correct / t.answered) : null;
  }

  counts(): Record<string, Tally> {
    return Object.fromEntries([...this.tallies.entries()].sort(([a], [b]) => a.localeCompare(b)));
  }
}

/** One application on one device: a labelled row per request, its answer scored, its label posted to /feedback in batches. */
class LabelledTraffic {
  failed = 0;
  lastError: string | undefined;
  private readonly clean: () => VibrationRow;
  private readonly drifted: () => VibrationRow;
  private readonly stopper = new AbortController();
  private pending: Array<{ id: string; label: number }> = [];
  private loop: Promise<void> | undefined;
  private seq = 0;

  constructor(
    private readonly deviceId: string,
    private readonly cohort: string,
    private readonly localApiUrl: string,
    private readonly rate: number,
    seed: number,
    private readonly board: Scoreboard,
  ) {
    this.clean = vibrationRowSampler(seed);
    this.drifted = vibrationRowSampler(seed + 500, { drift: true });
  }

  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    await this.loop;
    await this.flush();
  }

  private async run(): Promise<void> {
    const intervalMs = 1000 / this.rate;
    const signal = this.stopper.signal;
    let due = performance.now();
    while (!signal.aborted) {
      const waitMs = due - performance.now();
      if (waitMs > 0) await sleep(waitMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) break;
      await this.once();
      if (this.pending.length >= FEEDBACK_BATCH) await this.flush();
      due = Math.max(due + intervalMs, performance.now());
    }
  }

  private async once(): Promise<void> {
    const phase = this.board.phase;
    const row = this.cohort === DRIFTED_COHORT && phase !== 'before_drift' ? this.drifted() : this.clean();
    const id = `${this.deviceId}-${++this.seq}`;
    try {
      const response = await fetch(`${this.localApiUrl}/v2/models/${MODEL}/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ id, inputs: [{ name: 'features', shape: [1, row.features.length], datatype: 'FP32', data: row.features }] }),
        signal: AbortSignal.any([this.stopper.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
      });
      const body = (await response.json()) as { model_version?: string; code?: string; outputs?: Array<{ name: string; data: unknown[] }> };
      if (response.status !== 200) {
        // A model still arriving is not a failure of the loop; anything else is counted.
        if (body.code !== 'MODEL_NOT_LOADED' && body.code !== 'MODEL_NOT_FOUND') this.fail(`HTTP ${response.status} ${body.code ?? ''}`);
        else await sleep(250);
        return;
      }
      const label = body.outputs?.find((o) => o.name === 'label')?.data[0];
      this.board.record(this.cohort, Number(body.model_version), phase, row, typeof label === 'number' ? label : undefined);
      this.pending.push({ id, label: row.label });
    } catch (err) {
      if (!this.stopper.signal.aborted) this.fail(err instanceof Error ? err.message : String(err));
    }
  }

  /** The true labels of the answers so far, as an application that learns the outcome posts them. */
  private async flush(): Promise<void> {
    const items = this.pending;
    this.pending = [];
    if (items.length === 0) return;
    try {
      const response = await fetch(`${this.localApiUrl}/v2/models/${MODEL}/feedback`, {
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

interface Timeline {
  alertAtMs?: number;
  job?: TrainingJob;
  candidate?: ModelVersion;
  rollout?: Rollout;
}

export async function runClosedLoopScenario(options: ClosedLoopOptions): Promise<number> {
  const say = (text: string): void => {
    if (!options.json) process.stdout.write(`demo: ${text}\n`);
  };
  const durationS = options.duration ?? DEFAULT_DURATION_S;
  const rate = options.rate ?? DEFAULT_RATE;
  const beforeDriftS = Math.min(BEFORE_DRIFT_S, durationS / 4);
  const afterRolloutS = Math.min(AFTER_ROLLOUT_S, durationS / 8);
  const createdDir = options.dataDir === undefined;
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'driftline-demo-closed-loop-'));
  mkdirSync(join(dataDir, 'logs'), { recursive: true });
  const group = new ProcessGroup();
  const board = new Scoreboard();
  const traffic: LabelledTraffic[] = [];
  const problems: string[] = [];
  let client: OperatorClient | undefined;
  let controlPlane: DemoChild | undefined;
  let ok = false;
  let stopRequested = false;
  const onSignal = (): void => {
    stopRequested = true;
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, onSignal);
  try {
    const keysDir = join(dataDir, 'keys');
    const env = { [PASSPHRASE_ENV]: DEMO_PASSPHRASE };
    say(`creating release keys and an automation key for ${MODEL} canaries (at most ${DEVICES_PER_COHORT} devices each) in ${keysDir}`);
    await driftline(['keys', 'init', '--dir', keysDir, '--root-keys', '1', '--threshold', '1', '--json'], env);
    const automation = JSON.parse(
      await driftline(
        ['keys', 'create-automation', '--dir', keysDir, '--scope-models', MODEL, '--scope-max-devices', String(DEVICES_PER_COHORT), '--json'],
        env,
      ),
    ) as { keyFile: string; keyId: string };

    // Short intervals so the loop turns within a demo; everything else is `driftline serve`'s default.
    const configFile = join(dataDir, 'control-plane.yaml');
    writeFileSync(
      configFile,
      [
        'drift:',
        '  window: 1m',
        '  longWindow: 0s',
        '  evaluateInterval: 2s',
        'rollout:',
        '  tickInterval: 1s',
        '  watchInterval: 500ms',
        'retraining:',
        '  tickInterval: 1s',
        'training:',
        '  sweepInterval: 2s',
        '  workerPollInterval: 1s',
        '',
      ].join('\n'),
    );
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
    const written = await writeDemoModel(modelFile);
    const referenceCsv = join(dataDir, 'models', `${MODEL}-reference.csv`);
    writeReferenceCsv(referenceCsv);
    controlPlane = await starting;
    const [, grpc, , , tokenFile] = controlPlane.ready;
    const operatorEnv = { DRIFTLINE_SERVER: grpc!, DRIFTLINE_TOKEN: readFileSync(tokenFile!, 'utf8').trim() };
    client = createOperatorClient({ address: grpc!, token: operatorEnv.DRIFTLINE_TOKEN, timeoutMs: 10_000, streamTimeoutMs: 10_000 });
    watchForCrash(controlPlane, problems, () => (stopRequested = true));

    // The worker: a token of the worker role, then `driftline worker` (the TypeScript trainer).
    const workerToken = (
      JSON.parse(await driftline(['--json', 'tokens', 'create', '--name', 'demo-worker', '--role', 'worker'], operatorEnv)) as { token: string }
    ).token;
    const workerTokenFile = join(dataDir, 'worker.token');
    writeFileSync(workerTokenFile, `${workerToken}\n`, { mode: 0o600 });
    const workerArgs = [
      'worker',
      '--server',
      grpc!,
      '--token-file',
      workerTokenFile,
      '--name',
      'demo-worker',
      '--work-dir',
      join(dataDir, 'worker'),
      '--trainers',
      'typescript',
    ];
    say(`starting a training worker: driftline ${workerArgs.join(' ')}`);
    const worker = group.start({
      name: 'worker',
      script: 'bin/driftline.js',
      args: workerArgs,
      logFile: join(dataDir, 'logs', 'worker.log'),
      ready: WORKER_REGISTERED,
      readyTimeoutMs: START_TIMEOUT_MS,
    });
    worker.catch(() => undefined);

    // Agents: two per cohort, every request captured (its inputs go up as a sample its label joins).
    const agentConfig = join(dataDir, 'agent.json');
    writeFileSync(agentConfig, `${JSON.stringify({ schedule: { driftWindow: '*/5 * * * * *' }, capture: { sampleRate: 1 } }, null, 2)}\n`);
    const devices = [CLEAN_COHORT, DRIFTED_COHORT].flatMap((cohort) =>
      Array.from({ length: DEVICES_PER_COHORT }, (_, i) => ({ id: `demo-${cohort}-${i + 1}`, cohort })),
    );
    const tokens: string[] = [];
    for (const d of devices) {
      tokens.push(
        (
          await client.service(DeviceServiceService).createEnrollmentToken({
            deviceId: d.id,
            labels: { site: d.cohort, [COHORT_LABEL]: d.cohort },
            ttlSeconds: 0,
          })
        ).token,
      );
    }
    say(`starting ${devices.length} agents (${DEVICES_PER_COHORT} in ${CLEAN_COHORT}, ${DEVICES_PER_COHORT} in ${DRIFTED_COHORT}), capturing every request`);
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
    agents.forEach((a) => watchForCrash(a, problems, () => (stopRequested = true)));
    const workerChild = await worker;
    watchForCrash(workerChild, problems, () => (stopRequested = true));

    // v1 signed by the release key, with its drift reference; deployed to the whole fleet.
    say(`pushing v1 (held-out accuracy ${(100 * written.accuracy).toFixed(1)}%), signed, with its drift reference`);
    await driftline(
      ['models', 'push', modelFile, '--name', MODEL, '--reference', referenceCsv, '--classes', REFERENCE_CLASSES, '--sign', '--keys-dir', keysDir],
      operatorEnv,
    );
    await client.service(ModelServiceService).deployModel({ name: MODEL, version: 0, deviceIds: [], selector: '' });

    // The retraining policy: what the loop does by itself from here.
    const policyArgs = ['training', 'policy', 'set', MODEL, '--on-drift', '--drift-cohort', DRIFTED_COHORT, '--cooldown', '1h', '--min-rows', '500'];
    policyArgs.push('--trainer', 'typescript', '--hyperparameters', JSON.stringify(HYPERPARAMETERS), '--max-duration', '10m');
    for (const gate of EVALUATION_GATES) policyArgs.push('--gate', gate);
    policyArgs.push('--since', '1h', '--whole-fleet', '--no-replay');
    policyArgs.push('--canary-waves', '100', '--canary-min-devices', '1', '--canary-bake', CANARY_BAKE);
    for (const gate of CANARY_GATES) policyArgs.push('--canary-gate', gate);
    say(`setting the retraining policy: driftline ${policyArgs.map((a) => (/[ {"<>=]/.test(a) ? `'${a}'` : a)).join(' ')}`);
    await driftline(policyArgs, operatorEnv);

    for (const [i, d] of devices.entries()) {
      const t = new LabelledTraffic(d.id, d.cohort, agents[i]!.ready[2]!, rate, 2000 + i, board);
      traffic.push(t);
      t.start();
    }
    const startedAt = performance.now();
    const deadline = startedAt + durationS * 1000;
    say(`sending ${rate} labelled inferences/s to each agent (labels posted to /feedback); ${beforeDriftS} s of clean data everywhere first`);

    const timeline: Timeline = {};
    let succeededAt: number | undefined;
    while (!stopRequested && performance.now() < deadline) {
      await sleep(1000);
      const now = performance.now();
      if (board.phase === 'before_drift' && now - startedAt >= beforeDriftS * 1000) {
        board.phase = 'drifted';
        say(`cohort ${DRIFTED_COHORT}'s sensors age: its applications now send drifted rows`);
      }
      if (board.phase === 'before_drift') continue;
      await observe(client, timeline, say);
      if (timeline.job && ['rejected', 'failed', 'cancelled'].includes(timeline.job.state)) {
        problems.push(`training job ${timeline.job.id} ended ${timeline.job.state}: ${timeline.job.reason}`);
        break;
      }
      if (timeline.rollout?.state === 'aborted') {
        problems.push(`the canary rollout ${timeline.rollout.id} aborted: ${timeline.rollout.reason}`);
        break;
      }
      if (timeline.rollout?.state === 'succeeded' && board.phase === 'drifted') {
        board.phase = 'after_rollout';
        succeededAt = now;
        say(`canary rollout succeeded: ${DRIFTED_COHORT} runs v${timeline.candidate?.version}; measuring it for ${afterRolloutS} s`);
      }
      if (succeededAt !== undefined && now - succeededAt >= afterRolloutS * 1000) break;
    }
    if (succeededAt === undefined && problems.length === 0)
      problems.push(stopRequested ? 'stopped before the loop closed' : `the canary rollout did not succeed within --duration ${durationS} s`);
    say('stopping traffic');
    await Promise.all(traffic.map((t) => t.stop()));
    const failed = traffic.reduce((n, t) => n + t.failed, 0);
    if (failed > 0) problems.push(`${failed} requests failed (last: ${traffic.find((t) => t.lastError)?.lastError})`);

    const v2 = timeline.candidate;
    const cleanSince = timeline.job?.createdAtMs ?? Number.POSITIVE_INFINITY;
    const offline = v2
      ? await offlineAccuracy(
          join(cpDir, 'artifacts'),
          v2.sha256,
          board.cleanRows.filter((r) => r.atMs >= cleanSince),
        )
      : undefined;
    const accuracy = {
      v1_before_drift: board.accuracy(DRIFTED_COHORT, 1, 'before_drift'),
      v1_after_drift: board.accuracy(DRIFTED_COHORT, 1, 'drifted'),
      v2_after_rollout: v2 ? board.accuracy(DRIFTED_COHORT, v2.version, 'after_rollout') : null,
      v2_clean_cohorts: offline?.v2 ?? null,
      v1_clean_cohorts: offline?.v1 ?? null,
    };
    const targets = {
      v2_after_rollout_vs_v1_before_drift:
        accuracy.v2_after_rollout !== null && accuracy.v1_before_drift !== null && accuracy.v2_after_rollout >= 0.95 * accuracy.v1_before_drift,
      v2_clean_vs_v1_clean:
        accuracy.v2_clean_cohorts !== null && accuracy.v1_clean_cohorts !== null && accuracy.v2_clean_cohorts >= accuracy.v1_clean_cohorts - 0.01,
    };
    if (!targets.v2_after_rollout_vs_v1_before_drift) problems.push('v2 on the drifted cohort is below 0.95 × v1 before the drift');
    if (!targets.v2_clean_vs_v1_clean) problems.push('v2 on the clean cohort is more than 0.01 below v1');
    const seconds = {
      alert_to_job: timeline.alertAtMs !== undefined && timeline.job ? secondsBetween(timeline.alertAtMs, timeline.job.createdAtMs) : null,
      job_to_candidate: timeline.job && v2 ? secondsBetween(timeline.job.createdAtMs, v2.createdAtMs) : null,
      candidate_to_rollout_succeeded: v2 && timeline.rollout?.state === 'succeeded' ? secondsBetween(v2.createdAtMs, timeline.rollout.updatedAtMs) : null,
    };
    ok = problems.length === 0;
    const report = {
      ok,
      scenario: 'closed-loop',
      accuracy,
      targets,
      measured: {
        drifted_cohort: "answers the agents of the drifted cohort gave, scored against each row's true label, per version and phase",
        clean_cohorts: `v1: the clean cohort's answers on the rows sent after the job started (not in its dataset); v2: the same rows run offline with onnxruntime-node (the canary never reaches the clean cohort)`,
        clean_rows: offline?.rows ?? 0,
        // The control plane's own view of the same question: the gate's regression split (the clean cohort's held-out rows of the dataset).
        evaluation_regression: v2 ? regressionSplit(v2) : null,
      },
      seconds,
      lineage: v2 ? lineageOf(v2, timeline.job) : null,
      rollout: timeline.rollout
        ? {
            id: timeline.rollout.id,
            state: timeline.rollout.state,
            target: timeline.rollout.target,
            version: timeline.rollout.version,
            reason: timeline.rollout.reason,
          }
        : null,
      counts: board.counts(),
      devices: { [CLEAN_COHORT]: DEVICES_PER_COHORT, [DRIFTED_COHORT]: DEVICES_PER_COHORT },
      ratePerDevice: rate,
      durationS: Number(((performance.now() - startedAt) / 1000).toFixed(1)),
      problems,
      ...(options.keep || !ok ? { dataDir } : {}),
    };
    process.stdout.write(options.json ? `${JSON.stringify(report)}\n` : `${JSON.stringify(report, null, 2)}\n`);
  } catch (err) {
    const error =
      err instanceof DriftlineError
        ? { code: err.code, message: err.message }
        : { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) };
    if (options.json) process.stdout.write(`${JSON.stringify({ ok: false, scenario: 'closed-loop', error, problems, dataDir })}\n`);
    else process.stderr.write(`demo: error [${error.code}]: ${error.message}\n`);
  } finally {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) process.off(signal, onSignal);
    await Promise.all(traffic.map((t) => t.stop()));
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

/** What the control plane recorded so far: the drifted cohort's first alert, the job, the version it made, the canary's rollout. */
async function observe(client: OperatorClient, t: Timeline, say: (text: string) => void): Promise<void> {
  if (t.alertAtMs === undefined) {
    const { events } = await client
      .service(DriftServiceService)
      .listDriftEvents({ model: MODEL, version: 0, cohort: DRIFTED_COHORT, sinceMs: 0, afterId: 0, limit: 0 });
    const alert = events.find((e) => e.status === 'alert');
    if (alert) {
      t.alertAtMs = alert.atMs;
      say(`drift alert for cohort ${DRIFTED_COHORT} (v${alert.version}, max PSI ${alert.maxPsi.toFixed(2)}, ${alert.rows} rows)`);
    }
  }
  const { jobs } = await client.service(TrainingServiceService).listTrainingJobs({ model: MODEL, state: '', pageSize: 10, pageToken: '' });
  const job = jobs.sort((a, b) => a.createdAtMs - b.createdAtMs)[0];
  if (job) {
    if (!t.job) say(`the retraining policy started job ${job.id} (dataset ${job.datasetId.slice(0, 12)}, trainer ${job.trainer})`);
    else if (t.job.state !== job.state) say(`job ${job.id}: ${job.state}${job.reason ? ` (${job.reason})` : ''}`);
    t.job = job;
  }
  if (job && job.resultVersion > 0 && !t.candidate) {
    const model = await client.service(ModelServiceService).getModel({ name: MODEL });
    t.candidate = model.versions.find((v) => v.version === job.resultVersion);
    if (t.candidate) say(`the gate passed: v${t.candidate.version} registered; the automation key signs its canary for ${DRIFTED_COHORT}`);
  }
  if (t.candidate) {
    const { rollouts } = await client.service(RolloutServiceService).listRollouts({ activeOnly: false, model: MODEL });
    const rollout = rollouts.find((r) => r.version === t.candidate!.version);
    if (rollout && (!t.rollout || t.rollout.state !== rollout.state || t.rollout.wave !== rollout.wave))
      say(`canary rollout ${rollout.id} to ${rollout.target}: ${rollout.state}${rollout.reason ? ` (${rollout.reason})` : ''}`);
    if (rollout) t.rollout = rollout;
  }
}

/** v2's lineage as the training sink recorded it on the version, and the gate's report on the job. */
function lineageOf(v2: ModelVersion, job: TrainingJob | undefined): Record<string, unknown> {
  const m = v2.metadata;
  const parse = (text: string | undefined): unknown => {
    try {
      return text ? JSON.parse(text) : null;
    } catch {
      return text;
    }
  };
  return {
    version: v2.version,
    sha256: v2.sha256,
    parent_version: Number(m['lineage.parent_version']),
    dataset: { id: m['lineage.dataset_id'], sha256: m['lineage.dataset_sha256'] ?? null },
    job_id: m['lineage.job_id'],
    trainer: m['lineage.trainer'],
    hyperparameters: parse(m['lineage.hyperparameters']),
    trigger: m['lineage.trigger'] ?? null,
    cohort: m['lineage.cohort'] ?? null,
    drift_event_id: m['lineage.drift_event_id'] ?? null,
    metrics: parse(m['lineage.metrics']),
    evaluation: {
      verdict: m['evaluation.verdict'] ?? job?.evaluation?.verdict,
      gates: parse(m['evaluation.gates']),
      splits: parse(m['evaluation.splits']),
    },
  };
}

/** The evaluation gate's regression split as the version's metadata records it: parent (v1) and candidate (v2) accuracy on the clean cohort's held-out rows. */
function regressionSplit(v2: ModelVersion): { v1: number; v2: number; rows: number } | null {
  try {
    const splits = JSON.parse(v2.metadata['evaluation.splits'] ?? '[]') as Array<{
      split: string;
      candidate?: { rows: number; accuracy: number };
      parent?: { accuracy: number };
    }>;
    const regression = splits.find((s) => s.split === 'regression');
    if (!regression?.candidate || !regression.parent) return null;
    return { v1: round(regression.parent.accuracy), v2: round(regression.candidate.accuracy), rows: regression.candidate.rows };
  } catch {
    return null;
  }
}

/** v1's recorded answers and v2 run with onnxruntime-node on the same clean-cohort rows. */
async function offlineAccuracy(artifactsDir: string, sha256: string, rows: readonly CleanRow[]): Promise<{ v1: number; v2: number; rows: number } | undefined> {
  if (rows.length === 0) return undefined;
  const bytes = await buffer(new ArtifactStore(artifactsDir).read(sha256));
  const session = await ort.InferenceSession.create(new Uint8Array(bytes));
  try {
    const x = new Float32Array(rows.length * 8);
    rows.forEach((r, i) => x.set(r.features, i * 8));
    const out = await session.run({ features: new ort.Tensor('float32', x, [rows.length, 8]) });
    const labels = out.label!.data as BigInt64Array;
    let v2 = 0;
    rows.forEach((r, i) => {
      if (Number(labels[i]) === r.label) v2++;
    });
    return { v1: round(rows.filter((r) => r.v1Correct).length / rows.length), v2: round(v2 / rows.length), rows: rows.length };
  } finally {
    await session.release();
  }
}

/** One `driftline` CLI command, as an operator types it; its stdout, or an error naming its stderr. */
function driftline(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(process.execPath, ['bin/driftline.js', ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env } }, (error, stdout, stderr) => {
      if (error) reject(new DriftlineError('INTERNAL', `driftline ${args.slice(0, 3).join(' ')} failed: ${stderr.trim().slice(-500)}`));
      else resolve(stdout);
    }),
  );
}

function watchForCrash(child: DemoChild, problems: string[], stop: () => void): void {
  void child.exited.then((exit) => {
    if (child.stopRequested) return;
    problems.push(`${child.name} exited unexpectedly with ${describeExit(exit)}; see ${child.spec.logFile}`);
    stop();
  });
}

const round = (v: number): number => Number(v.toFixed(4));
const secondsBetween = (fromMs: number, toMs: number): number => Number(((toMs - fromMs) / 1000).toFixed(1));
