import { InvalidArgumentError, Option, type Command } from 'commander';
import { systemClock } from '../../common/clock.js';
import { assertModelName } from '../../common/ids.js';
import {
  RetrainingPolicy,
  RetrainingPolicyServiceService,
  TriggerDecision,
  type RetrainingPolicy as WirePolicy,
} from '../../common/proto/driftline/v1/retraining.js';
import { formatDuration, parseByteSize } from '../../common/units.js';
import { durationMs, integer, keyValue, repeated } from '../arguments.js';
import { withConnection } from '../context.js';
import { bytes, relativeTime, type Output } from '../output.js';

const DEFAULT_COOLDOWN_MS = 6 * 3_600_000;
const DEFAULT_DATASET_SINCE_MS = 7 * 86_400_000;
const DEFAULT_DECISIONS = 20;

function byteSizeArg(value: string): number {
  try {
    return parseByteSize(value);
  } catch {
    throw new InvalidArgumentError('expected a size such as 512MiB or 16GiB');
  }
}

function jsonObject(value: string): Record<string, unknown> {
  try {
    const parsed: unknown = JSON.parse(value);
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) return parsed as Record<string, unknown>;
  } catch {
    // Refused below, with the same message.
  }
  throw new InvalidArgumentError('expected a JSON object such as {"epochs":20,"lr":0.001}');
}

