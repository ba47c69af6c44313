import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { asDriftlineError, DriftlineError } from '../common/errors.js';
import { activeModelsOf } from '../common/device-protocol/model-set.js';
import type { ModelVersion } from '../common/proto/driftline/v1/models.js';
import { toCliError } from '../cli/connection.js';
import { OperatorCallError } from '../client/operator-client.js';
import { COHORT_LABEL } from '../control-plane/fleet/labels.js';
import {
  CLEAN_COHORT,
  describeDrift,
  DRIFTED_COHORT,
  driftProblems,
  REFERENCE_CLASSES,
  summarizeDrift,
  writeAgentConfig,
  writeReferenceCsv,
  type DemoDriftReport,
} from './drift-scenario.js';
import { DemoFleet } from './fleet.js';
import { writeDemoModel } from './model/demo-model.js';
import { MAINTENANCE_MODEL_NAME, writeMaintenanceModel } from './model/maintenance-model.js';
import { vibrationRowSampler } from './model/vibration-data.js';
import { describeExit, ProcessGroup, REPO_ROOT, type DemoChild } from './processes.js';
import { buildReport, renderSummary, type AgentAccount, type DemoModelInfo, type DeviceOutcome, type PipelineOutcome } from './report.js';
import { collectSnapshot, readAgentHealth, type AgentHealth, type DemoDevice } from './snapshot.js';
import { createStatusDisplay, type StatusDisplay } from './status-view.js';
import { DeviceTraffic } from './traffic.js';
import { ROLLOUT_SCENARIOS, runRolloutScenario, type RolloutScenario } from './rollout-scenario.js';
import { runClosedLoopScenario } from './closed-loop-scenario.js';

const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const PUSHED = /^pushed (\S+)@v(\d+) \(.*, sha256 ([0-9a-f]{64})\)$/;
const AGENT_STOPPED = /^driftline-agent: stopped device=(\S+) enqueued=(\d+) acknowledged=(\d+) buffered=(\d+) dropped=(\d+)$/;

const MODEL_NAME = 'vibration';
/** How long the pipeline scenario waits for both models to serve when neither --duration nor --until is given. */
const PIPELINE_DEFAULT_DURATION_S = 240;
const MAX_DEVICES = 50;
/** First start of a process pays for tsx compiling the sources; two cores shared by everyone. */
const START_TIMEOUT_MS = 60_000;
/** How long to wait for agents to empty their buffers after traffic stops, before stopping them anyway. */
const DRAIN_TIMEOUT_MS = 20_000;
/** Above the agent's own shutdown grace (10 s), so a drain in progress is not cut off. */
const AGENT_STOP_GRACE_MS = 20_000;
const CONTROL_PLANE_STOP_GRACE_MS = 10_000;
const EXIT_INTERRUPTED = 130;
const EXIT_USAGE = 2;
/** How often the fleet's status is read while traffic runs. */
const STATUS_EVERY_MS = 1000;

/**
 * What `--until` waits for, instead of a fixed duration (which a loaded machine may not fill):
 *   serving     every agent answered inferences and the control plane stored telemetry of each
 *   drift-alert (--scenario drift) serving, and the drifted cohort alerts while the clean one
 *               has a verdict below alert: what the scenario is there to show
 */
const UNTIL_CONDITIONS = ['serving', 'drift-alert'] as const;
type UntilCondition = (typeof UNTIL_CONDITIONS)[number];

interface DemoOptions {
  devices: number;
  duration?: number;
  until?: UntilCondition;
  bake?: number;
  rate: number;
  dataDir?: string;
  keep?: boolean;
  json?: boolean;
  scenario: 'fleet' | 'drift' | 'pipeline' | 'closed-loop' | RolloutScenario;
}

/** What the demo reports of a pushed model, whether it went up over gRPC or through the CLI. */
type PushedModel = Pick<ModelVersion, 'name' | 'version' | 'sizeBytes' | 'sha256'>;

interface RunningAgent extends DemoDevice {
  process: DemoChild;
  lastHealth: AgentAccount | undefined;
}

