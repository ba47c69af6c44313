import { TelemetryRecord } from '../../common/proto/driftline/v1/device_link.js';

/**
 * The model a telemetry record belongs to, for the retention policy's fair shares: inference,
 * label, drift and sample records carry it; events and system records belong to no model ("").
 */
export function recordModel(body: TelemetryRecord['body']): string {
  switch (body?.$case) {
    case 'inference':
    case 'label':
    case 'drift':
    case 'sample':
      return body.value.model;
    default:
      return '';
  }
}

/** The same for an encoded record (rows of a buffer written before the model was kept beside the body); "" when it does not decode. */
export function encodedRecordModel(bytes: Uint8Array): string {
  try {
    return recordModel(TelemetryRecord.decode(bytes).body);
  } catch {
    return '';
  }
}
