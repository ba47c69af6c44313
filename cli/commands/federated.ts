import { randomUUID } from 'node:crypto';
import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import { InvalidArgumentError, Option, type Command } from 'commander';
import type { ServiceStub } from '../../client/operator-client.js';
import { systemClock } from '../../common/clock.js';
import { DriftlineError, type ErrorCode } from '../../common/errors.js';
import { assertModelName } from '../../common/ids.js';
import {
  FederatedServiceService,
  FederatedTask,
  FederatedTaskUpdate,
  type FederatedRoundSummary,
  type FederatedTask as WireTask,
  type StartFederatedTaskRequest,
} from '../../common/proto/driftline/v1/federated.js';
import { durationMs, integer, repeated } from '../arguments.js';
import { usageError } from '../cli-error.js';
import { withConnection } from '../context.js';
import { relativeTime, restoreTerminalOnSignal, type Output } from '../output.js';

type FederatedStub = ServiceStub<typeof FederatedServiceService>;

export const FEDERATED_STATES = ['pending', 'running', 'evaluating', 'releasing', 'succeeded', 'rejected', 'failed', 'cancelled'] as const;
export const FEDERATED_STRATEGIES = ['fedavg', 'fedavgm', 'fedprox', 'fedadam', 'fedyogi', 'median', 'trimmed-mean', 'krum', 'multi-krum'] as const;
const TERMINAL = new Set(['succeeded', 'rejected', 'failed', 'cancelled']);

/** A number within [min, max] (commander parser: a bad value is a usage error before any call). */
export function decimal(min: number, max: number, what = 'a number'): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`expected ${what} from ${min} to ${max}`);
    return n;
  };
}

export interface FederatedStartOptions {
  model: string;
  baseVersion: number;
  cohort: string;
  rounds: number;
  clientsPerRound: number;
  minClients?: number;
  overSelection: number;
  roundDeadline?: number;
  localEpochs?: number;
  batchSize?: number;
  learningRate?: number;
  strategy: string;
  serverLearningRate?: number;
  serverMomentum?: number;
  proximalMu?: number;
  trimFraction?: number;
  byzantine?: number;
  krumSelected?: number;
  privacy: string;
  clippingNorm?: number;
  adaptiveClipping?: boolean;
  noiseMultiplier?: number;
  targetEpsilon?: number;
  delta?: number;
  mode: string;
  bufferSize?: number;
  maxStaleness?: number;
  compression: string;
  maxUpdateNorm?: number;
  gate?: string[];
  release?: boolean;
  requestId?: string;
  watch?: boolean;
}

/**
 * The request a start sends, with the checks that need several options together (a usage
 * error, exit 2, before any call); each value's range was checked by its parser. The control plane
 * checks everything again (FEDERATED_TASK_INVALID names the field).
 */
