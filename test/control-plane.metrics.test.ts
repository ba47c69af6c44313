import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { controlPlaneMetrics } from '../control-plane/metrics.js';

describe('control plane metrics', () => {
  it('reads ingest, broker, drift and fleet figures when scraped, without starting a control plane', async () => {
    const clock = new ManualClock(1_000_000);
    const ingest = { stats: { batches: 3, recordsStored: 42, duplicates: 1, rejectedBatches: 0, inflatedBytes: 0, lagMs: 2_500 }, refusedByCode: new Map([['PAYLOAD_TOO_LARGE', 2]]) };
    const fleet = { list: () => [{ id: 'edge-1', lastSeenMs: 990_000 }, { id: 'edge-2', lastSeenMs: 100_000 }, { id: 'edge-3', lastSeenMs: 0 }] };
    const metrics = controlPlaneMetrics({ ingest, drift: { rejectedSketches: 4 }, fleet, clock, onlineWindowMs: 90_000 });
    const text = await metrics.metrics();
    expect(text).toContain('driftline_ingest_records_total 42');
    expect(text).toContain('driftline_ingest_lag_seconds 2.5');
    expect(text).toContain('driftline_ingest_refused_messages_total{code="PAYLOAD_TOO_LARGE"} 2');
    // An external broker: the embedded broker's counts read 0.
    expect(text).toContain('driftline_broker_refused_connects_total 0');
    expect(text).toContain('driftline_drift_sketches_rejected_total 4');
    expect(text).toContain('driftline_device_last_seen_seconds{device="edge-1"} 10');
    expect(text).not.toContain('device="edge-3"');
    expect(text).toContain('driftline_devices_online 1');
  });
});