/** A --param value: JSON when it reads as JSON (20, 0.001, true, [64,32]), else the text itself. */
function paramValue(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

interface SetOptions {
  onDrift?: boolean;
  driftVersion?: number;
  driftCohort?: string[];
  driftLevel?: 'alert' | 'warn';
  onSchedule?: string;
  onLabelled?: number;
  cooldown: number;
  minRows: number;
  trainer: string;
  hyperparameters?: Record<string, unknown>;
  param?: Record<string, string>;
  gpus: number;
  gpuMemory: number;
  maxDuration?: number;
  gate?: string[];
  since: number;
  selector: string;
  allSamples?: boolean;
  replay: boolean;
  wholeFleet?: boolean;
  disable?: boolean;
  canary: boolean;
  canaryTarget: string;
  canaryWaves: number[];
  canaryBake: number;
  canaryMinDevices: number;
  canaryGate?: string[];
  canaryFailureLimit: number;
}

const DEFAULT_CANARY_WAVES = [1, 10, 50, 100];
const DEFAULT_CANARY_BAKE_MS = 600_000;

function percents(value: string): number[] {
  const list = value.split(',').map((s) => Number(s.trim()));
  if (list.length === 0 || list.some((n) => !Number.isFinite(n) || n <= 0 || n > 100)) throw new InvalidArgumentError('expected percents such as 1,10,50,100');
  return list;
}

const TRIGGERS_HELP = `
Triggers (at least one): --on-drift (a drift alert of the model: narrow with --drift-version,
--drift-cohort), --on-schedule "<cron>" (five fields, UTC), --on-labelled <n> (new labelled
samples since the last job). Whatever fires, a job starts only when no job of the model runs,
the cooldown since the last one has passed and the dataset holds --min-rows labelled rows.
Every decision, fired or not, is recorded with its reason: driftline training policy show <model>.

The release path (--canary-*): a version a triggered job registered (it passed the evaluation
gate) is signed as a canary for the devices of the cohort whose drift triggered the job (the
automation key, or awaiting "driftline models sign"), then rolled out to them in staged waves
judged by the rollout gates (as "driftline rollout start" takes them). An aborted rollout rolls
the devices back and is recorded on the job (driftline training status <job>). --no-canary
stops the loop at the registered version.

Example:
  driftline training policy set vibration --on-drift --on-schedule "0 3 * * *" --on-labelled 500 \\
    --cooldown 6h --min-rows 200 --trainer ts-dense-head --gate "accuracy-delta>=0.01"`;

/** Adds `policy set|show` under a `training` command (the training commands' group, whoever creates it). */
export function registerTrainingPolicy(training: Command): void {
  const policy = training.command('policy').description("a model's retraining policy: what starts a training job, and every decision it made");

  policy
    .command('set')
    .description('set the retraining policy of a model (a new version of it; the same policy again changes nothing)')
    .argument('<model>', 'model name')
    .option('--on-drift', 'retrain on drift alerts of the model')
    .option('--drift-version <n>', 'only alerts of this version (default: any)', integer(1))
    .option('--drift-cohort <cohort>', 'only alerts of this cohort (repeatable; "" is the whole fleet; default: every cohort)', repeated)
    .addOption(new Option('--drift-level <level>', 'the drift level that triggers').choices(['alert', 'warn']).default('alert'))
    .option('--on-schedule <cron>', 'retrain on a schedule: five-field cron expression in UTC, e.g. "0 3 * * *"')
    .option('--on-labelled <n>', 'retrain when this many new labelled samples arrived since the last job', integer(1))
    .addOption(
      new Option('--cooldown <duration>', 'after a job starts, triggers within this start nothing').argParser(durationMs).default(DEFAULT_COOLDOWN_MS, '6h'),
    )
    .option('--min-rows <n>', 'the dataset must hold at least this many labelled rows', integer(0), 0)
    .requiredOption('--trainer <name>', 'trainer of the job, e.g. ts-dense-head')
    .option('--hyperparameters <json>', 'hyperparameters as a JSON object', jsonObject)
    .option('--param <key=value>', 'one hyperparameter (repeatable; the value is read as JSON when it is JSON)', keyValue)
    .option('--gpus <n>', 'GPUs the job needs', integer(0, 64), 0)
    .addOption(new Option('--gpu-memory <size>', 'GPU memory per GPU the job needs, e.g. 16GiB').argParser(byteSizeArg).default(0, 'any'))
    .option('--max-duration <duration>', 'the job fails past this (default: 2h)', durationMs)
    .option('--gate <rule>', 'evaluation gate rule such as "accuracy-delta>=0.01" (repeatable; default: the gate\'s defaults)', repeated)
    .addOption(
      new Option('--since <duration>', 'the dataset holds samples captured this long before the decision (0s: all)')
        .argParser(durationMs)
        .default(DEFAULT_DATASET_SINCE_MS, formatDuration(DEFAULT_DATASET_SINCE_MS)),
    )
    .option('--selector <selector>', "only samples of devices matching this label selector, e.g. 'site=plant-3'", '')
    .option('--all-samples', 'include unlabelled samples in the dataset (default: labelled only)')
    .option('--no-replay', "leave the parent version's own training snapshot out of the dataset")
    .option('--whole-fleet', "a cohort's drift alert trains on every cohort's samples (default: that cohort's)")
    .option('--disable', 'keep the policy but start nothing (decisions record "disabled")')
    .option('--no-canary', 'a retrained version is registered only: no canary signature asked, no rollout')
    .option('--canary-target <selector>', "canary devices besides the drifted cohort, e.g. 'site=plant-3' (default: the cohort's all)", '')
    .addOption(
      new Option('--canary-waves <percents>', "percent of the canary's compatible devices per wave, the last 100")
        .argParser(percents)
        .default(DEFAULT_CANARY_WAVES, DEFAULT_CANARY_WAVES.join(',')),
    )
    .addOption(
      new Option('--canary-bake <duration>', 'how long each canary wave runs before its gates are judged')
        .argParser(durationMs)
        .default(DEFAULT_CANARY_BAKE_MS, formatDuration(DEFAULT_CANARY_BAKE_MS)),
    )
    .option('--canary-min-devices <n>', 'smallest cohort of a canary wave', integer(1, 100_000), 5)
    .option('--canary-gate <gate>', "a rollout gate such as p95-latency-ratio<=1.5 (repeatable; default: the rollout's defaults)", repeated)
    .option('--canary-failure-limit <n>', 'failed gate evaluations tolerated per canary wave before aborting', integer(0, 100), 0)
    .addHelpText('after', TRIGGERS_HELP)
    .action((model: string, options: SetOptions, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(RetrainingPolicyServiceService);
        const stored = await client.setRetrainingPolicy({ policy: policyFromOptions(assertModelName(model), options) });
        output.result(RetrainingPolicy.toJSON(stored), () => {
          output.line(`retraining policy of ${stored.model} set (version ${stored.version})`);
          printPolicy(output, stored);
        });
      }),
    );

  policy
    .command('show')
    .description("a model's retraining policy and its latest trigger decisions, newest first")
    .argument('<model>', 'model name')
    .option('--decisions <n>', 'how many decisions to show', integer(0, 1000), DEFAULT_DECISIONS)
    .option('--fired-only', 'only decisions that started a job')
    .action((model: string, options: { decisions: number; firedOnly?: boolean }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(RetrainingPolicyServiceService);
        const name = assertModelName(model);
        const policy = await client.getRetrainingPolicy({ model: name });
        const { decisions } =
          options.decisions === 0
            ? { decisions: [] }
            : await client.listTriggerDecisions({ model: name, firedOnly: Boolean(options.firedOnly), pageSize: options.decisions, pageToken: '' });
        output.result(
          {
            policy: RetrainingPolicy.toJSON(policy),
            decisions: decisions.map((d) => ({ ...(TriggerDecision.toJSON(d) as object), details: parseDetails(d.details) })),
          },
          () => {
            output.line(
              `retraining policy of ${policy.model} (version ${policy.version}, set ${new Date(policy.updatedAtMs).toISOString()} by ${policy.updatedBy})`,
            );
            printPolicy(output, policy);
            output.line('');
            const now = systemClock.now();
            output.table(
              ['ID', 'AT', 'TRIGGER', 'FIRED', 'REASON', 'JOB', 'DETAILS'],
              decisions.map((d) => [
                d.id,
                `${new Date(d.atMs).toISOString()} (${relativeTime(d.atMs, now)})`,
                d.triggerKey,
                d.fired ? 'yes' : 'no',
                d.reason,
                d.jobId || '-',
                detailsText(d.details),
              ]),
              'No trigger decisions recorded yet',
            );
          },
        );
      }),
    );
}