const wholeNumber =
  (min: number, max: number) =>
  (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}`);
    return n;
  };

const positiveNumber = (value: string): number => {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('expected a number > 0');
  return n;
};

/** The CLI spelled as a newcomer would type it, for the commands the demo shows. */
const CLI = 'driftline';

/** Devices alternate between two sites; with --scenario drift the site is also the device's drift cohort. */
const siteOf = (i: number): string => `plant-${(i % 2) + 1}`;

/**
 * The whole loop on one machine, with real processes: a control plane, N agents that
 * enroll, receive a deployed model and serve it, applications sending inferences to them,
 * and telemetry flowing back until the control plane has stored every record once.
 * With --scenario drift, the model goes up with a drift reference (through the real
 * `driftline models push --reference`), one cohort's applications read aged sensors, and
 * the fleet's drift per cohort comes from the control plane's DriftService.
 */
class Demo {
  private readonly display: StatusDisplay;
  private readonly group = new ProcessGroup();
  private readonly stopRequested = new AbortController();
  private readonly agents: RunningAgent[] = [];
  private readonly problems: string[] = [];
  private controlPlane: DemoChild | undefined;
  private fleet: DemoFleet | undefined;
  private dataDir = '';
  private grpcAddress = '';
  private operatorToken = '';
  /** Seconds of traffic before the live view first saw the drifted cohort alert. */
  private firstAlertS: number | null = null;
  private createdDataDir = false;
  private signals = 0;
  private interrupted = false;

  constructor(private readonly options: DemoOptions) {
    this.display = createStatusDisplay({ live: !options.json && Boolean(process.stdout.isTTY) });
  }

  private get driftScenario(): boolean {
    return this.options.scenario === 'drift';
  }

  /** Each device serves two models in a chain: the fault classifier, then the maintenance-urgency model on its probabilities. */
  private get pipelineScenario(): boolean {
    return this.options.scenario === 'pipeline';
  }

  /** The models every device is given, in the order the application calls them. */
  private get modelNames(): string[] {
    return this.pipelineScenario ? [MODEL_NAME, MAINTENANCE_MODEL_NAME] : [MODEL_NAME];
  }

  /** Runs the demo and resolves with the exit code; every child process is gone when it resolves. */
  async run(): Promise<number> {
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, this.onSignal);
    let exitCode = 1;
    let keep = Boolean(this.options.keep);
    try {
      if (this.options.until === 'drift-alert' && !this.driftScenario) {
        throw new DriftlineError('CONFIG_INVALID', '--until drift-alert needs --scenario drift');
      }
      if (this.driftScenario && this.options.devices < 2) {
        throw new DriftlineError(
          'CONFIG_INVALID',
          `--scenario drift needs --devices 2 or more (a clean cohort ${CLEAN_COHORT} and a drifted one ${DRIFTED_COHORT})`,
        );
      }
      this.prepareDataDir();
      const { report, exitCode: code } = await this.runLoop();
      exitCode = code;
      keep ||= !report.ok;
      if (keep) report.dataDir = this.dataDir;
      process.stdout.write(this.options.json ? `${JSON.stringify(report)}\n` : renderSummary(report));
    } catch (err) {
      exitCode = this.interrupted ? EXIT_INTERRUPTED : err instanceof DriftlineError && err.kind === 'invalid' ? EXIT_USAGE : 1;
      // What failed is in the logs; a run the person stopped on purpose leaves nothing worth keeping.
      keep ||= !this.interrupted;
      const error = describeError(err, this.grpcAddress);
      this.note(exitCode === EXIT_INTERRUPTED ? 'interrupted before the loop was running' : `error [${error.code}]: ${error.message}`);
      if (this.options.json) process.stdout.write(`${JSON.stringify({ ok: false, error, dataDir: this.dataDir || undefined })}\n`);
    } finally {
      await this.stopEverything();
      for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(signal, this.onSignal);
      if (this.dataDir && !keep && this.createdDataDir) rmSync(this.dataDir, { recursive: true, force: true });
      else if (this.dataDir) this.note(`data and logs kept in ${this.dataDir} (logs/ has each process's log)`);
    }
    return exitCode;
  }

  private readonly onSignal = (signal: NodeJS.Signals): void => {
    if (++this.signals > 1) {
      // The person asked twice: stop waiting for drains and go now.
      this.group.forceKillAll();
      process.exit(EXIT_INTERRUPTED);
    }
    this.note(`${signal}: stopping (again to stop at once)`);
    this.interrupted = true;
    this.stopRequested.abort();
  };

  private note(text: string): void {
    this.display.note(`demo: ${text}`);
  }

  private showCommand(text: string): void {
    this.display.note(`  $ ${text}`);
  }

  private prepareDataDir(): void {
    if (this.options.dataDir) {
      const dir = resolve(this.options.dataDir);
      // A previous demo's devices are enrolled there already; their tokens would be refused.
      if (existsSync(dir) && readdirSync(dir).length > 0) {
        throw new DriftlineError('CONFIG_INVALID', `--data-dir ${dir} is not empty; give an empty or new folder`);
      }
      mkdirSync(dir, { recursive: true });
      this.dataDir = dir;
    } else {
      this.dataDir = mkdtempSync(join(tmpdir(), 'driftline-demo-'));
      this.createdDataDir = true;
    }
    mkdirSync(join(this.dataDir, 'logs'));
  }

  private async runLoop(): Promise<{ report: ReturnType<typeof buildReport>; exitCode: number }> {
    const written = await this.startControlPlane();
    const fleet = this.fleet!;
    await this.interruptible(this.enrollAgents());
    const { version, deployedAt } = await this.interruptible(this.pushAndDeploy(written.path));
    if (this.pipelineScenario) await this.interruptible(this.pushAndDeploySecond());
    const model: DemoModelInfo = { name: MODEL_NAME, version, sha256: written.sha256, accuracy: written.accuracy };

    const trafficStartedAt = performance.now();
    for (const agent of this.agents) agent.traffic.start();
    this.note(
      `sending ${this.options.rate} inferences/s to each agent's local API` +
        (this.options.until === undefined ? '' : ` until ${describeUntil(this.options.until)}`) +
        (this.options.duration === undefined
          ? this.options.until === undefined
            ? ' until Ctrl-C'
            : ''
          : ` ${this.options.until === undefined ? 'for' : 'or at most'} ${this.options.duration} s`) +
        (this.pipelineScenario ? `; each request goes through ${this.modelNames.join(' then ')}, two models on the same agent` : '') +
        (this.driftScenario ? `; the applications of cohort ${DRIFTED_COHORT} read aged sensors (drifted inputs), ${CLEAN_COHORT}'s read healthy ones` : ''),
    );
    const row = vibrationRowSampler(1)().features.map((v) => Number(v.toFixed(2)));
    const body = { inputs: [{ name: 'features', shape: [1, row.length], datatype: 'FP32', data: row }] };
    this.showCommand(`curl -s ${this.agents[0]!.localApiUrl}/v2/models/${MODEL_NAME}/infer -H 'content-type: application/json' -d '${JSON.stringify(body)}'`);
    await this.watch(fleet, trafficStartedAt, deployedAt);
    const durationS = (performance.now() - trafficStartedAt) / 1000;

    this.display.close();
    this.note('stopping traffic');
    await Promise.all(this.agents.map((a) => a.traffic.stop()));
    await this.waitForDrain();
    const accounts = await this.stopAgents();
    if (!this.controlPlane!.running) {
      throw new DriftlineError('INTERNAL', `the control plane is gone, so what it stored cannot be read; see ${this.controlPlane!.spec.logFile}`);
    }
    this.showCommand(`${CLI} telemetry summary`);
    const summary = await fleet.summary();
    const pipeline = this.pipelineScenario ? await this.pipelineOutcome(fleet) : undefined;
    let drift: DemoDriftReport | undefined;
    if (this.driftScenario) {
      // After the agents stopped: each sent its last, partial drift window on the way out.
      this.showCommand(`${CLI} drift show --model ${MODEL_NAME}`);
      drift = summarizeDrift(await fleet.driftStatus(MODEL_NAME), this.firstAlertS);
      this.problems.push(...driftProblems(drift));
    }
    await this.stopControlPlane();

    const devices: DeviceOutcome[] = this.agents.map((a, i) => ({ id: a.id, traffic: a.traffic, account: accounts[i], lastHealth: a.lastHealth }));
    const report = buildReport({ devices, summary, model, durationS, ratePerDevice: this.options.rate, problems: this.problems, drift, pipeline });
    return { report, exitCode: report.ok ? 0 : 1 };
  }

  /** Starts `driftline serve` and, while it boots, trains the demo model; resolves with the model on disk. */
  private async startControlPlane(): Promise<{ path: string; sha256: string; accuracy: number }> {
    const dir = join(this.dataDir, 'control-plane');
    const args = ['serve', '--data-dir', dir, '--grpc-port', '0', '--http-port', '0', '--mqtt-port', '0'];
    this.note(`starting the control plane (gRPC API, MQTT broker, artifact server) in ${this.dataDir}`);
    this.showCommand(`${CLI} ${args.join(' ')}`);
    const starting = this.group.start({
      name: 'control plane',
      script: 'bin/driftline.js',
      args,
      logFile: join(this.dataDir, 'logs', 'control-plane.log'),
      ready: LISTENING,
      readyTimeoutMs: START_TIMEOUT_MS,
    });
    // Not awaited yet: if the model fails first, the start is still awaited below so its failure is not left unhandled.
    starting.catch(() => undefined);

    const path = join(this.dataDir, 'models', `${MODEL_NAME}.onnx`);
    this.note('training the demo vibration-fault classifier (8 features, 4 classes)');
    const written = await writeDemoModel(path);
    this.note(`wrote ${path} (held-out accuracy ${(100 * written.accuracy).toFixed(1)}%)`);

    this.controlPlane = await this.interruptible(starting);
    const [, grpc, mqtt, http, tokenFile] = this.controlPlane.ready;
    this.grpcAddress = grpc!;
    this.operatorToken = readFileSync(tokenFile!, 'utf8').trim();
    this.note(`control plane listening: gRPC ${grpc}, MQTT ${mqtt}, artifacts ${http}`);
    this.note(`web console: ${http}/ui (sign in with the demo's admin token, the contents of ${resolve(tokenFile!)})`);
    // Pasteable as it stands: absolute paths, and an alias for the CLI the demo runs.
    this.note(
      `to follow along from another terminal: export DRIFTLINE_SERVER=${grpc} DRIFTLINE_TOKEN=$(cat ${resolve(tokenFile!)}); alias ${CLI}='node ${join(REPO_ROOT, 'bin/driftline.js')}'; ${CLI} devices list`,
    );
    this.fleet = new DemoFleet(grpc!, this.operatorToken);
    this.watchForCrash(this.controlPlane);
    return written;
  }

  /** One enrollment token per device, then every agent started at once (separate processes, separate data folders). */
  private async enrollAgents(): Promise<void> {
    const fleet = this.fleet!;
    const grpc = this.controlPlane!.ready[1]!;
    const ids = Array.from({ length: this.options.devices }, (_, i) => `demo-edge-${i + 1}`);
    const tokens: string[] = [];
    for (const [i, id] of ids.entries()) {
      if (this.stopRequested.signal.aborted) throw new DriftlineError('SHUTTING_DOWN', 'the demo was stopped');
      // Drift status groups devices by the cohort label; the drift scenario sets it to the device's site.
      const labels = { site: siteOf(i), line: `line-${Math.floor(i / 2) + 1}`, ...(this.driftScenario ? { [COHORT_LABEL]: siteOf(i) } : {}) };
      this.showCommand(
        `${CLI} devices token ${id} ${Object.entries(labels)
          .map(([k, v]) => `--label ${k}=${v}`)
          .join(' ')}`,
      );
      tokens.push(await fleet.createEnrollmentToken(id, labels));
    }
    const config = join(this.dataDir, 'agent.json');
    if (this.driftScenario) {
      writeAgentConfig(config);
      this.note(`the agents get ${config}: a drift window every 5 s (default 15 s), so drift shows within seconds`);
    }
    this.note(`starting ${ids.length} agents; each enrolls with its token, then connects to the broker`);
    const started = await Promise.allSettled(
      ids.map((id, i) => {
        const args = [
          'run',
          '--device-id',
          id,
          '--enroll-token',
          tokens[i]!,
          '--server',
          grpc,
          '--data-dir',
          join(this.dataDir, 'agents', id),
          '--local-port',
          '0',
          '--log-level',
          'warn',
        ];
        if (this.driftScenario) args.push('--config', config);
        if (i === 0) this.showCommand(`driftline-agent ${args.map((a) => (a === tokens[i] ? '<token>' : a)).join(' ')}`);
        return this.group.start({
          name: id,
          script: 'bin/driftline-agent.js',
          args,
          logFile: join(this.dataDir, 'logs', `${id}.log`),
          ready: AGENT_READY,
          readyTimeoutMs: START_TIMEOUT_MS,
        });
      }),
    );
    const failure = started.find((s) => s.status === 'rejected');
    if (failure) throw failure.reason;
    for (const [i, outcome] of started.entries()) {
      const child = (outcome as PromiseFulfilledResult<DemoChild>).value;
      const localApiUrl = child.ready[2]!;
      this.agents.push({
        id: ids[i]!,
        localApiUrl,
        process: child,
        lastHealth: undefined,
        traffic: new DeviceTraffic(localApiUrl, {
          model: MODEL_NAME,
          ratePerSecond: this.options.rate,
          seed: 1000 + i,
          drift: this.driftScenario && siteOf(i) === DRIFTED_COHORT,
          ...(this.pipelineScenario ? { then: MAINTENANCE_MODEL_NAME } : {}),
        }),
      });
      this.watchForCrash(child);
    }
    this.note(`agents ready: ${this.agents.map((a) => `${a.id} ${a.localApiUrl}`).join(', ')}`);
  }

  /** Uploads the model as the next version and sets it as every device's desired model; resolves with when it was deployed. */
  private async pushAndDeploy(path: string): Promise<{ version: number; deployedAt: number }> {
    const fleet = this.fleet!;
    let pushed: PushedModel;
    if (this.driftScenario) pushed = await this.pushWithReference(path);
    else {
      this.showCommand(`${CLI} models push ${path} --name ${MODEL_NAME}`);
      pushed = await fleet.uploadModel(MODEL_NAME, readFileSync(path), 'demo vibration-fault classifier');
    }
    this.note(`pushed ${pushed.name}@v${pushed.version} (${pushed.sizeBytes} bytes, sha256 ${pushed.sha256.slice(0, 12)})`);
    this.showCommand(`${CLI} models deploy ${MODEL_NAME}`);
    const deployed = await fleet.deployLatest(MODEL_NAME);
    this.note(`deployed ${MODEL_NAME}@v${deployed.version} to ${deployed.devices} devices; each downloads, verifies and loads it`);
    return { version: deployed.version, deployedAt: performance.now() };
  }

  /**
   * The model's own training rows become its drift reference, pushed the way an operator
   * does it: the real `driftline models push --reference <csv> --classes ...` process.
   */
  private async pushWithReference(path: string): Promise<PushedModel> {
    const csv = join(this.dataDir, 'models', `${MODEL_NAME}-reference.csv`);
    writeReferenceCsv(csv);
    this.note(`wrote ${csv}: the rows the model was trained on, as the reference its inputs are compared with`);
    const args = [
      'models',
      'push',
      path,
      '--name',
      MODEL_NAME,
      '--description',
      'demo vibration-fault classifier',
      '--reference',
      csv,
      '--classes',
      REFERENCE_CLASSES,
    ];
    this.showCommand(`${CLI} ${args.map((a) => (a.includes(' ') ? `'${a}'` : a)).join(' ')}`);
    const cli = await this.interruptible(
      this.group.start({
        name: `${CLI} models push`,
        script: 'bin/driftline.js',
        args,
        logFile: join(this.dataDir, 'logs', 'models-push.log'),
        ready: PUSHED,
        readyTimeoutMs: START_TIMEOUT_MS,
        env: { DRIFTLINE_SERVER: this.grpcAddress, DRIFTLINE_TOKEN: this.operatorToken },
      }),
    );
    const exit = await cli.exited;
    if (exit.code !== 0) throw new DriftlineError('INTERNAL', `${CLI} models push exited with ${describeExit(exit)}; see ${cli.spec.logFile}`);
    const [, name, version, sha256] = cli.ready;
    return { name: name!, version: Number(version), sizeBytes: statSync(path).size, sha256: sha256! };
  }

  /** The pipeline's second model goes up and is deployed beside the first: each device's set then holds both. */
  private async pushAndDeploySecond(): Promise<void> {
    const fleet = this.fleet!;
    const path = join(this.dataDir, 'models', `${MAINTENANCE_MODEL_NAME}.onnx`);
    await writeMaintenanceModel(path);
    this.note(`wrote ${path}: the maintenance-urgency model, fed with the fault classifier's probabilities`);
    this.showCommand(`${CLI} models push ${path} --name ${MAINTENANCE_MODEL_NAME}`);
    const pushed = await fleet.uploadModel(MAINTENANCE_MODEL_NAME, readFileSync(path), 'demo maintenance urgency from fault probabilities');
    this.note(`pushed ${pushed.name}@v${pushed.version} (${pushed.sizeBytes} bytes, sha256 ${pushed.sha256.slice(0, 12)})`);
    this.showCommand(`${CLI} models deploy ${MAINTENANCE_MODEL_NAME}`);
    const deployed = await fleet.deployLatest(MAINTENANCE_MODEL_NAME);
    this.note(`deployed ${MAINTENANCE_MODEL_NAME}@v${deployed.version} to ${deployed.devices} devices beside ${MODEL_NAME}: each device's set now holds both`);
  }

  /**
   * How many models each device served, twice over: the models its application got answers
   * from, and the models its last reported state lists as serving; and each model's
   * inferences as the applications counted them and as the control plane stored them.
   */
  private async pipelineOutcome(fleet: DemoFleet): Promise<PipelineOutcome> {
    this.showCommand(`${CLI} devices list`);
    const reported = new Map(
      (await fleet.listDevices()).map((d) => [
        d.id,
        activeModelsOf(d.reported)
          .filter((m) => m.state === 'serving')
          .map((m) => m.name),
      ]),
    );
    const perModel: PipelineOutcome['perModel'] = {};
    for (const name of this.modelNames) {
      const answered = this.agents.reduce((total, a) => total + (a.traffic.okByModel[name] ?? 0), 0);
      perModel[name] = { inferences: answered, stored: await fleet.storedInferences(name) };
    }
    return {
      perDevice: Object.fromEntries(
        this.agents.map((a) => [a.id, { answered: this.modelNames.filter((n) => (a.traffic.okByModel[n] ?? 0) > 0), reported: reported.get(a.id) ?? [] }]),
      ),
      perModel,
    };
  }

  /** Shows the fleet while traffic runs, until the --until condition holds, the duration is up, Ctrl-C, or a process dies. */
  private async watch(fleet: DemoFleet, startedAt: number, deployedAt: number): Promise<void> {
    const endsAt = this.options.duration === undefined ? undefined : startedAt + this.options.duration * 1000;
    const serving = new Set<string>();
    const signal = this.stopRequested.signal;
    while (!signal.aborted) {
      const now = performance.now();
      if (endsAt !== undefined && now >= endsAt) {
        if (this.options.until !== undefined)
          this.problems.push(`--until ${this.options.until} did not hold within --duration ${this.options.duration} s: ${describeUntil(this.options.until)}`);
        break;
      }
      for (const agent of this.agents) {
        if (!serving.has(agent.id) && agent.traffic.ok > 0) {
          serving.add(agent.id);
          if (serving.size === this.agents.length)
            this.note(`all ${serving.size} agents serving ${MODEL_NAME} (model arrived within ${((now - deployedAt) / 1000).toFixed(1)} s of the deploy)`);
        }
      }
      const snapshot = await collectSnapshot(fleet, this.agents, (performance.now() - startedAt) / 1000, this.driftScenario ? MODEL_NAME : undefined);
      for (const [i, row] of snapshot.rows.entries()) if (row.health) this.agents[i]!.lastHealth = accountOf(row.health);
      if (this.firstAlertS === null && snapshot.drift?.cohorts[DRIFTED_COHORT]?.status === 'alert') {
        this.firstAlertS = Number(snapshot.elapsedS.toFixed(1));
        this.note(`drift alert for cohort ${DRIFTED_COHORT} after ${this.firstAlertS} s of traffic: ${describeDrift(snapshot.drift)}`);
        this.showCommand(`${CLI} drift show --model ${MODEL_NAME}`);
      }
      if (this.options.until !== undefined && untilHolds(this.options.until, snapshot)) {
        this.note(`${describeUntil(this.options.until)} after ${snapshot.elapsedS.toFixed(1)} s of traffic: stopping`);
        break;
      }
      const footer =
        endsAt === undefined ? 'Ctrl-C to stop' : `stopping in ${Math.max(0, Math.ceil((endsAt - performance.now()) / 1000))} s (Ctrl-C to stop now)`;
      this.display.update(snapshot, footer);
      const wait = endsAt === undefined ? STATUS_EVERY_MS : Math.min(STATUS_EVERY_MS, Math.max(0, endsAt - performance.now()));
      await sleep(wait, undefined, { signal }).catch(() => undefined);
    }
  }

  /** After traffic stops, agents still hold the last records; wait (bounded) until each has had them acknowledged. */
  private async waitForDrain(): Promise<void> {
    this.note('waiting for every agent to deliver its buffered telemetry');
    // A crashed agent has nothing left to drain; waiting for it would only delay the others' accounting.
    const agents = this.agents.filter((a) => a.process.running);
    const deadline = performance.now() + DRAIN_TIMEOUT_MS;
    // Without the control plane nothing gets acknowledged; waiting would only delay the report of why.
    while (performance.now() < deadline && this.controlPlane?.running) {
      const health = await Promise.all(agents.map((a) => readAgentHealth(a.localApiUrl)));
      for (const [i, h] of health.entries()) if (h) agents[i]!.lastHealth = accountOf(h);
      if (health.every((h) => h && h.bufferDepth === 0 && h.recordsAcknowledged >= h.recordsEnqueued)) return;
      await sleep(200);
    }
    // Not fatal by itself: the agents drain again on SIGTERM, and the final accounting says what is missing.
    if (this.controlPlane?.running) this.note(`buffers not empty after ${DRAIN_TIMEOUT_MS / 1000} s; stopping the agents anyway`);
  }

  /** SIGTERM to every agent; each drains, then prints its final record accounting. Undefined for an agent that did not. */
  private stopAgents(): Promise<Array<AgentAccount | undefined>> {
    this.note('stopping the agents (SIGTERM: each drains, then reports what it enqueued and what was acknowledged)');
    return Promise.all(
      this.agents.map(async (agent) => {
        // One that already died was reported when it did.
        if (!agent.process.running) return undefined;
        const stopped = agent.process.line(AGENT_STOPPED, AGENT_STOP_GRACE_MS + 1000, 'its stopped line').catch(() => undefined);
        const exit = await agent.process.stop(AGENT_STOP_GRACE_MS);
        const match = await stopped;
        if (!match || exit.code !== 0) {
          this.problems.push(`${agent.id} exited with ${describeExit(exit)}; see ${agent.process.spec.logFile}`);
          return undefined;
        }
        const [, , enqueued, acknowledged, buffered, dropped] = match.map(Number);
        return { enqueued: enqueued!, acknowledged: acknowledged!, buffered: buffered!, dropped: dropped! };
      }),
    );
  }

  private async stopControlPlane(): Promise<void> {
    if (!this.controlPlane?.running) return;
    this.note('stopping the control plane');
    const exit = await this.controlPlane.stop(CONTROL_PLANE_STOP_GRACE_MS);
    if (exit.code !== 0) this.problems.push(`the control plane exited with ${describeExit(exit)}; see ${this.controlPlane.spec.logFile}`);
  }

  /** The exit path for everything: agents first (they need the control plane to drain), then the control plane. */
  private async stopEverything(): Promise<void> {
    await Promise.all(this.agents.map((a) => a.traffic.stop()));
    this.display.close();
    this.fleet?.close();
    this.group.close();
    const agents = this.group.running.filter((c) => c !== this.controlPlane);
    await Promise.all(agents.map((c) => c.stop(AGENT_STOP_GRACE_MS)));
    await Promise.all(this.group.running.map((c) => c.stop(CONTROL_PLANE_STOP_GRACE_MS)));
  }

  /** A process that dies while the demo runs ends the run: its log says why. */
  private watchForCrash(child: DemoChild): void {
    void child.exited.then((exit) => {
      if (child.stopRequested) return;
      this.problems.push(`${child.name} exited unexpectedly with ${describeExit(exit)}; see ${child.spec.logFile}`);
      this.note(`${child.name} exited unexpectedly (${describeExit(exit)}); see ${child.spec.logFile}`);
      this.stopRequested.abort();
    });
  }

  /** Lets Ctrl-C cut a setup step short instead of waiting for it. */
  private interruptible<T>(promise: Promise<T>): Promise<T> {
    const signal = this.stopRequested.signal;
    if (signal.aborted) return Promise.reject(new DriftlineError('SHUTTING_DOWN', 'the demo was stopped'));
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => reject(new DriftlineError('SHUTTING_DOWN', 'the demo was stopped'));
      signal.addEventListener('abort', onAbort, { once: true });
      promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }
}

