import type { Command } from 'commander';
import { DriftEvent, DriftServiceService, DriftStatus } from '../../common/proto/driftline/v1/drift.js';
import { REFERENCE_METADATA_KEY } from '../../common/drift/reference.js';
import { ModelServiceService } from '../../common/proto/driftline/v1/models.js';
import { formatDuration } from '../../common/units.js';
import { durationMs, integer, sinceMs } from '../arguments.js';
import type { Connection } from '../connection.js';
import { withConnection } from '../context.js';

/** How a cohort is shown; `--cohort "(fleet)"` selects the whole-fleet events. */
const FLEET = '(fleet)';
const percent = (share: number): string => `${Math.round(share * 100)}%`;
/** A p-value for the table; below 1e-300 (which doubles cannot tell from 0) it reads `< 1e-300`. */
export const pValueText = (p: number): string => (p < 1e-300 ? '< 1e-300' : p.toExponential(1));

/** An event as a row of `drift events`, and as the line `drift events --watch` prints. */
const EVENT_COLUMNS = ['ID', 'AT', 'MODEL', 'VERSION', 'COHORT', 'FROM', 'TO', 'DRIFTED', 'MAX PSI', 'ROWS', 'DEVICES', 'DRIFTED FEATURES'];
const eventRow = (e: DriftEvent): Array<string | number> => [
  e.id,
  new Date(e.atMs).toISOString(),
  e.model,
  e.version,
  e.cohort || FLEET,
  e.previousStatus,
  e.status,
  percent(e.driftedShare),
  e.maxPsi.toFixed(3),
  e.rows,
  e.devices,
  e.driftedFeatures.join(',') || '-',
];
const eventLine = (e: DriftEvent): string =>
  `${new Date(e.atMs).toISOString()} #${e.id} ${e.model}@v${e.version} ${e.cohort || FLEET} ${e.previousStatus} -> ${e.status} drifted ${percent(e.driftedShare)} max psi ${e.maxPsi.toFixed(3)}${e.driftedFeatures.length ? ` (${e.driftedFeatures.join(', ')})` : ''}`;

/** What a status without a verdict means, in words. */
const STATUS_NOTES: Record<string, string> = {
  no_reference: 'no drift reference for this version (push it with --reference data.csv)',
  no_data: 'too few rows in the window for a verdict (widen --since, or wait for more traffic)',
};

/** Why `drift show` has nothing to show: no version with a reference, or no sketches in the window. */
async function whyNoDrift(connection: Connection, options: { model: string; version?: number; since?: number }): Promise<string> {
  const model = await connection.api.service(ModelServiceService).getModel({ name: options.model });
  const versions = model.versions.filter((v) => options.version === undefined || v.version === options.version);
  const what = options.version === undefined ? options.model : `${options.model}@v${options.version}`;
  if (versions.length === 0) return `no drift data for ${what}: there is no such version`;
  if (!versions.some((v) => v.metadata[REFERENCE_METADATA_KEY])) {
    return `no drift data for ${what}: no version has a drift reference to measure against (push one with \`driftline models push ... --reference data.csv\`)`;
  }
  const window = options.since === undefined ? "the server's drift window" : `the last ${formatDuration(options.since)}`;
  return `no drift data for ${what}: no device sent drift sketches in ${window} (is a version with a reference deployed and serving traffic? widen --since to look further back)`;
}