export function startRequestOf(o: FederatedStartOptions): StartFederatedTaskRequest {
  const bad = (message: string): never => {
    throw usageError(message);
  };
  if (o.minClients !== undefined && o.minClients > o.clientsPerRound)
    bad(`--min-clients (${o.minClients}) must not be above --clients-per-round (${o.clientsPerRound})`);
  if (o.mode === 'async' && o.bufferSize === undefined) bad('--mode async needs --buffer-size <K> (aggregate every K updates)');
  if (o.mode !== 'async' && (o.bufferSize !== undefined || o.maxStaleness !== undefined)) bad('--buffer-size and --max-staleness apply to --mode async only');
  if (o.mode === 'async' && o.bufferSize! > o.clientsPerRound)
    bad(`--buffer-size (${o.bufferSize}) must not be above --clients-per-round (${o.clientsPerRound})`);
  if (o.proximalMu !== undefined && o.strategy !== 'fedprox') bad('--proximal-mu applies to --strategy fedprox only');
  if (o.trimFraction !== undefined && o.strategy !== 'trimmed-mean') bad('--trim-fraction applies to --strategy trimmed-mean only');
  if ((o.byzantine !== undefined || o.krumSelected !== undefined) && o.strategy !== 'krum' && o.strategy !== 'multi-krum')
    bad('--byzantine and --krum-selected apply to --strategy krum or multi-krum only');
  if (o.privacy === 'central-gaussian') {
    if (o.clippingNorm === undefined || o.clippingNorm <= 0) bad('--privacy central-gaussian needs --clipping-norm above 0');
    if (o.noiseMultiplier === undefined) bad('--privacy central-gaussian needs --noise-multiplier');
    if ((o.targetEpsilon === undefined) !== (o.delta === undefined)) bad('--target-epsilon and --delta go together (the budget is ε at δ)');
  } else if (o.noiseMultiplier !== undefined || o.targetEpsilon !== undefined || o.delta !== undefined || o.adaptiveClipping) {
    bad('--noise-multiplier, --target-epsilon, --delta and --adaptive-clipping need --privacy central-gaussian');
  }
  return {
    model: assertModelName(o.model),
    baseVersion: o.baseVersion,
    clientRequestId: o.requestId ?? randomUUID(),
    cohortSelector: o.cohort,
    rounds: o.rounds,
    clientsPerRound: o.clientsPerRound,
    minClients: o.minClients ?? 0,
    overSelection: o.overSelection,
    roundDeadlineSeconds: o.roundDeadline === undefined ? 0 : Math.ceil(o.roundDeadline / 1000),
    localEpochs: o.localEpochs ?? 0,
    batchSize: o.batchSize ?? 0,
    learningRate: o.learningRate ?? 0,
    strategy: {
      name: o.strategy,
      serverLearningRate: o.serverLearningRate ?? 0,
      serverMomentum: o.serverMomentum ?? 0,
      beta2: 0,
      tau: 0,
      proximalMu: o.proximalMu ?? 0,
      trimFraction: o.trimFraction ?? 0,
      byzantineClients: o.byzantine ?? 0,
      krumSelected: o.krumSelected ?? 0,
    },
    privacy: {
      mode: o.privacy,
      clippingNorm: o.clippingNorm ?? 0,
      adaptiveClipping: o.adaptiveClipping ?? false,
      targetQuantile: 0,
      clippingLearningRate: 0,
      noiseMultiplier: o.noiseMultiplier ?? 0,
      targetEpsilon: o.targetEpsilon ?? 0,
      delta: o.delta ?? 0,
    },
    mode: o.mode,
    asyncBufferSize: o.bufferSize ?? 0,
    maxStaleness: o.maxStaleness ?? 0,
    updateCompression: o.compression,
    maxUpdateNorm: o.maxUpdateNorm ?? 0,
    gates: o.gate ?? [],
    release: o.release ?? false,
  };
}

const START_HELP = `
Devices in the cohort that serve the base version train its dense head on their own labelled
samples (raw data never leaves them); the control plane aggregates their updates round by round
with the strategy, then the devices evaluate the final head and the base head on their held-out
samples. The final head becomes a new version only if it passes the evaluation gate (repeat
--gate; default: accuracy-delta>=0, class-recall-drop<=0.05; also macro-f1-delta and
log-loss-delta; a federated evaluation has no regression split and measures no latency), and
with --release it is signed as a canary for the cohort and rolled out in the model's retraining
policy's waves.

Example:
  driftline federated start --model vibration --base-version 3 --cohort site=north \\
    --rounds 10 --clients-per-round 20 --min-clients 15 --over-selection 0.3 \\
    --round-deadline 10m --strategy fedprox --proximal-mu 0.01 \\
    --privacy central-gaussian --clipping-norm 1 --noise-multiplier 1.1 \\
    --target-epsilon 8 --delta 1e-5 --release --watch`;

const FIXES: Partial<Record<ErrorCode, string>> = {
  MODEL_NOT_FOUND: '`driftline models get <name>` lists its versions',
  FEDERATED_TASK_NOT_FOUND: '`driftline federated list` shows the tasks',
  FEDERATED_NO_CLIENTS: '`driftline devices list` shows which devices match the cohort and serve the base version',
  REQUEST_ID_REUSED: 'use another --request-id (or none: each start gets a new one)',
};

async function withFix<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    const fix = err instanceof DriftlineError ? FIXES[err.code] : undefined;
    if (!fix || !(err instanceof DriftlineError)) throw err;
    throw new DriftlineError(err.code, `${err.message}: ${fix}`, { cause: err, details: err.details });
  }
}

