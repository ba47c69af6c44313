import { type Command, Option } from 'commander';
import { systemClock } from '../../common/clock.js';
import { DeviceTelemetry, RollupBucket, RollupGroupBy, TelemetryRollup, TelemetryServiceService } from '../../common/proto/driftline/v1/telemetry.js';
import { durationMs, integer, sinceMs } from '../arguments.js';
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
        const client = connection.api.service(TelemetryServiceService);
        const now = systemClock.now();
        const summary = await client.getSummary({
          deviceId: options.device ?? '',
          sinceMs: sinceMs(options.since, now),
        });
        const rows = summary.devices.map(summaryRow);
        output.result(
          { devices: rows, recordsStored: summary.recordsStored, duplicatesDropped: summary.duplicatesDropped, rejectedBatches: summary.rejectedBatches },
          () => {
            const text = (v: number | null, unit = ''): string | number => (v === null ? '-' : unit ? `${v.toFixed(1)} ${unit}` : v);
            output.table(
              ['DEVICE', 'RECORDS', 'INFERENCES', 'ERRORS', 'LATENCY MEAN', 'LATENCY MAX', 'EVENTS', 'LAST RECORD', 'BUFFER', 'DROPPED', 'REFUSED'],
              rows.map((r) => [
                r.deviceId,
                r.records,
                r.inferences,
                r.inferenceErrors,
                text(r.latencyMeanMs, 'ms'),
                text(r.latencyMaxMs, 'ms'),
                r.events,
                r.lastRecordMs === null ? '-' : relativeTime(r.lastRecordMs, now),
                r.bufferDepth,
                r.droppedRecords,
                r.refusals.map((x) => `${x.code} ${x.count}`).join(', ') || '-',
              ]),
              options.device ? `No telemetry found for device ${options.device}` : 'No telemetry found',
            );
            output.line(
              `records stored ${summary.recordsStored}, duplicates dropped ${summary.duplicatesDropped}, rejected batches ${summary.rejectedBatches}`,
            );
          },
        );
      }),
    );

  telemetry
    .command('rollups')
    .description('telemetry sums per time bucket, by device, model version, cohort (device label "cohort") or the whole fleet')
    .option('--model <name>', 'only this model')
    .option('--version <n>', 'only this version of --model', integer(1))
    .option('--device <id>', 'only this device')
    .option('--selector <labels>', 'only devices whose labels match, e.g. site=plant-3,cohort=a')
    .addOption(new Option('--by <grouping>', 'one row per bucket and').choices(Object.keys(GROUP_BY)).default('fleet'))
    .addOption(new Option('--bucket <size>', 'bucket size').choices(Object.keys(BUCKET)).default('1m'))
    .option('--since <duration>', "only buckets from this long ago on, e.g. 1h (default: all the server's retention keeps)", durationMs)
    .option('--limit <n>', "at most this many rows, the newest (default: the server's, 1000)", integer(1))
    .action(
      (
        options: {
          model?: string;
          version?: number;
          device?: string;
          selector?: string;
          by: keyof typeof GROUP_BY;
          bucket: keyof typeof BUCKET;
          since?: number;
          limit?: number;
        },
        command: Command,
      ) =>
        withConnection(command, async (connection, output) => {
          const client = connection.api.service(TelemetryServiceService);
          const result = await client.getRollups({
            model: options.model ?? '',
            version: options.version ?? 0,
            deviceId: options.device ?? '',
            selector: options.selector ?? '',
            groupBy: GROUP_BY[options.by],
            bucket: BUCKET[options.bucket],
            sinceMs: sinceMs(options.since),
            limit: options.limit ?? 0,
          });
          output.result({ rows: result.rows.map((r) => TelemetryRollup.toJSON(r)), truncated: result.truncated }, () => {
            output.table(
              ['BUCKET', KEY_HEADING[options.by], 'RECORDS', 'INFERENCES', 'ERRORS', 'ERROR RATE', 'LATENCY MEAN', 'LATENCY MAX', 'EVENTS'],
              result.rows.map((r) => [
                `${new Date(r.bucketStartMs).toISOString().slice(0, 16)}Z`,
                r.key || (options.by === 'cohort' ? '(none)' : '(no model)'),
                r.records,
                r.inferences,
                r.errors,
                `${(r.errorRate * 100).toFixed(1)}%`,
                `${r.meanLatencyMs.toFixed(1)} ms`,
                `${r.maxLatencyMs.toFixed(1)} ms`,
                r.events,
              ]),
              'No telemetry rollups found',
            );
            if (result.truncated) output.line('(older rows left out: raise --limit or narrow --since)');
          });
        }),
    );
}

/**
 * One device's line of `telemetry summary`, the same fields in the table and in --json: null
 * (shown `-`) where there is no data, e.g. no latency before the first inference.
 */
export function summaryRow(d: DeviceTelemetry) {
  return {
    deviceId: d.deviceId,
    records: d.records,
    inferences: d.inferences,
    inferenceErrors: d.inferenceErrors,
    latencyMeanMs: d.inferences > 0 ? d.latencyMeanMs : null,
    latencyMaxMs: d.inferences > 0 ? d.latencyMaxMs : null,
    events: d.events,
    lastRecordMs: d.lastRecordMs > 0 ? d.lastRecordMs : null,
    bufferDepth: d.bufferDepth,
    droppedRecords: d.droppedRecords,
    refusals: d.refusals.map((r) => ({ code: r.code, count: r.count, lastMs: r.lastMs })),
  };
}

const GROUP_BY = {
  device: RollupGroupBy.ROLLUP_GROUP_BY_DEVICE,
  version: RollupGroupBy.ROLLUP_GROUP_BY_MODEL_VERSION,
  cohort: RollupGroupBy.ROLLUP_GROUP_BY_COHORT,
  fleet: RollupGroupBy.ROLLUP_GROUP_BY_FLEET,
} as const;

const KEY_HEADING: Record<keyof typeof GROUP_BY, string> = { device: 'DEVICE', version: 'MODEL VERSION', cohort: 'COHORT', fleet: 'FLEET' };

const BUCKET = { '1m': RollupBucket.ROLLUP_BUCKET_ONE_MINUTE, '1h': RollupBucket.ROLLUP_BUCKET_ONE_HOUR } as const;