export function registerDrift(program: Command): void {
  const drift = program.command('drift').description('fleet drift of a model, from the sketches devices send');

  drift
    .command('show')
    .description('drift status per model version and cohort (device label "cohort"), with per-feature statistics')
    .requiredOption('--model <name>', 'model name')
    .option('--version <n>', 'only this version (default: every version with data)', integer(1))
    .option('--since <duration>', "window, e.g. 15m or 24h (default: the server's drift.window)", durationMs)
    .option('--features', "print every feature's statistics, not only the drifted ones")
    .action((options: { model: string; version?: number; since?: number; features?: boolean }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(DriftServiceService);
        const { statuses } = await client.getDriftStatus({
          model: options.model,
          version: options.version ?? 0,
          sinceMs: sinceMs(options.since),
        });
        const note = statuses.length ? undefined : await whyNoDrift(connection, options);
        output.result({ statuses: statuses.map((s) => DriftStatus.toJSON(s)), ...(note ? { note } : {}) }, () => {
          if (note) {
            output.line(note);
            return;
          }
          output.table(
            ['VERSION', 'COHORT', 'STATUS', 'DEVICES', 'ROWS', 'DRIFTED', 'MAX PSI', 'PREDICTIONS PSI', 'LATENCY P95', 'ERRORS'],
            statuses.map((s) => [
              s.version,
              s.cohort || FLEET,
              s.status,
              s.devices,
              s.rows,
              percent(s.driftedShare),
              s.features.length ? Math.max(...s.features.map((f) => f.psi)).toFixed(3) : '-',
              s.predictions ? s.predictions.psi.toFixed(3) : '-',
              `${s.latencyP95Ms.toFixed(1)} ms`,
              `${(s.errorRate * 100).toFixed(1)}%`,
            ]),
          );
          for (const s of statuses) {
            if (s.status in STATUS_NOTES) output.line(`${options.model}@v${s.version} ${s.cohort || FLEET}: ${STATUS_NOTES[s.status]}`);
          }
          for (const s of statuses) {
            const shown = s.features.filter((f) => options.features || f.drifted || f.status === 'below_floor');
            if (shown.length === 0) continue;
            output.line(`\n${options.model}@v${s.version} ${s.cohort || FLEET}: ${s.status} (${s.reason})`);
            output.table(
              ['FEATURE', 'STATUS', 'PSI', 'JS', 'HELLINGER', 'KS', 'WASSERSTEIN', 'P (BH)', 'DRIFTED'],
              shown.map((f) => [
                f.name,
                f.status,
                f.psi.toFixed(3),
                f.jensenShannon.toFixed(3),
                f.hellinger.toFixed(3),
                f.ks.toFixed(3),
                f.wasserstein.toPrecision(3),
                pValueText(f.pAdjusted),
                f.drifted ? 'yes' : 'no',
              ]),
            );
          }
        });
      }),
    );

  drift
    .command('events')
    .description('recorded changes of drift status per model version and cohort (ok, warn, alert, no_data), oldest first')
    .option('--model <name>', 'only this model')
    .option('--version <n>', 'only this version (needs --model)', integer(1))
    .option('--cohort <label>', `only this cohort ("${FLEET}" for the whole fleet)`)
    .option('--since <duration>', 'only events in this window, e.g. 24h', durationMs)
    .option('--after-id <id>', 'only events after this id (to resume)', integer(0))
    .option('--limit <n>', "at most this many events (default: the server's, 1000)", integer(1, 10_000))
    .option('--watch', 'after the recorded events, keep printing new ones until interrupted (one JSON line each with --json)')
    .action(
      (options: { model?: string; version?: number; cohort?: string; since?: number; afterId?: number; limit?: number; watch?: boolean }, command: Command) =>
        withConnection(command, async (connection, output) => {
          const client = connection.api.service(DriftServiceService);
          const request = {
            model: options.model ?? '',
            version: options.version ?? 0,
            cohort: options.cohort === undefined ? undefined : options.cohort === FLEET ? '' : options.cohort,
            sinceMs: sinceMs(options.since),
            afterId: options.afterId ?? 0,
            limit: options.limit ?? 0,
          };
          if (!options.watch) {
            const { events } = await client.listDriftEvents(request);
            output.result({ events: events.map((e) => DriftEvent.toJSON(e)) }, () =>
              output.table(EVENT_COLUMNS, events.map(eventRow), 'No drift events found'),
            );
            return;
          }
          for await (const e of client.watchDriftEvents(request)) output.line(output.json ? JSON.stringify(DriftEvent.toJSON(e)) : eventLine(e));
        }),
    );
}