/** `federated start|list|status|cancel`. */
export function registerFederated(program: Command): void {
  const federated = program.command('federated').description('federated learning tasks: train a model’s head on the devices, round by round');

  federated
    .command('start')
    .description('start a federated task: devices of a cohort train the base version’s head on their own data, round by round')
    .requiredOption('--model <name>', 'model name')
    .requiredOption('--base-version <n>', 'the version whose head the devices train, judged against it', integer(1))
    .option('--cohort <selector>', 'devices that may take part, as a label selector (default: every device serving the base version)', '')
    .requiredOption('--rounds <n>', 'rounds to train', integer(1, 100_000))
    .requiredOption('--clients-per-round <n>', 'devices that should report per round', integer(1, 1_000_000))
    .option('--min-clients <n>', 'updates that make a quorum (default: --clients-per-round)', integer(1, 1_000_000))
    .option('--over-selection <fraction>', 'extra devices invited per round, e.g. 0.3 for 30 % more', decimal(0, 10, 'a fraction'), 0)
    .option('--round-deadline <duration>', "a round closes at this with what it has, e.g. 10m (default: the server's)", durationMs)
    .option('--local-epochs <n>', 'epochs each device trains per round (default 1)', integer(1, 1000))
    .option('--batch-size <n>', 'local batch size (default 32)', integer(1, 65_536))
    .option('--learning-rate <rate>', 'local learning rate (default 0.05)', decimal(1e-9, 100))
    .addOption(new Option('--strategy <name>', 'how updates are combined').choices(FEDERATED_STRATEGIES).default('fedavg'))
    .option('--server-learning-rate <rate>', 'fedavgm, fedadam, fedyogi: the server learning rate', decimal(0, 100))
    .option('--server-momentum <m>', 'fedavgm: momentum; fedadam, fedyogi: beta1', decimal(0, 1))
    .option('--proximal-mu <mu>', 'fedprox: the proximal term the devices add to their loss', decimal(0, 100))
    .option('--trim-fraction <f>', 'trimmed-mean: the fraction cut from each side (default 0.1)', decimal(0, 0.49))
    .option('--byzantine <f>', 'krum, multi-krum: Byzantine clients tolerated', integer(0, 100_000))
    .option('--krum-selected <m>', 'multi-krum: best-scored updates averaged (default n − f)', integer(1, 1_000_000))
    .addOption(new Option('--privacy <mode>', 'central differential privacy').choices(['none', 'central-gaussian']).default('none'))
    .option('--clipping-norm <c>', 'L2 bound every update is clipped to (also without DP)', decimal(0, 1e9))
    .option('--adaptive-clipping', 'the bound follows the median of the update norms (central-gaussian)')
    .option('--noise-multiplier <sigma>', 'central-gaussian: noise σ × clipping norm', decimal(0, 1000))
    .option('--target-epsilon <eps>', 'central-gaussian: the budget ε; the task stops before a round would pass it', decimal(0, 1e6))
    .option('--delta <delta>', 'central-gaussian: δ of the budget, e.g. 1e-5', decimal(0, 1))
    .addOption(
      new Option('--mode <mode>', 'sync: rounds with a deadline; async: FedBuff, aggregate every --buffer-size updates')
        .choices(['sync', 'async'])
        .default('sync'),
    )
    .option('--buffer-size <k>', 'async: updates per aggregation', integer(1, 1_000_000))
    .option('--max-staleness <n>', 'async: refuse updates from a head more than this many versions old', integer(0, 1_000_000))
    .addOption(new Option('--compression <encoding>', 'how devices encode their updates').choices(['float32', 'float16', 'int8']).default('float32'))
    .option('--max-update-norm <n>', "refuse updates with a larger L2 norm (default: the server's)", decimal(1e-12, 1e12))
    .option('--gate <rule>', 'evaluation gate rule such as "accuracy-delta>=0.01" (repeatable; "none" judges nothing)', repeated)
    .option('--release', 'sign the passing version as a canary for the cohort and roll it out')
    .option('--request-id <id>', 'client request id: a retry with the same id starts no second task (default: a new one)')
    .option('--watch', 'then follow the task until it ends (as federated status --watch)')
    .addHelpText('after', START_HELP)
    .action((options: FederatedStartOptions, command: Command) =>
      withConnection(command, async (connection, output) => {
        const request = startRequestOf(options);
        const client = connection.api.service(FederatedServiceService);
        const task = await withFix(client.startFederatedTask(request));
        if (options.watch) {
          if (!output.json) output.line(startedLine(task));
          await watch(client, task.id, output);
          return;
        }
        output.result(FederatedTask.toJSON(task), () => {
          output.line(startedLine(task));
          output.line(`watch it: driftline federated status ${task.id} --watch`);
        });
      }),
    );

  federated
    .command('list')
    .description('federated tasks, newest first')
    .option('--model <name>', 'only tasks of this model')
    .addOption(new Option('--state <state>', 'only tasks in this state').choices(FEDERATED_STATES))
    .option('--limit <n>', 'at most this many (default 100)', integer(1, 1000))
    .option('--page-token <token>', 'the next page, as the previous one printed it')
    .action((options: { model?: string; state?: string; limit?: number; pageToken?: string }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const page = await connection.api
          .service(FederatedServiceService)
          .listFederatedTasks({ model: options.model ?? '', state: options.state ?? '', pageSize: options.limit ?? 0, pageToken: options.pageToken ?? '' });
        const now = systemClock.now();
        output.result({ tasks: page.tasks.map((t) => FederatedTask.toJSON(t)), nextPageToken: page.nextPageToken || null }, () => {
          output.table(
            ['ID', 'MODEL', 'BASE', 'STRATEGY', 'STATE', 'ROUND', 'ACCURACY', 'EPSILON', 'RESULT', 'UPDATED', 'REASON'],
            page.tasks.map((t) => [
              t.id,
              t.spec?.model ?? '-',
              t.spec ? `v${t.spec.baseVersion}` : '-',
              t.spec?.strategy?.name || 'fedavg',
              t.state,
              `${t.round}/${t.spec?.rounds ?? 0}`,
              accuracyText(lastAccuracy(t)),
              epsilonText(t.epsilon),
              t.resultVersion ? `v${t.resultVersion}` : t.evaluation?.verdict || '-',
              relativeTime(t.updatedAtMs, now),
              reasonText(t),
            ]),
            options.model || options.state ? 'No federated tasks found matching the filters' : 'No federated tasks found',
          );
          if (page.nextPageToken) output.line(`more: --page-token ${page.nextPageToken}`);
        });
      }),
    );

  federated
    .command('status')
    .description('one federated task: its settings, a table of its rounds, the evaluation and the release')
    .argument('<id>', 'federated task id')
    .option(
      '--watch',
      'keep showing changes until the task ends: a progress bar per round on a terminal, otherwise one line per change (JSON lines with --json)',
    )
    .action((id: string, options: { watch?: boolean }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(FederatedServiceService);
        if (options.watch) {
          await withFix(watch(client, id, output));
          return;
        }
        const task = await withFix(client.getFederatedTask({ id }));
        output.result(FederatedTask.toJSON(task), () => printStatus(output, task));
      }),
    );

  federated
    .command('cancel')
    .description('cancel a federated task; devices still training are told to stop')
    .argument('<id>', 'federated task id')
    .option('--reason <text>', 'why (kept with the task)', '')
    .action((id: string, options: { reason: string }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const task = await withFix(connection.api.service(FederatedServiceService).cancelFederatedTask({ id, reason: options.reason }));
        output.result(FederatedTask.toJSON(task), () => output.line(`federated task ${task.id} ${task.state}${task.reason ? `: ${task.reason}` : ''}`));
      }),
    );
}

