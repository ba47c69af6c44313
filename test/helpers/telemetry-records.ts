import { Outcome, Stream, type InferenceRecord, type TelemetryRecord } from '../../common/proto/driftline/v1/device_link.js';

/** One successful inference record of the vibration model; tests override the fields they care about. */
export function inferenceRecord(at: { seq: number; boot?: number; timeMs?: number }, value: Partial<InferenceRecord> = {}): TelemetryRecord {
  return {
    boot: at.boot ?? 1,
    seq: at.seq,
    timeMs: at.timeMs ?? 1_000,
    stream: Stream.STREAM_INFERENCE,
    body: {
      $case: 'inference',
      value: {
        model: 'vibration',
        version: 1,
        provider: 'cpu',
        latencyMs: 2,
        outcome: Outcome.OUTCOME_OK,
        topClass: 0,
        confidence: 1,
        errorCode: '',
        batchSize: 1,
        ...value,
      },
    },
  };
}
