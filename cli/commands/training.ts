import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Presets, SingleBar } from 'cli-progress';
import { InvalidArgumentError, Option, type Command } from 'commander';
import type { ServiceStub } from '../../client/operator-client.js';
import { systemClock } from '../../common/clock.js';
import { DriftlineError, type ErrorCode } from '../../common/errors.js';
import { assertModelName } from '../../common/ids.js';
import {
  TrainingJob,
  TrainingJobUpdate,
  TrainingLogLine,
  TrainingServiceService,
  type TrainingJob as WireJob,
} from '../../common/proto/driftline/v1/learning.js';
import { formatDuration, parseByteSize } from '../../common/units.js';
import { durationMs, integer, keyValue, repeated } from '../arguments.js';
import { withConnection } from '../context.js';
import { relativeTime, restoreTerminalOnSignal, type Output } from '../output.js';
import { registerTrainingPolicy } from './training-policy.js';

type TrainingStub = ServiceStub<typeof TrainingServiceService>;

const STATES = ['queued', 'leased', 'running', 'evaluating', 'succeeded', 'rejected', 'failed', 'cancelled'] as const;
const TERMINAL = new Set(['succeeded', 'rejected', 'failed', 'cancelled']);

function byteSizeArg(value: string): number {
  try {
    return parseByteSize(value);
  } catch {
    throw new InvalidArgumentError('expected a size such as 512MiB or 16GiB');
  }
}

/** --hyperparameters: a JSON object, or @file holding one. */
function hyperparametersArg(value: string): Record<string, unknown> {
  let text = value;
  if (value.startsWith('@')) {
    try {
      text = readFileSync(value.slice(1), 'utf8');
    } catch (err) {
      throw new InvalidArgumentError(`cannot read ${value.slice(1)}: ${(err as Error).message}`);
    }
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) return parsed as Record<string, unknown>;
  } catch {
    // Refused below.
  }
  throw new InvalidArgumentError('expected a JSON object such as {"epochs":20,"learning_rate":0.005}, or @file.json');
}

/** A --param value: JSON when it reads as JSON (20, 0.001, true), else the text itself. */
function paramValue(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

const datasetId = (value: string): string => {
  if (!/^[0-9a-f]{64}$/.test(value))
    throw new InvalidArgumentError('expected a dataset snapshot id (64 hex digits, from `driftline datasets create` or `datasets list`)');
  return value;
};

interface StartOptions {
  model: string;
  baseVersion: number;
  dataset: string;
  trainer: string;
  hyperparameters?: Record<string, unknown>;
  param?: Record<string, string>;
  gpus: number;
  gpuMemory: number;
  cpu: number;
  memory: number;
  maxDuration?: number;
  maxAttempts?: number;
  gate?: string[];
  requestId?: string;
  watch?: boolean;
}

const START_HELP = `
The job waits in the queue until a worker that offers its trainer and resources leases it
(\`driftline worker\`). Its candidate becomes a new version only if it passes the evaluation
gate (repeat --gate; default: accuracy-delta>=0, regression-accuracy-delta>=-0.005,
class-recall-drop<=0.05; also macro-f1-delta, log-loss-delta and latency-ratio, the candidate's
one-row p50 latency over the parent's on this host; "none" judges nothing).

Example:
  driftline training start --model vibration --base-version 3 --dataset <id> \\
    --trainer typescript --param epochs=20 --gate "accuracy-delta>=0.01" --watch`;

/** What to do about the refusals an operator can fix, added to the control plane's message. */
const FIXES: Partial<Record<ErrorCode, string>> = {
  DATASET_NOT_FOUND: '`driftline datasets list --model <name>` shows the snapshots, `driftline datasets create --model <name>` makes one',
  MODEL_NOT_FOUND: '`driftline models get <name>` lists its versions',
  TRAINING_JOB_NOT_FOUND: '`driftline training list` shows the jobs',
  REQUEST_ID_REUSED: 'use another --request-id (or none: each start gets a new one)',
};

/** Runs a call; a refusal with a known fix is thrown again with the fix named (same code, same exit). */
async function withFix<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    const fix = err instanceof DriftlineError ? FIXES[err.code] : undefined;
    if (!fix || !(err instanceof DriftlineError)) throw err;
    throw new DriftlineError(err.code, `${err.message}: ${fix}`, { cause: err, details: err.details });
  }
}