function describeUntil(condition: UntilCondition): string {
  return condition === 'serving'
    ? 'every agent answered inferences and the control plane stored telemetry of each'
    : `every agent served, cohort ${DRIFTED_COHORT} alerted and cohort ${CLEAN_COHORT} got a verdict below alert`;
}

/** Whether the fleet, as this snapshot shows it, has reached the condition. */
function untilHolds(condition: UntilCondition, snapshot: Awaited<ReturnType<typeof collectSnapshot>>): boolean {
  const serving = snapshot.rows.every((row) => row.sent > 0 && (row.stored ?? 0) > 0);
  if (condition === 'serving') return serving;
  return serving && driftProblems(snapshot.drift).length === 0;
}

function accountOf(health: AgentHealth): AgentAccount {
  return { enqueued: health.recordsEnqueued, acknowledged: health.recordsAcknowledged, buffered: health.bufferDepth, dropped: health.recordsDropped };
}

/** gRPC failures carry the control plane's code in a trailer; the CLI's mapping reads it. */
function describeError(err: unknown, server: string): { code: string; message: string } {
  if (err instanceof DriftlineError && !(err instanceof OperatorCallError)) return { code: err.code, message: err.message };
  const cli = toCliError(err, server);
  if (cli.code !== 'INTERNAL') return { code: cli.code, message: cli.message };
  const error = asDriftlineError(err);
  return { code: error.code, message: error.message };
}

