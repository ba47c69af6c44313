import { randomUUID } from 'node:crypto';
import type { ServiceStub } from '../../client/operator-client.js';
import { MultiBar, Presets } from 'cli-progress';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { systemClock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { assertModelName } from '../../common/ids.js';
import { formatDuration } from '../../common/units.js';
import { Rollout, RolloutAuditEntry, RolloutServiceService } from '../../common/proto/driftline/v1/rollouts.js';
import { durationMs, integer, repeated } from '../arguments.js';
import { withConnection } from '../context.js';
import { relativeTime, restoreTerminalOnSignal, type Output } from '../output.js';

const GATES_HELP = `Gates (repeat --gate; default: install-failure-rate<=0.2, error-rate-delta<=0.05, p95-latency-ratio<=1.5):
  install-failure-rate<=R   failed installs / decided installs in the new version's cohort
  error-rate<=R             inference error rate of the new version's cohort
  error-rate-delta<=D       new cohort's error rate minus the old version's
  p95-latency-ratio<=X      new cohort's p95 latency / the old version's
  p95-latency-ms<=MS        new cohort's p95 latency
  accuracy-delta>=D         accuracy difference where labels exist
  drift                     fail when the new version drifts
  none                      judge nothing (only with no other gate)
Too few devices or inferences make a gate inconclusive: the rollout pauses rather than passes.`;

function percents(value: string): number[] {
  const list = value.split(',').map((s) => Number(s.trim()));
  if (list.length === 0 || list.some((n) => !Number.isFinite(n) || n <= 0 || n > 100)) throw new InvalidArgumentError('expected percents such as 1,10,50,100');
  return list;
}

const DEFAULT_WAVES = [1, 10, 50, 100];
const DEFAULT_BAKE_MS = 600_000;

const requestIdOption = ['--request-id <id>', 'client request id: a retry with the same id is not applied twice (default: a new one)'] as const;

export function registerRollout(program: Command): void {
  const rollout = program.command('rollout').description('staged rollouts: waves, gates, automatic abort and rollback');

  rollout
    .command('start')
    .description('roll a model version out in waves that stop themselves when it is worse')
    .requiredOption('--model <name>', 'model name')
    .requiredOption('--version <n>', 'version to roll out', integer(1))
    .addOption(
      new Option('--waves <percents>', 'percent of the compatible targeted devices per wave, the last 100')
        .argParser(percents)
        .default(DEFAULT_WAVES, DEFAULT_WAVES.join(',')),
    )
    .addOption(
      new Option('--bake <duration>', 'how long each wave runs before its gates are judged, e.g. 30m')
        .argParser(durationMs)
        .default(DEFAULT_BAKE_MS, formatDuration(DEFAULT_BAKE_MS)),
    )
    .option(
      '--min-devices <n>',
      'smallest cohort of a wave; given here, a start with fewer compatible targets is refused (ROLLOUT_MIN_DEVICES_UNMET)',
      integer(1, 100_000),
      5,
    )
    .option('--target <selector>', "devices to target, e.g. 'profile=jetson-*,site=plant-3' (default: all)", '')
    .option('--gate <gate>', 'a gate such as p95-latency-ratio<=1.5 (repeatable; see below)', repeated)
    .option('--failure-limit <n>', 'failed evaluations tolerated per wave before aborting', integer(0, 100), 0)
    .option('--min-inferences <n>', 'inferences per cohort needed by latency and error gates (default: 50)', integer(1))
    .option('--interval <duration>', 'time between evaluations after a failed one (default: 1m)', durationMs)
    .option(...requestIdOption)
    .addHelpText('after', `\n${GATES_HELP}\n`)
    .action(
      (
        options: {
          model: string;
          version: number;
          waves: number[];
          bake: number;
          minDevices: number;
          target: string;
          gate?: string[];
          failureLimit: number;
          minInferences?: number;
          interval?: number;
          requestId?: string;
        },
        command: Command,
      ) =>
        withConnection(command, async (connection, output) => {
          assertModelName(options.model);
          // --min-devices above the targeted devices would make the first wave the whole target: no canary.
          // Given on the command line, the control plane refuses it before anything starts
          // (ROLLOUT_MIN_DEVICES_UNMET); the default only notes it (below).
          const explicitMinimum = command.getOptionValueSource('minDevices') === 'cli';
          const client = connection.api.service(RolloutServiceService);
          const r = await client.startRollout({
            model: options.model,
            version: options.version,
            wavePercents: options.waves,
            bakeSeconds: Math.round(options.bake / 1000),
            minDevices: options.minDevices,
            target: options.target,
            gates: options.gate ?? [],
            failureLimit: options.failureLimit,
            consecutiveErrorLimit: 0,
            minInferences: options.minInferences ?? 0,
            intervalSeconds: options.interval === undefined ? 0 : Math.max(1, Math.round(options.interval / 1000)),
            requireMinDevices: explicitMinimum,
            clientRequestId: options.requestId ?? randomUUID(),
          });
          output.result(Rollout.toJSON(r), () => {
            output.line(`started rollout ${r.id}: ${r.model}@v${r.version} to ${r.targetedDevices} device(s) in ${r.waves.length} wave(s)`);
            if (r.incompatible.length > 0) output.line(`${r.incompatible.length} incompatible device(s) left out (driftline rollout status ${r.id})`);
            if (!explicitMinimum && r.targetedDevices <= options.minDevices && r.waves.length > 1) {
              output.line(
                `note: ${r.targetedDevices} device(s) targeted, not more than --min-devices ${options.minDevices}: the first wave covers all of them`,
              );
            }
            output.line(`watch it: driftline rollout status ${r.id} --watch`);
          });
        }),
    );

  rollout
    .command('status')
    .description('waves, gates and devices per version of a rollout (default: the latest)')
    .argument('[id]', 'rollout id')
    .option(
      '--watch',
      'keep showing changes until the rollout ends: on a terminal a bar per wave, devices per version and gate verdicts; otherwise one line per change (JSON with --json)',
    )
    .action((id: string | undefined, options: { watch?: boolean }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(RolloutServiceService);
        const rolloutId = id ?? (await latest(client));
        if (!options.watch) {
          const r = await client.getRollout({ id: rolloutId });
          output.result(Rollout.toJSON(r), () => printStatus(output, r));
          return;
        }
        await watch(client, rolloutId, output);
      }),
    );

  rollout
    .command('list')
    .description('rollouts, newest first')
    .option('--active', 'only pending, progressing or paused rollouts')
    .option('--model <name>', 'only rollouts of this model')
    .action((options: { active?: boolean; model?: string }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(RolloutServiceService);
        const { rollouts } = await client.listRollouts({ activeOnly: Boolean(options.active), model: options.model ?? '' });
        output.result({ rollouts: rollouts.map((r) => Rollout.toJSON(r)) }, () => {
          const now = systemClock.now();
          output.table(
            ['ID', 'MODEL', 'VERSION', 'STATE', 'WAVE', 'TARGET', 'DEVICES', 'UPDATED', 'REASON'],
            rollouts.map((r) => [
              r.id,
              r.model,
              r.version,
              r.state,
              `${r.wave}/${r.waves.length}`,
              r.target || '(all)',
              r.targetedDevices,
              relativeTime(r.updatedAtMs, now),
              r.reason || '-',
            ]),
            options.active || options.model ? 'No rollouts found matching the filters' : 'No rollouts found',
          );
        });
      }),
    );

  rollout
    .command('history')
    .description('the audit log of a rollout: every transition and operator command')
    .argument('<id>', 'rollout id')
    .action((id: string, _options: unknown, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(RolloutServiceService);
        const { entries } = await client.getRolloutAudit({ id });
        output.result({ entries: entries.map((e) => RolloutAuditEntry.toJSON(e)) }, () => {
          output.table(
            ['TIME', 'ACTOR', 'ACTION', 'STATE', 'WAVE', 'REQUEST', 'REASON'],
            entries.map((e) => [
              new Date(e.atMs).toISOString(),
              e.actor,
              e.action,
              `${e.fromState} -> ${e.toState}`,
              e.wave,
              e.clientRequestId || '-',
              e.reason || '-',
            ]),
            'No audit entries found',
          );
        });
      }),
    );

  const commands = [
    ['pause', 'pauseRollout', 'stop moving to further waves (devices keep what they run)'],
    ['resume', 'resumeRollout', 'continue a paused rollout (its gates are judged again)'],
    ['abort', 'abortRollout', 'stop and roll every touched device back to its previous version'],
    ['promote', 'promoteRollout', 'skip the rest of the current wave: start the next one now (or finish)'],
  ] as const;
  for (const [name, method, description] of commands) {
    rollout
      .command(name)
      .description(description)
      .argument('<id>', 'rollout id')
      .option('--reason <text>', 'why, for the audit log', '')
      .option(...requestIdOption)
      .action((id: string, options: { reason: string; requestId?: string }, command: Command) =>
        withConnection(command, async (connection, output) => {
          const client = connection.api.service(RolloutServiceService);
          const r = await client[method]({ id, reason: options.reason, clientRequestId: options.requestId ?? randomUUID() });
          output.result(Rollout.toJSON(r), () =>
            output.line(`rollout ${r.id} is ${r.state} (wave ${r.wave}/${r.waves.length})${r.reason ? `: ${r.reason}` : ''}`),
          );
        }),
      );
  }
}

