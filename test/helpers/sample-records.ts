import { Stream, TelemetryRecord } from '../../common/proto/driftline/v1/device_link.js';

export const T0 = 1_700_000_000_000;
const FEATURES = 8;

/** A captured sample as an agent sends it: one row of FEATURES floats (seq + i/10 unless given), a 3-class answer. */
export function sampleRecord(
  seq: number,
  options: { requestId?: string; model?: string; features?: number[]; boot?: number; timeMs?: number } = {},
): TelemetryRecord {
  const features = options.features ?? Array.from({ length: FEATURES }, (_, i) => seq + i / 10);
  return TelemetryRecord.fromPartial({
    boot: options.boot ?? 1,
    seq,
    timeMs: options.timeMs ?? T0 + seq,
    stream: Stream.STREAM_SAMPLES,
    body: {
      $case: 'sample',
      value: {
        model: options.model ?? 'vibration',
        version: 1,
        reason: 'sampled',
        requestId: options.requestId ?? `req-${seq}`,
        inputs: [{ name: 'features', datatype: 'FP32', shape: [1, features.length], data: Buffer.from(new Float32Array(features).buffer) }],
        outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [1, 3], data: Buffer.from(new Float32Array([0.1, 0.7, 0.2]).buffer) }],
        errorCode: '',
      },
    },
  });
}

/** The label an application posted for request `requestId`. */
export function labelRecord(seq: number, requestId: string, label: number, model = 'vibration'): TelemetryRecord {
  return TelemetryRecord.fromPartial({
    boot: 1,
    seq,
    timeMs: T0 + seq,
    stream: Stream.STREAM_INFERENCE,
    body: { $case: 'label', value: { model, version: 1, requestId, predicted: 1, label, correct: label === 1, inferenceTimeMs: T0 } },
  });
}
