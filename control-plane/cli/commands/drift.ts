import type { Command } from 'commander';
import { systemClock } from '../../../common/clock.js';
import { DriftServiceClient, DriftStatus } from '../../../common/proto/driftline/v1/drift.js';
import { durationMs, integer } from '../arguments.js';
import { withConnection } from '../context.js';

export function registerDrift(program: Command): void {
  const drift = program.command('drift').description('fleet drift of a model, from the sketches devices send');

  drift
    .command('show')
    .description('drift status per model version and cohort (device label "cohort"), with per-feature statistics')
    .requiredOption('--model <name>', 'model name')
    .option('--version <n>', 'only this version (default: every version with data)', integer(1))
    .option('--since <duration>', 'window, e.g. 15m or 24h (default: the server\'s drift.window)', durationMs)
    .option('--features', 'print every feature\'s statistics, not only the drifted ones')
    .action((options: { model: string; version?: number; since?: number; features?: boolean }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.client(DriftServiceClient);
        const { statuses } = await connection.call(client, 'getDriftStatus', {
          model: options.model,
          version: options.version ?? 0,
          sinceMs: options.since === undefined ? 0 : systemClock.now() - options.since,
        });
        output.result({ statuses: statuses.map((s) => DriftStatus.toJSON(s)) }, () => {
          output.table(
            ['VERSION', 'COHORT', 'STATUS', 'DEVICES', 'ROWS', 'DRIFTED', 'MAX PSI', 'PREDICTIONS PSI', 'LATENCY P95', 'ERRORS'],
            statuses.map((s) => [
              s.version,
              s.cohort || '(fleet)',
              s.status,
              s.devices,
              s.rows,
              `${Math.round(s.driftedShare * 100)}%`,
              s.features.length ? Math.max(...s.features.map((f) => f.psi)).toFixed(3) : '-',
              s.predictions ? s.predictions.psi.toFixed(3) : '-',
              `${s.latencyP95Ms.toFixed(1)} ms`,
              `${(s.errorRate * 100).toFixed(1)}%`,
            ]),
          );
          for (const s of statuses) {
            const shown = s.features.filter((f) => options.features || f.drifted);
            if (shown.length === 0) continue;
            output.line(`\n${options.model}@v${s.version} ${s.cohort || '(fleet)'}:`);
            output.table(
              ['FEATURE', 'STATUS', 'PSI', 'JS', 'HELLINGER', 'KS', 'WASSERSTEIN', 'P (BH)', 'DRIFTED'],
              shown.map((f) => [f.name, f.status, f.psi.toFixed(3), f.jensenShannon.toFixed(3), f.hellinger.toFixed(3), f.ks.toFixed(3), f.wasserstein.toPrecision(3), f.pAdjusted.toExponential(1), f.drifted ? 'yes' : 'no']),
            );
          }
        });
      }),
    );
}
