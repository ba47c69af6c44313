/**
 * npm run bench:attack-ingest [-- --batches N --records R --junk J --legit L]: what one
 * enrolled device can do to the control plane's ingest. A real control plane (`serve`'s
 * composition root, default configuration) runs in a child process; an attacker device,
 * enrolled through the gRPC API, sends N deflated batches of R empty two-byte records
 * (issue 9: 64 KB on the wire, 63 MiB inflated, 33 million records) and J junk messages,
 * while a legitimate device sends L batches of 10 records and `/healthz` on the HTTP
 * listener is polled back to back. The baseline is the same poll before the attack, in the
 * same run. Prints the control plane's RSS (before, peak, after), /healthz latency, how many
 * attack messages were refused, and how many of the legitimate records were stored, as
 * one JSON line last.
 */
import { fork } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { deflateSync } from 'node:zlib';
import { credentials } from '@grpc/grpc-js';
import type { MqttClient } from 'mqtt';
import { Outcome, Stream, TelemetryAck, TelemetryBatch, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { EnrollmentServiceClient, EnrollRequest, type EnrollResponse } from '../common/proto/driftline/v1/fleet.js';
import type { TelemetrySummary } from '../common/proto/driftline/v1/telemetry.js';
import { downTopic, upTopic } from '../common/device-protocol/topics.js';
import { fleetApi } from '../test/helpers/fleet-api.js';
import { rpc } from '../test/helpers/grpc-calls.js';
import { connectClient } from '../test/helpers/mqtt.js';

const { values: args } = parseArgs({
  options: {
    batches: { type: 'string', default: '5' },
    records: { type: 'string', default: String(33_000_000) },
    junk: { type: 'string', default: '2000' },
    legit: { type: 'string', default: '50' },
  },
});
const BATCHES = Number(args.batches);
const EMPTY_RECORDS = Number(args.records);
const JUNK = Number(args.junk);
const LEGIT_BATCHES = Number(args.legit);
const LEGIT_RECORDS_PER_BATCH = 10;
const IDLE_POLL_MS = 2000;
/** Polls discarded before the baseline is taken (connection set-up, JIT warm-up). */
const WARMUP_POLLS = 20;

const log = (line: string): void => void process.stderr.write(`${line}\n`);
const mb = (kib: number): number => Math.round(kib / 1024);

/** VmRSS and VmHWM (peak) of a process, in KiB, read from /proc: works while its event loop is blocked. */
function memory(pid: number): { rssKib: number; peakKib: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { rssKib: field('VmRSS'), peakKib: field('VmHWM') };
}

const percentile = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
const round = (n: number): number => Math.round(n * 10) / 10;

const dir = mkdtempSync(join(tmpdir(), 'driftline-bench-attack-'));
const child = fork(new URL('./attack-ingest-control-plane.ts', import.meta.url).pathname, [join(dir, 'cp')], {
  stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
});
const clients: MqttClient[] = [];
try {
  const started = await new Promise<{ addresses: { grpc: string; mqtt: string; http: string }; adminTokenFile: string }>((resolve, reject) => {
    child.once('message', (m) => resolve(m as never));
    child.once('exit', (code) => reject(new Error(`control plane exited with ${code}`)));
  });
  const { addresses } = started;
  const api = fleetApi(addresses.grpc, started.adminTokenFile);
  const enrollment = new EnrollmentServiceClient(addresses.grpc, credentials.createInsecure());
  const enroll = async (id: string): Promise<{ client: MqttClient; acks: TelemetryAck[] }> => {
    const token = await api.createEnrollmentToken(id);
    const credential = await rpc<EnrollResponse>((cb) =>
      enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId: id, firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'bench' }), cb),
    );
    const client = await connectClient(addresses.mqtt, { clientId: id, username: credential.mqttUsername, password: credential.mqttPassword, keepalive: 600 });
    clients.push(client);
    const acks: TelemetryAck[] = [];
    client.on('message', (topic, payload) => {
      if (topic === downTopic(id, 'ack')) acks.push(TelemetryAck.decode(payload));
    });
    await client.subscribeAsync(downTopic(id, 'ack'), { qos: 1 });
    return { client, acks };
  };
  const attacker = await enroll('bench-attacker');
  const legit = await enroll('bench-legit');

  let polling = true;
  const latencies: number[] = [];
  let healthzErrors = 0;
  const poll = async (): Promise<void> => {
    while (polling) {
      const t0 = performance.now();
      try {
        const res = await fetch(`${addresses.http}/healthz`, { signal: AbortSignal.timeout(300_000) });
        await res.arrayBuffer();
      } catch {
        // A connection the stalled server dropped: counted, and the time it took counts as its latency.
        healthzErrors++;
      }
      latencies.push(performance.now() - t0);
    }
  };

  // Baseline: /healthz with nothing else going on.
  const idlePoller = poll();
  await new Promise((resolve) => setTimeout(resolve, IDLE_POLL_MS));
  polling = false;
  await idlePoller;
  const idle = latencies.slice(WARMUP_POLLS).sort((a, b) => a - b);
  latencies.length = 0;

  log(`building ${EMPTY_RECORDS} empty records`);
  const bomb = Buffer.from(
    TelemetryBatch.encode(
      TelemetryBatch.fromPartial({ deflated: deflateSync(Buffer.alloc(EMPTY_RECORDS * 2, Buffer.from([0x0a, 0x00])), { level: 9 }), sentAtMs: Date.now() }),
    ).finish(),
  );
  log(`bomb: ${bomb.length} bytes on the wire, ${EMPTY_RECORDS * 2} inflated`);
  const before = memory(child.pid!);

  polling = true;
  const poller = poll();
  const t0 = performance.now();
  let peakKib = before.rssKib;
  const sampler = setInterval(() => {
    peakKib = Math.max(peakKib, memory(child.pid!).rssKib);
  }, 50);
  const inference = (seq: number): TelemetryRecord =>
    TelemetryRecord.fromPartial({
      boot: 1,
      seq,
      timeMs: Date.now(),
      stream: Stream.STREAM_INFERENCE,
      body: {
        $case: 'inference',
        value: {
          model: 'm',
          version: 1,
          provider: 'cpu',
          latencyMs: 1,
          outcome: Outcome.OUTCOME_OK,
          topClass: 0,
          confidence: 0.9,
          errorCode: '',
          batchSize: 1,
        },
      },
    });
  const legitSending = (async () => {
    for (let b = 0; b < LEGIT_BATCHES; b++) {
      const records = Array.from({ length: LEGIT_RECORDS_PER_BATCH }, (_, i) => inference(b * LEGIT_RECORDS_PER_BATCH + i + 1));
      await legit.client.publishAsync(
        upTopic('bench-legit', 'telemetry'),
        Buffer.from(TelemetryBatch.encode({ records, sentAtMs: Date.now(), deflated: Buffer.alloc(0) }).finish()),
        { qos: 1 },
      );
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  for (let i = 0; i < BATCHES; i++) await attacker.client.publishAsync(upTopic('bench-attacker', 'telemetry'), bomb, { qos: 1 });
  // Junk as fast as the link takes it: a hundred in flight at a time.
  for (let i = 0; i < JUNK; i += 100) {
    await Promise.all(
      Array.from({ length: Math.min(100, JUNK - i) }, () =>
        attacker.client.publishAsync(upTopic('bench-attacker', 'telemetry'), Buffer.from([0xff, 0xff, 0xff]), { qos: 1 }),
      ),
    );
  }
  await legitSending;
  // Device messages are handled in order: the legitimate device's last batch acknowledged means all before it were handled.
  const deadline = Date.now() + 30 * 60_000;
  while (legit.acks.length < LEGIT_BATCHES && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  const attackMs = performance.now() - t0;
  polling = false;
  clearInterval(sampler);
  await poller;
  const after = memory(child.pid!);

  const summary: TelemetrySummary = await api.summary();
  const row = (id: string) => summary.devices.find((d) => d.deviceId === id);
  const refusals = row('bench-attacker')?.refusals ?? [];
  const refusedByCode = Object.fromEntries(refusals.map((r) => [r.code, r.count]));
  // Before per-device refusal counts existed, only the fleet-wide rejected-batch counter counted them.
  const refused = refusals.length > 0 ? refusals.reduce((n, r) => n + r.count, 0) : summary.rejectedBatches;
  const sorted = [...latencies].sort((a, b) => a - b);
  api.close();
  enrollment.close();
  console.log(
    JSON.stringify({
      bench: 'attack-ingest',
      batches: BATCHES,
      junk: JUNK,
      bomb_wire_bytes: bomb.length,
      bomb_inflated_bytes: EMPTY_RECORDS * 2,
      rss_before_mb: mb(before.rssKib),
      rss_peak_mb: mb(Math.max(peakKib, after.peakKib)),
      rss_after_mb: mb(after.rssKib),
      healthz_idle_p50_ms: round(percentile(idle, 50)),
      healthz_p50_ms: round(percentile(sorted, 50)),
      healthz_max_ms: round(sorted.at(-1) ?? Number.NaN),
      healthz_max_vs_idle_p50: round((sorted.at(-1) ?? Number.NaN) / percentile(idle, 50)),
      healthz_samples: sorted.length,
      healthz_errors: healthzErrors,
      attack_s: round(attackMs / 1000),
      refused,
      refused_by_code: refusedByCode,
      stored_legit: row('bench-legit')?.records ?? 0,
      expected_legit: LEGIT_BATCHES * LEGIT_RECORDS_PER_BATCH,
      legit_acks: legit.acks.length,
      attacker_acks: attacker.acks.length,
    }),
  );
} finally {
  for (const client of clients) client.end(true);
  child.send('stop');
  await new Promise((resolve) => child.once('exit', resolve));
  rmSync(dir, { recursive: true, force: true });
}