/** `training start|list|status|cancel|logs`, and `training policy` in the same group. */
export function registerTraining(program: Command): void {
  const training = program.commands.find((c) => c.name() === 'training') ?? program.command('training').description('training jobs and retraining policies');

  training
    .command('start')
    .description('queue a training job: a worker trains a candidate from a base version on a dataset snapshot')
    .requiredOption('--model <name>', 'model name')
    .requiredOption('--base-version <n>', 'the version the candidate is trained from and judged against', integer(1))
    .requiredOption('--dataset <id>', 'dataset snapshot id (driftline datasets create)', datasetId)
    .requiredOption('--trainer <name>', 'trainer name: typescript, pytorch, or one your workers offer with --trainer')
    .option('--hyperparameters <json>', 'hyperparameters as a JSON object, or @file.json', hyperparametersArg)
    .option('--param <key=value>', 'one hyperparameter (repeatable; the value is read as JSON when it is JSON)', keyValue)
    .option('--gpus <n>', 'GPUs the job needs', integer(0, 64), 0)
    .addOption(new Option('--gpu-memory <size>', 'memory per GPU the job needs, e.g. 16GiB').argParser(byteSizeArg).default(0, 'any'))
    .option('--cpu <n>', 'CPU cores the job needs', integer(0, 4096), 0)
    .addOption(new Option('--memory <size>', 'RAM the job needs, e.g. 8GiB').argParser(byteSizeArg).default(0, 'any'))
    .option('--max-duration <duration>', "an attempt is stopped past this, e.g. 2h (default: the server's)", durationMs)
    .option('--max-attempts <n>', "attempts before the job fails (default: the server's)", integer(1, 100))
    .option('--gate <rule>', 'evaluation gate rule such as "accuracy-delta>=0.01" (repeatable)', repeated)
    .option('--request-id <id>', 'client request id: a retry with the same id starts no second job (default: a new one)')
    .option('--watch', 'then follow the job until it ends (as training status --watch)')
    .addHelpText('after', START_HELP)
    .action((options: StartOptions, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(TrainingServiceService);
        const hyperparameters = {
          ...(options.hyperparameters ?? {}),
          ...Object.fromEntries(Object.entries(options.param ?? {}).map(([k, v]) => [k, paramValue(v)])),
        };
        const job = await withFix(
          client.startTrainingJob({
            model: assertModelName(options.model),
            baseVersion: options.baseVersion,
            clientRequestId: options.requestId ?? randomUUID(),
            datasetId: options.dataset,
            trainer: options.trainer,
            hyperparametersJson: JSON.stringify(hyperparameters),
            resources: { gpus: options.gpus, gpuMemoryBytes: options.gpuMemory, cpu: options.cpu, memoryBytes: options.memory },
            maxDurationSeconds: options.maxDuration === undefined ? 0 : Math.ceil(options.maxDuration / 1000),
            maxAttempts: options.maxAttempts ?? 0,
            gates: options.gate ?? [],
          }),
        );
        if (options.watch) {
          if (!output.json) output.line(`training job ${job.id} queued: ${job.model} from v${job.baseVersion}, trainer ${job.trainer}`);
          await watch(client, job.id, output);
          return;
        }
        output.result(TrainingJob.toJSON(job), () => {
          output.line(`training job ${job.id} queued: ${job.model} from v${job.baseVersion}, trainer ${job.trainer}, up to ${job.maxAttempts} attempt(s)`);
          output.line(`watch it: driftline training status ${job.id} --watch`);
        });
      }),
    );

  training
    .command('list')
    .description('training jobs, newest first')
    .option('--model <name>', 'only jobs of this model')
    .addOption(new Option('--state <state>', 'only jobs in this state').choices(STATES))
    .option('--limit <n>', 'at most this many (default 100)', integer(1, 1000))
    .option('--page-token <token>', 'the next page, as the previous one printed it')
    .action((options: { model?: string; state?: string; limit?: number; pageToken?: string }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const page = await connection.api
          .service(TrainingServiceService)
          .listTrainingJobs({ model: options.model ?? '', state: options.state ?? '', pageSize: options.limit ?? 0, pageToken: options.pageToken ?? '' });
        const now = systemClock.now();
        output.result({ jobs: page.jobs.map((j) => TrainingJob.toJSON(j)), nextPageToken: page.nextPageToken || null }, () => {
          output.table(
            ['ID', 'MODEL', 'BASE', 'TRAINER', 'TRIGGER', 'STATE', 'ATTEMPT', 'PROGRESS', 'RESULT', 'UPDATED', 'REASON'],
            page.jobs.map((j) => [
              j.id,
              j.model,
              `v${j.baseVersion}`,
              j.trainer,
              triggerShort(j),
              j.state,
              `${j.attempt}/${j.maxAttempts}`,
              progressText(j),
              j.resultVersion ? `v${j.resultVersion}` : j.evaluation?.verdict || '-',
              relativeTime(j.updatedAtMs, now),
              reasonText(j),
            ]),
            options.model || options.state ? 'No training jobs found matching the filters' : 'No training jobs found',
          );
          if (page.nextPageToken) output.line(`more: --page-token ${page.nextPageToken}`);
        });
      }),
    );

  training
    .command('status')
    .description('one training job: state, attempt, worker, progress, candidate and evaluation')
    .argument('<id>', 'training job id')
    .option('--watch', 'keep showing changes until the job ends: a progress bar on a terminal, otherwise one line per change (JSON lines with --json)')
    .action((id: string, options: { watch?: boolean }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(TrainingServiceService);
        if (options.watch) {
          await withFix(watch(client, id, output));
          return;
        }
        const job = await withFix(client.getTrainingJob({ id }));
        output.result(TrainingJob.toJSON(job), () => printStatus(output, job));
      }),
    );

  training
    .command('cancel')
    .description('cancel a training job; a worker running it stops its trainer at its next heartbeat')
    .argument('<id>', 'training job id')
    .option('--reason <text>', 'why (kept with the job)', '')
    .option('--request-id <id>', 'client request id: a retry with the same id is not applied twice (default: a new one)')
    .action((id: string, options: { reason: string; requestId?: string }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const job = await withFix(
          connection.api.service(TrainingServiceService).cancelTrainingJob({ id, reason: options.reason, clientRequestId: options.requestId ?? randomUUID() }),
        );
        output.result(TrainingJob.toJSON(job), () => output.line(`training job ${job.id} ${job.state}${job.cancelReason ? `: ${job.cancelReason}` : ''}`));
      }),
    );

  training
    .command('logs')
    .description("a training job's log: its trainers' output and the worker's notes, per attempt")
    .argument('<id>', 'training job id')
    .option('--attempt <n>', "only this attempt's lines", integer(1, 100))
    .option('--tail <n>', 'only the last lines', integer(1, 100_000))
    .option('--follow', 'then keep printing new lines until the job ends')
    .action((id: string, options: { attempt?: number; tail?: number; follow?: boolean }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(TrainingServiceService);
        const keep = (line: TrainingLogLine): boolean => !options.attempt || line.attempt === options.attempt;
        const print = (line: TrainingLogLine): void =>
          output.line(output.json ? JSON.stringify(TrainingLogLine.toJSON(line)) : `${new Date(line.atMs).toISOString()} [${line.attempt}] ${line.text}`);
        if (!options.follow) {
          const { lines } = await withFix(client.getTrainingJobLogs({ id, attempt: options.attempt ?? 0, tail: options.tail ?? 0 }));
          output.result({ lines: lines.map((l) => TrainingLogLine.toJSON(l)) }, () => {
            if (lines.length === 0) output.line('No log lines yet');
            for (const line of lines) print(line);
          });
          return;
        }
        // The watch's first update replays the last lines kept; later ones carry what is new.
        let first = true;
        await withFix(
          (async () => {
            for await (const update of client.watchTrainingJob({ id })) {
              const lines = update.logLines.filter(keep);
              for (const line of first && options.tail ? lines.slice(-options.tail) : lines) print(line);
              first = false;
            }
          })(),
        );
      }),
    );

  registerTrainingPolicy(training);
}

