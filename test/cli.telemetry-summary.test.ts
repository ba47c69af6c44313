import { describe, expect, it } from 'vitest';
import { summaryRow } from '../cli/commands/telemetry.js';
import type { DeviceTelemetry } from '../common/proto/driftline/v1/telemetry.js';

const device = (changes: Partial<DeviceTelemetry>): DeviceTelemetry => ({
  deviceId: 'edge-1',
  records: 0,
  inferences: 0,
  inferenceErrors: 0,
  latencyMeanMs: 0,
  latencyMaxMs: 0,
  events: 0,
  lastRecordMs: 0,
  bufferDepth: 0,
  droppedRecords: 0,
  refusals: [],
  ...changes,
});

describe('telemetry summary - one row for the table and for --json', () => {
  it('has no latency and no last record (null, shown -) for a device that only had refusals', () => {
    const row = summaryRow(device({ refusals: [{ code: 'PAYLOAD_MALFORMED', count: 2, lastMs: 5 }] }));
    expect(row).toEqual({
      deviceId: 'edge-1',
      records: 0,
      inferences: 0,
      inferenceErrors: 0,
      latencyMeanMs: null,
      latencyMaxMs: null,
      events: 0,
      lastRecordMs: null,
      bufferDepth: 0,
      droppedRecords: 0,
      refusals: [{ code: 'PAYLOAD_MALFORMED', count: 2, lastMs: 5 }],
    });
  });

  it('carries every field, an empty refusal list included, for a device with data', () => {
    const row = summaryRow(device({ records: 3, inferences: 3, latencyMeanMs: 1.5, latencyMaxMs: 2, lastRecordMs: 1000 }));
    expect(row).toMatchObject({ latencyMeanMs: 1.5, latencyMaxMs: 2, lastRecordMs: 1000, refusals: [] });
    // One JSON field per table column (DEVICE ... REFUSED).
    expect(Object.keys(row)).toHaveLength(11);
  });
});
