import type { Command } from 'commander';
import { systemClock } from '../../../common/clock.js';
import { DeviceTelemetry, TelemetryServiceClient, TelemetrySummary } from '../../../common/proto/driftline/v1/telemetry.js';
import { durationMs } from '../arguments.js';
import { withConnection } from '../context.js';
import { relativeTime } from '../output.js';

export function registerTelemetry(program: Command): void {
  const telemetry = program.command('telemetry').description('what the fleet has reported');

  telemetry
    .command('summary')
    .description('per-device totals of stored telemetry')
    .option('--device <id>', 'only this device')
    .option('--since <duration>', 'only records from this long ago on, e.g. 10m', durationMs)
    .action((options: { device?: string; since?: number }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.client(TelemetryServiceClient);
        const now = systemClock.now();
        const summary = await connection.call(client, 'getSummary', {
          deviceId: options.device ?? '',
          sinceMs: options.since === undefined ? 0 : now - options.since,
        });
        output.result({ ...(TelemetrySummary.toJSON(summary) as object), devices: summary.devices.map((d) => DeviceTelemetry.toJSON(d)) }, () => {
          output.table(
            ['DEVICE', 'RECORDS', 'INFERENCES', 'ERRORS', 'LATENCY MEAN', 'LATENCY MAX', 'EVENTS', 'LAST RECORD', 'BUFFER', 'DROPPED'],
            summary.devices.map((d) => [
              d.deviceId,
              d.records,
              d.inferences,
              d.inferenceErrors,
              `${d.latencyMeanMs.toFixed(1)} ms`,
              `${d.latencyMaxMs.toFixed(1)} ms`,
              d.events,
              relativeTime(d.lastRecordMs, now),
              d.bufferDepth,
              d.droppedRecords,
            ]),
          );
          output.line(`records stored ${summary.recordsStored}, duplicates dropped ${summary.duplicatesDropped}, rejected batches ${summary.rejectedBatches}`);
        });
      }),
    );
}