function startedLine(t: WireTask): string {
  const s = t.spec;
  return `federated task ${t.id} ${t.state}: ${s?.model} from v${s?.baseVersion}, ${s?.rounds} rounds of ${s?.clientsPerRound} clients, ${s?.strategy?.name || 'fedavg'}${s?.cohortSelector ? `, cohort ${s.cohortSelector}` : ''}`;
}

const accuracyText = (a: number | undefined): string => (a === undefined || a < 0 ? '-' : `${(a * 100).toFixed(2)}%`);
const epsilonText = (e: number): string => (e > 0 ? e.toFixed(3) : '-');
const lossText = (l: number, r: FederatedRoundSummary): string => (r.aggregated > 0 ? l.toFixed(4) : '-');

/** The newest round's federated accuracy (undefined before one was evaluated). */
function lastAccuracy(t: WireTask): number | undefined {
  return [...t.rounds].reverse().find((r) => r.accuracy >= 0 && r.evalSamples > 0)?.accuracy;
}

function refusedText(r: FederatedRoundSummary): string {
  const entries = Object.entries(r.refused).filter(([, n]) => n > 0);
  const total = entries.reduce((sum, [, n]) => sum + n, 0);
  return total === 0 ? '0' : `${total} (${entries.map(([code, n]) => `${code} ${n}`).join(', ')})`;
}