/** `epoch 3/20 loss 0.1234`, or `-` before the first progress line. */
function progressText(j: WireJob): string {
  const p = j.progress;
  if (!p || (p.epoch === 0 && !p.hasLoss)) return '-';
  const epochs = p.metrics.epochs;
  return `epoch ${p.epoch}${epochs ? `/${epochs}` : ''}${p.hasLoss ? ` loss ${p.loss.toFixed(4)}` : ''}`;
}

/** The TRIGGER column: `drift plant-2`, `schedule`, `labelled`, or `-` for an operator's job. */
export function triggerShort(j: WireJob): string {
  const t = j.trigger;
  if (!t) return '-';
  return t.kind === 'drift' && t.cohort ? `drift ${t.cohort}` : t.kind;
}

/** `drift alert on cohort plant-2 (event 12, policy v3)`, with the replayed snapshot when one was. */
export function triggerText(j: WireJob): string {
  const t = j.trigger!;
  const what =
    t.kind === 'drift'
      ? `drift alert on ${t.cohort ? `cohort ${t.cohort}` : 'the fleet'}`
      : t.kind === 'schedule'
        ? 'schedule'
        : t.kind === 'labelled'
          ? 'new labelled samples'
          : t.kind;
  const details = [...(t.driftEventId ? [`event ${t.driftEventId}`] : []), `policy v${t.policyVersion}`];
  const replay = t.replayedDatasetId ? `; replays ${t.replayedDatasetId.slice(0, 12)}` : '';
  return `${what} (${details.join(', ')})${replay}`;
}