type RolloutStub = ServiceStub<typeof RolloutServiceService>;

async function latest(client: RolloutStub): Promise<string> {
  const { rollouts } = await client.listRollouts({ activeOnly: false, model: '' });
  const found = rollouts[0];
  if (!found) throw new DriftlineError('ROLLOUT_NOT_FOUND', 'there are no rollouts yet');
  return found.id;
}

function printStatus(output: Output, r: Rollout): void {
  output.line(`rollout ${r.id}: ${r.model}@v${r.version} ${r.state} (wave ${r.wave}/${r.waves.length})${r.reason ? ` - ${r.reason}` : ''}`);
  output.line(`target ${r.target || '(all)'}: ${r.targetedDevices} device(s), ${r.incompatible.length} incompatible; baseline v${r.baselineVersion}`);
  output.line('');
  output.table(
    ['WAVE', 'PERCENT', 'DEVICES', 'BAKE', 'STATUS'],
    r.waves.map((w, i) => [i + 1, `${w.percent}%`, w.devices, `${w.bakeSeconds}s`, w.status]),
  );
  output.line('');
  output.table(
    ['VERSION', 'DEVICES'],
    Object.entries(r.versions)
      .sort(([a], [b]) => Number(b) - Number(a))
      .map(([v, n]) => [v === '0' ? '(none)' : `v${v}`, n]),
  );
  if (r.lastEvaluation.length > 0) {
    output.line('');
    output.table(
      ['GATE', 'VERDICT', 'DETAIL'],
      r.lastEvaluation.map((g) => [g.gate, g.verdict, g.detail]),
    );
  }
  if (r.incompatible.length > 0) {
    output.line('');
    output.table(
      ['INCOMPATIBLE DEVICE', 'REASON'],
      r.incompatible.slice(0, 50).map((d) => [d.deviceId, d.reason]),
    );
  }
}