function reasonText(t: WireTask): string {
  const withCode = t.errorCode && !t.reason.includes(t.errorCode) ? `${t.errorCode}: ${t.reason}` : t.reason;
  return withCode ? (withCode.length > 80 ? `${withCode.slice(0, 77)}...` : withCode) : '-';
}

function releaseText(t: WireTask): string {
  const r = t.release!;
  const rollout = r.rolloutId ? ` (rollout ${r.rolloutId})` : '';
  const audience = r.audience ? ` to ${r.audience}` : '';
  switch (r.state) {
    case 'awaiting-signature':
      return `awaiting signature: driftline models sign ${t.spec?.model} ${r.version}${audience ? ` (canary${audience})` : ''}`;
    case 'rolling-out':
      return `rolling out${audience}${rollout}`;
    case 'succeeded':
      return `rolled out${audience}${rollout}`;
    case 'failed':
      return `failed: ${r.errorCode && !r.reason.includes(r.errorCode) ? `${r.errorCode}: ` : ''}${r.reason || '-'}${rollout}`;
    default:
      return `${r.state}${r.reason ? `: ${r.reason}` : ''}${rollout}`;
  }
}

/** The table of rounds: round, state, invited, reported, aggregated, dropped, refused, train loss, accuracy, ε. */
export function roundRows(t: WireTask): Array<Array<string | number>> {
  return t.rounds.map((r) => [
    r.round,
    r.state,
    r.invited,
    r.reported,
    r.aggregated,
    r.dropped,
    refusedText(r),
    lossText(r.trainLoss, r),
    accuracyText(r.evalSamples > 0 ? r.accuracy : undefined),
    epsilonText(r.epsilon),
  ]);
}
export const ROUND_HEAD = ['ROUND', 'STATE', 'INVITED', 'REPORTED', 'AGGREGATED', 'DROPPED', 'REFUSED', 'TRAIN LOSS', 'ACCURACY', 'EPSILON'];

function printStatus(output: Output, t: WireTask): void {
  const now = systemClock.now();
  const s = t.spec;
  const privacy = s?.privacy?.mode && s.privacy.mode !== 'none' ? `${s.privacy.mode} σ ${s.privacy.noiseMultiplier}, clip ${s.privacy.clippingNorm}` : 'none';
  const rows: Array<[string, string | number]> = [
    ['state', t.state],
    ['model', `${s?.model} from v${s?.baseVersion}`],
    ['cohort', s?.cohortSelector || '(every device serving the base version)'],
    ['rounds', `${t.round} of ${s?.rounds} (${s?.mode || 'sync'})`],
    ['clients', `${s?.clientsPerRound} per round, quorum ${s?.minClients || s?.clientsPerRound}, over-selection ${s?.overSelection ?? 0}`],
    ['strategy', s?.strategy?.name || 'fedavg'],
    ['privacy', privacy],
    ['epsilon', t.epsilon > 0 ? `${t.epsilon.toFixed(3)} at δ ${t.delta}` : '-'],
    ['gates', s?.gates.join(', ') || '(defaults)'],
    ['created', `${new Date(t.createdAtMs).toISOString()} (${relativeTime(t.createdAtMs, now)})`],
    ['updated', `${new Date(t.updatedAtMs).toISOString()} (${relativeTime(t.updatedAtMs, now)})`],
  ];
  if (t.headSha256) rows.push(['head', t.headSha256]);
  if (t.evaluation) rows.push(['evaluation', `${t.evaluation.verdict}${t.evaluation.reason ? `: ${t.evaluation.reason}` : ''}`]);
  if (t.resultVersion) rows.push(['result', `${s?.model} v${t.resultVersion}`]);
  if (t.release) rows.push(['release', releaseText(t)]);
  if (t.errorCode) rows.push(['error', t.errorCode]);
  if (t.reason) rows.push(['reason', t.reason]);
  output.table(['FIELD', 'VALUE'], rows);
  output.table(ROUND_HEAD, roundRows(t), 'No rounds yet');
  const split = t.evaluation?.splits.find((x) => x.split === 'test');
  if (split?.candidate && split.parent) {
    const pair = (c: number, p: number): string => `${c.toFixed(4)} / ${p.toFixed(4)}`;
    output.table(
      ['SAMPLES', 'ACCURACY', 'MACRO F1', 'LOG LOSS'],
      [
        [
          Number(split.candidate.rows),
          pair(split.candidate.accuracy, split.parent.accuracy),
          pair(split.candidate.macroF1, split.parent.macroF1),
          pair(split.candidate.logLoss, split.parent.logLoss),
        ],
      ],
    );
    output.line('(final head / base head, on the devices’ held-out samples)');
  }
}