const program = new Command('demo')
  .description('Run the whole Driftline loop on this machine: a control plane, agents, a deployed model, inference traffic and telemetry')
  .option('--devices <n>', 'agent processes to start', wholeNumber(1, MAX_DEVICES), 3)
  .option(
    '--duration <seconds>',
    'seconds of traffic before stopping (default: until Ctrl-C); with --until, the most it waits (not reaching the condition by then fails the run)',
    positiveNumber,
  )
  .option(
    '--until <condition>',
    `stop traffic once the condition holds: serving (every agent answered inferences and its telemetry is stored) or, with --scenario drift, drift-alert (cohort ${DRIFTED_COHORT} alerts, ${CLEAN_COHORT} has a verdict below alert)`,
    (value: string) => {
      if (!(UNTIL_CONDITIONS as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected ${UNTIL_CONDITIONS.join(' or ')}`);
      return value;
    },
  )
  .option('--bake <seconds>', 'with --scenario rollout|bad-model: bake time of each wave (default: a fifth of --duration)', positiveNumber)
  .option('--rate <n>', 'inferences per second sent to each device', positiveNumber, 20)
  .option('--data-dir <dir>', 'an empty folder for the control plane, the agents and their logs (default: a fresh temp folder)')
  .option('--keep', 'keep the temp data folder at the end (it is always kept when something failed)')
  .option('--json', 'print one JSON line with the results on stdout, and nothing else there')
  .option(
    '--scenario <name>',
    `fleet: agents serving a deployed model; drift: the same, the model pushed with a drift reference, and devices in cohort ${DRIFTED_COHORT} fed drifted inputs (their drift alerts, ${CLEAN_COHORT}'s does not); ` +
      `pipeline: every agent serves two models in a chain (${MODEL_NAME}, then ${MAINTENANCE_MODEL_NAME} on its class probabilities), each deployed on its own (without --duration and --until: --until serving --duration ${PIPELINE_DEFAULT_DURATION_S}); ` +
      'rollout: a better model through every wave of a staged rollout over 100 simulated devices; bad-model: a worse one, stopped at the canary and rolled back (with these two, the demo stops when the rollout ends; --duration bounds it, default 40 s); ' +
      `closed-loop: ${DRIFTED_COHORT} drifts, its alert retrains v2 on a worker, the gate passes, the automation key signs its canary and it rolls out to ${DRIFTED_COHORT} with no operator command (--duration bounds the traffic, default 300 s; --rate per device, default 20)`,
    (value: string) => {
      if (
        value !== 'fleet' &&
        value !== 'drift' &&
        value !== 'pipeline' &&
        value !== 'closed-loop' &&
        !(ROLLOUT_SCENARIOS as readonly string[]).includes(value)
      ) {
        throw new InvalidArgumentError(`expected fleet, drift, pipeline, closed-loop, ${ROLLOUT_SCENARIOS.join(' or ')}`);
      }
      return value;
    },
    'fleet',
  )
  .addHelpText(
    'after',
    '\nExit codes: 0 every inference answered and no telemetry lost (with drift: and only the drifted cohort alerts), 1 otherwise, 2 usage, 130 interrupted before the loop ran.',
  )
  .exitOverride();

try {
  program.parse(process.argv);
} catch (err) {
  process.exit(err instanceof CommanderError && err.exitCode === 0 ? 0 : EXIT_USAGE);
}
const demoOptions = program.opts<DemoOptions>();
// The pipeline has an end of its own, as the rollout scenarios do: both models answered and
// their telemetry stored on every agent, within PIPELINE_DEFAULT_DURATION_S unless told otherwise.
if (demoOptions.scenario === 'pipeline' && demoOptions.until === undefined && demoOptions.duration === undefined) {
  demoOptions.until = 'serving';
  demoOptions.duration = PIPELINE_DEFAULT_DURATION_S;
}
process.exitCode =
  demoOptions.scenario === 'fleet' || demoOptions.scenario === 'drift' || demoOptions.scenario === 'pipeline'
    ? await new Demo(demoOptions).run()
    : demoOptions.scenario === 'closed-loop'
      ? await runClosedLoopScenario({
          duration: demoOptions.duration,
          json: demoOptions.json,
          dataDir: demoOptions.dataDir,
          keep: demoOptions.keep,
          rate: program.getOptionValueSource('rate') === 'default' ? undefined : demoOptions.rate,
        })
      : await runRolloutScenario({
          scenario: demoOptions.scenario,
          duration: demoOptions.duration,
          bake: demoOptions.bake,
          json: demoOptions.json,
          dataDir: demoOptions.dataDir,
          keep: demoOptions.keep,
        });