/** Streams the rollout until it ends: progress bars per wave on a terminal, one line (or JSON line) per change otherwise. */
async function watch(client: RolloutStub, id: string, output: Output): Promise<void> {
  const tty = Boolean(process.stderr.isTTY) && !output.json;
  const bars = tty
    ? new MultiBar(
        { stream: process.stderr, clearOnComplete: false, hideCursor: true, format: '{label} [{bar}] {value}/{total} {status}' },
        Presets.shades_classic,
      )
    : undefined;
  const waveBars: ReturnType<MultiBar['create']>[] = [];
  // Under the wave bars, two text lines: devices per version, and the last gate verdicts.
  let textLines: Array<ReturnType<MultiBar['create']>> | undefined;
  let last: Rollout | undefined;
  const release = bars ? restoreTerminalOnSignal(() => bars.stop()) : () => undefined;
  try {
    for await (const r of client.watchRollout({ id })) {
      last = r;
      if (output.json) {
        output.line(JSON.stringify(Rollout.toJSON(r)));
        continue;
      }
      if (!bars) {
        output.line(summaryLine(r));
        continue;
      }
      const onNew = r.versions[r.version] ?? 0;
      r.waves.forEach((w, i) => {
        const previous = i === 0 ? 0 : r.waves[i - 1]!.devices;
        const size = Math.max(1, w.devices - previous);
        const value = Math.min(size, Math.max(0, onNew - previous));
        const payload = { label: `wave ${i + 1} ${String(w.percent).padStart(3)}%`, status: w.status };
        if (!waveBars[i]) waveBars[i] = bars.create(size, value, payload);
        else waveBars[i]!.update(value, payload);
      });
      const texts = [`${r.state}; devices per version: ${versionsText(r)}`, `gates: ${gatesText(r)}`];
      textLines ??= texts.map((text) => bars.create(1, 0, { text }, { format: '{text}' }));
      textLines.forEach((line, i) => line.update(0, { text: texts[i] }));
    }
  } finally {
    release();
  }
  bars?.stop();
  if (last && !output.json) {
    output.line('');
    printStatus(output, last);
  }
}

/** Devices per version, newest first: `v2:3 v1:5` (`(none)`: no version of the model yet). */
const versionsText = (r: Rollout): string =>
  Object.entries(r.versions)
    .sort(([a], [b]) => Number(b) - Number(a))
    .map(([v, n]) => `${v === '0' ? '(none)' : `v${v}`}:${n}`)
    .join(' ') || '-';

/** The last evaluation's verdicts: `p95-latency-ratio<=1.5 pass, error-rate-delta<=0.05 inconclusive`; "not judged yet" before the first. */
const gatesText = (r: Rollout): string => r.lastEvaluation.map((g) => `${g.gate} ${g.verdict}`).join(', ') || 'not judged yet';

/** One line of `rollout status --watch` off a terminal: state, wave, devices per version, gates. */
export function summaryLine(r: Rollout, nowMs = systemClock.now()): string {
  return `${new Date(nowMs).toISOString()} ${r.id} ${r.state} wave ${r.wave}/${r.waves.length} versions ${versionsText(r)} gates ${gatesText(r)}${r.reason ? ` - ${r.reason}` : ''}`;
}