/** One line per change, for logs and pipes: `running round 2/5 training reported 7/10 aggregated 0 ε 0.412`. */
export function summaryLine(t: WireTask): string {
  const parts = [t.state, `round ${t.round}/${t.spec?.rounds ?? 0}`];
  const r = t.rounds[t.rounds.length - 1];
  if (r) {
    parts.push(r.state, `reported ${r.reported}/${r.invited}`, `aggregated ${r.aggregated}`);
    if (r.dropped) parts.push(`dropped ${r.dropped}`);
    if (r.evalSamples > 0 && r.accuracy >= 0) parts.push(`accuracy ${accuracyText(r.accuracy)}`);
  }
  if (t.epsilon > 0) parts.push(`ε ${t.epsilon.toFixed(3)}`);
  if (t.resultVersion) parts.push(`-> v${t.resultVersion}`);
  if (TERMINAL.has(t.state) && reasonText(t) !== '-') parts.push(`(${reasonText(t)})`);
  return parts.join(' ');
}

/** Follows a task until it ends (the server ends the stream): a bar per round on a terminal; Ctrl-C puts the terminal back. */
async function watch(client: FederatedStub, id: string, output: Output): Promise<void> {
  const tty = Boolean(process.stderr.isTTY) && !output.json;
  const bars = tty
    ? new MultiBar(
        { stream: process.stderr, hideCursor: true, format: 'round {round} {state} [{bar}] {value}/{total} reported {extra}', clearOnComplete: false },
        Presets.shades_classic,
      )
    : undefined;
  const perRound = new Map<number, SingleBar>();
  const release = bars ? restoreTerminalOnSignal(() => bars.stop()) : () => undefined;
  let last: WireTask | undefined;
  let lastLine = '';
  try {
    for await (const update of client.watchFederatedTask({ id })) {
      const t = update.task;
      if (!t) continue;
      last = t;
      if (output.json) {
        output.line(JSON.stringify(FederatedTaskUpdate.toJSON(update)));
        continue;
      }
      if (!bars) {
        const line = summaryLine(t);
        if (line !== lastLine) output.line(line);
        lastLine = line;
        continue;
      }
      for (const r of t.rounds) {
        const payload = {
          round: r.round,
          state: r.state,
          extra: [
            `aggregated ${r.aggregated}`,
            r.dropped ? `dropped ${r.dropped}` : '',
            r.trainLoss && r.aggregated ? `loss ${r.trainLoss.toFixed(4)}` : '',
            r.evalSamples > 0 ? `acc ${accuracyText(r.accuracy)}` : '',
            r.epsilon > 0 ? `ε ${r.epsilon.toFixed(3)}` : '',
          ]
            .filter(Boolean)
            .join(' '),
        };
        const total = Math.max(1, r.invited);
        const bar = perRound.get(r.round);
        if (!bar) perRound.set(r.round, bars.create(total, r.reported, payload));
        else {
          bar.setTotal(total);
          bar.update(r.reported, payload);
        }
      }
    }
  } finally {
    release();
    bars?.stop();
  }
  if (last && !output.json) {
    if (bars) output.line('');
    printStatus(output, last);
  }
}
