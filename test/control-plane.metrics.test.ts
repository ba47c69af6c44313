import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { controlPlaneMetrics } from '../control-plane/metrics.js';

describe('control plane metrics', () => {
  it('reads ingest, broker, drift and fleet figures when scraped, without starting a control plane', async () => {
    const clock = new ManualClock(1_000_000);
    const ingest = {
      stats: { batches: 3, recordsStored: 42, duplicates: 1, rejectedBatches: 0, inflatedBytes: 0, lagMs: 2_500 },
      refusedByCode: new Map([['PAYLOAD_TOO_LARGE', 2]]),
    };
    const fleet = {
      list: async () => [
        { id: 'edge-1', lastSeenMs: 990_000 },
        { id: 'edge-2', lastSeenMs: 100_000 },
        { id: 'edge-3', lastSeenMs: 0 },
      ],
    };
    const metrics = controlPlaneMetrics({ ingest, drift: { rejectedSketches: 4 }, fleet, clock, onlineWindowMs: 90_000 });
    const text = await metrics.metrics();
    expect(text).toContain('driftline_ingest_records_total 42');
    expect(text).toContain('driftline_ingest_lag_seconds 2.5');
    expect(text).toContain('driftline_ingest_refused_messages_total{code="PAYLOAD_TOO_LARGE"} 2');
    // No device link counts given (an external broker refuses on its own): they read 0.
    expect(text).toContain('driftline_broker_refused_connects_total 0');
    expect(text).toContain('driftline_drift_sketches_rejected_total 4');
    expect(text).toContain('driftline_device_last_seen_seconds{device="edge-1"} 10');
    expect(text).not.toContain('device="edge-3"');
    expect(text).toContain('driftline_devices_online 1');
  });

  it("reads the device link's refusal counts when it has any", async () => {
    const ingest = { stats: { batches: 0, recordsStored: 0, duplicates: 0, rejectedBatches: 0, inflatedBytes: 0, lagMs: 0 }, refusedByCode: new Map() };
    const stats = { refusedConnects: 7, refusedPublishes: 2, refusedPackets: 1, refusedConnections: 0, connectTimeouts: 3, pendingConnections: 5 };
    const metrics = controlPlaneMetrics({
      ingest,
      link: { stats },
      drift: { rejectedSketches: 0 },
      fleet: { list: async () => [] },
      clock: new ManualClock(0),
      onlineWindowMs: 1,
    });
    const text = await metrics.metrics();
    expect(text).toContain('driftline_broker_refused_connects_total 7');
    expect(text).toContain('driftline_broker_connect_timeouts_total 3');
    expect(text).toContain('driftline_broker_pending_connections 5');
  });
});