/** `rolling out (rollout r-…)`, `awaiting signature: driftline models sign vibration 2`, `aborted: <reason>`. */
export function releaseText(j: WireJob): string {
  const r = j.release!;
  const rollout = r.rolloutId ? ` (rollout ${r.rolloutId})` : '';
  const audience = r.audience ? ` to ${r.audience}` : '';
  switch (r.state) {
    case 'awaiting-signature':
      return `awaiting signature: driftline models sign ${j.model} ${r.version}${audience ? ` (canary${audience})` : ''}`;
    case 'rolling-out':
      return `rolling out${audience}${rollout}`;
    case 'succeeded':
      return `rolled out${audience}${rollout}`;
    case 'failed':
      return `failed: ${r.errorCode && !r.reason.includes(r.errorCode) ? `${r.errorCode}: ` : ''}${r.reason || '-'}${rollout}`;
    default:
      // aborted, skipped: the reason says why.
      return `${r.state}${r.reason ? `: ${r.reason}` : ''}${rollout}`;
  }
}

function reasonText(j: WireJob): string {
  const text = j.state === 'cancelled' ? j.cancelReason || j.reason : j.reason;
  const withCode = j.errorCode && !text.includes(j.errorCode) ? `${j.errorCode}: ${text}` : text;
  return withCode ? (withCode.length > 80 ? `${withCode.slice(0, 77)}...` : withCode) : '-';
}