/**
 * Registers `training policy` on the program: under the program's `training` command when one is
 * registered already (the training job commands), or under a new one. Either side may run first.
 */
export function registerTrainingPolicyGroup(program: Command): void {
  const training = program.commands.find((c) => c.name() === 'training') ?? program.command('training').description('training jobs and retraining policies');
  registerTrainingPolicy(training);
}

function policyFromOptions(model: string, o: SetOptions): WirePolicy {
  const params = Object.fromEntries(Object.entries(o.param ?? {}).map(([k, v]) => [k, paramValue(v)]));
  return {
    model,
    enabled: !o.disable,
    onDrift: o.onDrift ? { version: o.driftVersion ?? 0, cohorts: o.driftCohort ?? [], minLevel: o.driftLevel ?? 'alert' } : undefined,
    onSchedule: o.onSchedule !== undefined ? { cron: o.onSchedule } : undefined,
    onLabelled: o.onLabelled !== undefined ? { minNewSamples: o.onLabelled } : undefined,
    cooldownMs: o.cooldown,
    minDatasetRows: o.minRows,
    job: {
      trainer: o.trainer,
      hyperparametersJson: JSON.stringify({ ...(o.hyperparameters ?? {}), ...params }),
      gpus: o.gpus,
      gpuMemoryBytes: o.gpuMemory,
      maxDurationMs: o.maxDuration ?? 0,
      gates: o.gate ?? [],
      dataset: {
        sinceMs: o.since,
        selector: o.selector,
        labelledOnly: !o.allSamples,
        replayParent: o.replay,
        cohortOnly: !o.wholeFleet,
      },
    },
    rollout: {
      enabled: o.canary,
      target: o.canaryTarget,
      wavePercents: o.canaryWaves,
      bakeMs: o.canaryBake,
      minDevices: o.canaryMinDevices,
      gates: o.canaryGate ?? [],
      failureLimit: o.canaryFailureLimit,
    },
    version: 0,
    updatedAtMs: 0,
    updatedBy: '',
    createdAtMs: 0,
    nextScheduledAtMs: 0,
  };
}

