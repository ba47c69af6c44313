import { statfsSync } from 'node:fs';
import { freemem } from 'node:os';
import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { DriftSketch } from '../../common/proto/driftline/v1/drift.js';
import {
  Outcome,
  Stream,
  TelemetryRecord,
  type EventRecord,
  type InferenceRecord,
  type LabelRecord,
  type SampleRecord,
  type SystemRecord,
} from '../../common/proto/driftline/v1/device_link.js';
import type { TelemetryBuffer } from '../buffer/ports.js';
import { recordModel } from '../buffer/record-owner.js';
import type { HostReading } from './host-sensors.js';

/**
 * Turns what the agent observes into buffered telemetry records. Recording never
 * blocks or fails the caller: a record the buffer refuses is counted as dropped, and
 * the count travels in the reported state.
 */
export class TelemetryRecorder {
  /** Records the buffer has durably accepted, and records it refused. */
  enqueued = 0;
  dropped = 0;
  private lastCpu = process.cpuUsage();
  private lastCpuAt: number;
  /** Observed this turn and not yet encoded: encoding and enqueueing happen after the caller has its answer. */
  private observed: Array<{ stream: Stream; timeMs: number; body: TelemetryRecord['body']; settled?: () => void }> = [];

  constructor(
    private readonly buffer: TelemetryBuffer,
    private readonly clock: Clock,
    private readonly logger: Logger,
    private readonly onRecorded: () => void,
  ) {
    this.lastCpuAt = clock.now();
  }

  inference(value: Partial<InferenceRecord> & Pick<InferenceRecord, 'model' | 'latencyMs'>): void {
    this.record(Stream.STREAM_INFERENCE, {
      $case: 'inference',
      value: { version: 0, provider: '', outcome: Outcome.OUTCOME_OK, topClass: -1, confidence: 0, errorCode: '', batchSize: 1, ...value },
    });
  }

  /** Resolves once the record is committed, or counted as dropped (never rejects). */
  event(kind: string, message: string, attributes: Record<string, string> = {}): Promise<void> {
    return new Promise((settled) => this.record(Stream.STREAM_EVENTS, { $case: 'event', value: { kind, message, attributes } satisfies EventRecord }, settled));
  }

  /** Captured raw inputs and outputs of one request: the samples stream, first to go when space runs out. */
  sample(value: SampleRecord): void {
    this.record(Stream.STREAM_SAMPLES, { $case: 'sample', value });
  }

  /**
   * An application's label for an answered request: inference data, on the inference stream.
   * Resolves once the record is committed, or counted as dropped (never rejects): the local API
   * answers 202 only then, so a label it acknowledged survives kill -9.
   */
  label(value: LabelRecord): Promise<void> {
    return new Promise((settled) => this.record(Stream.STREAM_INFERENCE, { $case: 'label', value }, settled));
  }

  /** A window's drift sketch: aggregated inference data, so it shares the inference stream's priority. */
  drift(sketch: DriftSketch): void {
    this.record(Stream.STREAM_INFERENCE, { $case: 'drift', value: sketch });
  }

  /** @param host GPU load and temperature where the hardware exposes them (HostSensors) */
  system(dataDir: string, host: HostReading = {}): void {
    const now = this.clock.now();
    const cpu = process.cpuUsage(this.lastCpu);
    const elapsedMs = Math.max(1, now - this.lastCpuAt);
    this.lastCpu = process.cpuUsage();
    this.lastCpuAt = now;
    let diskFree = 0;
    try {
      const fs = statfsSync(dataDir);
      diskFree = fs.bavail * fs.bsize;
    } catch {
      // Not every filesystem answers statfs; 0 means unknown.
    }
    const value: SystemRecord = {
      cpuPercent: ((cpu.user + cpu.system) / 1000 / elapsedMs) * 100,
      rssBytes: process.memoryUsage.rss(),
      memoryFreeBytes: freemem(),
      diskFreeBytes: diskFree,
      bufferDepth: this.buffer.depth(),
      // 0 on the wire where the hardware exposes nothing (proto3 scalars).
      gpuPercent: host.gpuPercent ?? 0,
      temperatureC: host.temperatureC ?? 0,
    };
    this.record(Stream.STREAM_SYSTEM, { $case: 'system', value });
  }

  /** Hands what was observed this turn to the buffer now (before a drain or shutdown). */
  flush(): void {
    const observed = this.observed;
    this.observed = [];
    for (const { stream, timeMs, body, settled } of observed) {
      const bytes = TelemetryRecord.encode({ boot: 0, seq: 0, timeMs, stream, body }).finish();
      this.buffer.enqueue({ stream, timeMs, body: bytes, model: recordModel(body) }).then(
        () => {
          this.enqueued++;
          this.onRecorded();
          settled?.();
        },
        (err: unknown) => {
          this.dropped++;
          this.logger.warn({ err, stream }, 'telemetry record dropped');
          settled?.();
        },
      );
    }
  }

  private record(stream: Stream, body: TelemetryRecord['body'], settled?: () => void): void {
    // Called on the inference path (the engine's observer): only the values are kept now,
    // encoded and buffered once the turn that answered the caller is over.
    if (this.observed.push({ stream, timeMs: this.clock.now(), body, settled }) === 1) setImmediate(() => this.flush());
  }
}