function printStatus(output: Output, j: WireJob): void {
  const now = systemClock.now();
  const rows: Array<[string, string | number]> = [
    ['state', j.state],
    ['model', `${j.model} from v${j.baseVersion}`],
    ['dataset', j.datasetId],
    ['trainer', `${j.trainer} ${j.hyperparametersJson}`],
    ['attempt', `${j.attempt} of ${j.maxAttempts}`],
    ['worker', j.workerId ? `${j.workerId} (lease until ${new Date(j.leaseExpiresAtMs).toISOString()})` : '-'],
    ['progress', progressText(j)],
    ['created', `${new Date(j.createdAtMs).toISOString()} (${relativeTime(j.createdAtMs, now)})`],
    ['updated', `${new Date(j.updatedAtMs).toISOString()} (${relativeTime(j.updatedAtMs, now)})`],
    ['max duration', formatDuration(j.maxDurationSeconds * 1000)],
    ['gates', j.gates.join(', ') || '(defaults)'],
  ];
  if (j.candidate) rows.push(['candidate', `${j.candidate.id} sha256 ${j.candidate.sha256} (${j.candidate.sizeBytes} bytes, attempt ${j.candidate.attempt})`]);
  if (j.evaluation) rows.push(['evaluation', `${j.evaluation.verdict}${j.evaluation.reason ? `: ${j.evaluation.reason}` : ''}`]);
  if (j.trigger) rows.push(['trigger', triggerText(j)]);
  if (j.resultVersion) rows.push(['result', `${j.model} v${j.resultVersion}`]);
  if (j.release) rows.push(['release', releaseText(j)]);
  if (j.errorCode) rows.push(['error', j.errorCode]);
  if (j.reason || j.cancelReason) rows.push(['reason', j.state === 'cancelled' ? j.cancelReason || j.reason : j.reason]);
  output.table(['FIELD', 'VALUE'], rows);
  if (j.evaluation?.gates.length) {
    output.table(
      ['GATE', 'VERDICT', 'VALUE', 'THRESHOLD', 'DETAIL'],
      j.evaluation.gates.map((g) => [g.gate, g.verdict, g.hasValue ? Number(g.value.toFixed(4)) : '-', g.threshold, g.detail || '-']),
    );
  }
  if (j.evaluation?.splits.length) {
    // Candidate against parent on each split; latency is one-row p50 on the control plane's host.
    const pair = (c: number, p: number, digits: number): string => `${c.toFixed(digits)} / ${p.toFixed(digits)}`;
    output.table(
      ['SPLIT', 'ROWS', 'ACCURACY', 'MACRO F1', 'LOG LOSS', 'ECE', 'P50 MS'],
      j.evaluation.splits.map(({ split, candidate: c, parent: p }) =>
        c && p
          ? [
              split,
              Number(c.rows),
              pair(c.accuracy, p.accuracy, 4),
              pair(c.macroF1, p.macroF1, 4),
              pair(c.logLoss, p.logLoss, 4),
              pair(c.expectedCalibrationError, p.expectedCalibrationError, 4),
              c.latencyP50Ms && p.latencyP50Ms ? pair(c.latencyP50Ms, p.latencyP50Ms, 3) : '-',
            ]
          : [split, '-', '-', '-', '-', '-', '-'],
      ),
    );
    output.line('(candidate / parent)');
  }
}

/** One line per change, for logs and pipes: `running attempt 1/3 epoch 3/20 loss 0.1234 worker tw_...`. */
function summaryLine(j: WireJob): string {
  const parts = [j.state, `attempt ${j.attempt}/${j.maxAttempts}`];
  const progress = progressText(j);
  if (progress !== '-') parts.push(progress);
  if (j.workerId) parts.push(`worker ${j.workerId}`);
  if (j.resultVersion) parts.push(`-> v${j.resultVersion}`);
  if (TERMINAL.has(j.state) && reasonText(j) !== '-') parts.push(`(${reasonText(j)})`);
  return parts.join(' ');
}

/** Follows a job until it ends (the server ends the stream); Ctrl-C puts the terminal back. */
async function watch(client: TrainingStub, id: string, output: Output): Promise<void> {
  const tty = Boolean(process.stderr.isTTY) && !output.json;
  const bar = tty
    ? new SingleBar(
        { stream: process.stderr, hideCursor: true, format: '{state} [{bar}] epoch {value}/{total} {loss}', clearOnComplete: false },
        Presets.shades_classic,
      )
    : undefined;
  let started = false;
  const release = bar ? restoreTerminalOnSignal(() => bar.stop()) : () => undefined;
  let last: WireJob | undefined;
  let lastLine = '';
  try {
    for await (const update of client.watchTrainingJob({ id })) {
      const j = update.job;
      if (!j) continue;
      last = j;
      if (output.json) {
        output.line(JSON.stringify(TrainingJobUpdate.toJSON(update)));
        continue;
      }
      if (!bar) {
        const line = summaryLine(j);
        if (line !== lastLine) output.line(line);
        lastLine = line;
        continue;
      }
      const total = Math.max(1, j.progress?.metrics.epochs ?? 0, j.progress?.epoch ?? 0);
      const payload = { state: `${j.state} (attempt ${j.attempt}/${j.maxAttempts})`, loss: j.progress?.hasLoss ? `loss ${j.progress.loss.toFixed(4)}` : '' };
      if (!started) {
        bar.start(total, j.progress?.epoch ?? 0, payload);
        started = true;
      } else {
        bar.setTotal(total);
        bar.update(j.progress?.epoch ?? 0, payload);
      }
    }
  } finally {
    release();
    bar?.stop();
  }
  if (last && !output.json) {
    if (bar) output.line('');
    // The server ends the stream of a succeeded job only once its version is recorded.
    printStatus(output, last);
  }
}