function printPolicy(output: Output, p: WirePolicy): void {
  const triggers: string[] = [];
  if (p.onDrift) {
    const scope = [
      p.onDrift.version ? `v${p.onDrift.version}` : 'any version',
      p.onDrift.cohorts.length ? `cohorts ${p.onDrift.cohorts.map((c) => c || '(fleet)').join(',')}` : 'every cohort',
    ];
    triggers.push(`on drift ${p.onDrift.minLevel} (${scope.join(', ')})`);
  }
  if (p.onSchedule)
    triggers.push(`on schedule "${p.onSchedule.cron}" UTC${p.nextScheduledAtMs ? ` (next ${new Date(p.nextScheduledAtMs).toISOString()})` : ''}`);
  if (p.onLabelled) triggers.push(`on ${p.onLabelled.minNewSamples} new labelled samples`);
  const job = p.job;
  const dataset = job?.dataset;
  output.table(
    ['SETTING', 'VALUE'],
    [
      ['state', p.enabled ? 'enabled' : 'disabled'],
      ['triggers', triggers.join('; ') || '-'],
      ['cooldown', formatDuration(p.cooldownMs)],
      ['min dataset rows', p.minDatasetRows],
      ['trainer', job?.trainer ?? '-'],
      ['hyperparameters', job?.hyperparametersJson ?? '{}'],
      [
        'resources',
        `${job?.gpus ?? 0} GPU(s)${job?.gpuMemoryBytes ? ` x ${bytes(job.gpuMemoryBytes)}` : ''}, at most ${formatDuration(job?.maxDurationMs ?? 0)}`,
      ],
      ['gates', job?.gates.join(', ') || '(defaults)'],
      [
        'dataset',
        dataset
          ? [
              dataset.sinceMs ? `last ${formatDuration(dataset.sinceMs)}` : 'every sample',
              dataset.selector ? `devices ${dataset.selector}` : '',
              dataset.labelledOnly ? 'labelled only' : 'labelled and unlabelled',
              dataset.replayParent ? "with the parent's snapshot" : '',
              dataset.cohortOnly ? "a drift alert's cohort only" : '',
            ]
              .filter(Boolean)
              .join(', ')
          : '-',
      ],
      ['canary', canaryText(p)],
    ],
  );
}

function canaryText(p: WirePolicy): string {
  const r = p.rollout;
  if (!r) return '-';
  if (!r.enabled) return 'off (a retrained version is registered only)';
  return [
    `to the drifted cohort${r.target ? ` within ${r.target}` : ''}`,
    `waves ${r.wavePercents.join(',')}% (at least ${r.minDevices} device(s))`,
    `bake ${formatDuration(r.bakeMs)}`,
    `gates ${r.gates.join(', ') || '(rollout defaults)'}`,
    r.failureLimit ? `failure limit ${r.failureLimit}` : '',
  ]
    .filter(Boolean)
    .join(', ');
}

function parseDetails(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Details as `key=value` pairs, times as ISO dates. */
function detailsText(text: string): string {
  const details = parseDetails(text);
  if (!details || typeof details !== 'object') return String(details);
  const pairs = Object.entries(details as Record<string, unknown>).map(([k, v]) =>
    k.endsWith('Ms') && typeof v === 'number' && v > 1e12
      ? `${k.slice(0, -2)}=${new Date(v).toISOString()}`
      : `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`,
  );
  return pairs.join(' ') || '-';
}
