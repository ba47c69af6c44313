import { Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Clock } from '../common/clock.js';
import type { DeviceLinkStats } from './device-link/ports.js';
import type { SampleStats } from '../common/proto/driftline/v1/datasets.js';

/** What the control plane's Prometheus metrics read, when scraped. */
export interface ControlPlaneMetricSources {
  ingest: {
    stats: { batches: number; recordsStored: number; duplicates: number; rejectedBatches: number; inflatedBytes: number; lagMs: number };
    refusedByCode: Iterable<[string, number]>;
  };
  /** The device link's refusal counts (an external broker's adapter reports 0: the broker refuses, not us). */
  link?: { stats: DeviceLinkStats };
  drift: { rejectedSketches: number };
  /** Captured samples' counts (the sample store). */
  samples?: { stats(): Promise<SampleStats> };
  fleet: { list(): Promise<Iterable<{ id: string; lastSeenMs: number }>> };
  clock: Clock;
  /** A device counts as online when it was seen within this window. */
  onlineWindowMs: number;
}

/** The control plane's metrics registry (served at /metrics by the artifact server). */
export function controlPlaneMetrics(sources: ControlPlaneMetricSources): Registry {
  const { ingest, link, drift, fleet, clock, samples } = sources;
  const metrics = new Registry();
  collectDefaultMetrics({ register: metrics });
  const gauge = (name: string, help: string, read: () => number): void => {
    new Gauge({
      name,
      help,
      registers: [metrics],
      collect() {
        this.set(read());
      },
    });
  };
  gauge('driftline_ingest_batches_total', 'Telemetry batches committed', () => ingest.stats.batches);
  gauge('driftline_ingest_records_total', 'Telemetry records stored', () => ingest.stats.recordsStored);
  gauge('driftline_ingest_duplicates_total', 'Resent telemetry records dropped as duplicates', () => ingest.stats.duplicates);
  gauge('driftline_ingest_rejected_batches_total', 'Telemetry batches rejected as malformed', () => ingest.stats.rejectedBatches);
  gauge('driftline_ingest_inflated_bytes_total', 'Bytes inflated from deflated telemetry batches, refused ones included', () => ingest.stats.inflatedBytes);
  // By code only: the counts per device are in the telemetry summary (`driftline telemetry summary`).
  new Gauge({
    name: 'driftline_ingest_refused_messages_total',
    help: 'Device messages refused, by error code (DEVICE_RATE_LIMITED, PAYLOAD_TOO_LARGE, PAYLOAD_TOO_MANY_ENTRIES, PAYLOAD_MALFORMED)',
    labelNames: ['code'],
    registers: [metrics],
    collect() {
      this.reset();
      for (const [code, count] of ingest.refusedByCode) this.set({ code }, count);
    },
  });
  gauge('driftline_broker_refused_connects_total', 'MQTT connections refused', () => link?.stats.refusedConnects ?? 0);
  gauge('driftline_broker_refused_publishes_total', 'MQTT publishes refused by the device ACL', () => link?.stats.refusedPublishes ?? 0);
  gauge(
    'driftline_broker_refused_packets_total',
    'MQTT packets refused on their fixed header (too large before or after login)',
    () => link?.stats.refusedPackets ?? 0,
  );
  gauge(
    'driftline_broker_refused_connections_total',
    'MQTT connections closed on arrival: too many waiting to log in',
    () => link?.stats.refusedConnections ?? 0,
  );
  gauge(
    'driftline_broker_connect_timeouts_total',
    'MQTT connections closed for not logging in within mqtt.connectTimeout',
    () => link?.stats.connectTimeouts ?? 0,
  );
  gauge('driftline_broker_pending_connections', 'MQTT connections accepted and not yet logged in', () => link?.stats.pendingConnections ?? 0);
  gauge('driftline_ingest_lag_seconds', 'Age of the oldest record in the last committed batch (device clock corrected)', () => ingest.stats.lagMs / 1000);
  gauge('driftline_drift_sketches_rejected_total', 'Drift sketches stored but left out of the rollups', () => drift.rejectedSketches);
  if (samples) {
    // One read of the sample store per scrape, shared by the sample metrics below.
    let scrape: Promise<SampleStats> | undefined;
    const stats = (): Promise<SampleStats> => (scrape ??= samples.stats().finally(() => setImmediate(() => (scrape = undefined))));
    const sampleGauge = (name: string, help: string, labelNames: string[], set: (g: Gauge, s: SampleStats) => void): void => {
      new Gauge({
        name,
        help,
        labelNames,
        registers: [metrics],
        async collect() {
          const s = await stats();
          this.reset();
          set(this, s);
        },
      });
    };
    sampleGauge('driftline_samples_kept', 'Captured samples kept, by model', ['model'], (g, s) => s.models.forEach((m) => g.set({ model: m.model }, m.rows)));
    sampleGauge('driftline_samples_bytes', 'Bytes the kept samples take (samples.maxBytes is their budget)', [], (g, s) => g.set(s.bytes));
    sampleGauge(
      'driftline_samples_dropped_total',
      'Captured samples dropped, by reason: retention (samples.maxAge) or budget (samples.maxBytes)',
      ['reason'],
      (g, s) => {
        g.set({ reason: 'retention' }, s.droppedRetention);
        g.set({ reason: 'budget' }, s.droppedBudget);
      },
    );
    sampleGauge('driftline_samples_refused_total', 'Captured samples refused at ingest, by error code', ['code'], (g, s) => {
      const byCode = new Map<string, number>();
      for (const m of s.models) for (const [code, n] of Object.entries(m.refused)) byCode.set(code, (byCode.get(code) ?? 0) + n);
      for (const [code, n] of byCode) g.set({ code }, n);
    });
  }
  new Gauge({
    name: 'driftline_device_last_seen_seconds',
    help: 'Seconds since each device was last seen',
    labelNames: ['device'],
    registers: [metrics],
    async collect() {
      const devices = await fleet.list();
      this.reset();
      for (const d of devices) if (d.lastSeenMs > 0) this.set({ device: d.id }, Math.max(0, (clock.now() - d.lastSeenMs) / 1000));
    },
  });
  new Gauge({
    name: 'driftline_devices_online',
    help: 'Devices seen within the online window',
    registers: [metrics],
    async collect() {
      const since = clock.now() - sources.onlineWindowMs;
      let online = 0;
      for (const d of await fleet.list()) if (d.lastSeenMs >= since) online++;
      this.set(online);
    },
  });
  return metrics;
}
