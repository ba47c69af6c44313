import type { BinaryWriter } from '@bufbuild/protobuf/wire';
import {
  Command,
  CommandResult,
  DesiredState,
  FederatedInvitation,
  FederatedReport,
  ReportedState,
  TelemetryAck,
  TelemetryBatch,
} from '../proto/driftline/v1/device_link.js';
import type { DownChannel, UpChannel } from './topics.js';

/** A generated protobuf message type, as far as the device protocol needs it. */
interface Codec<T> {
  encode(message: T): BinaryWriter;
  decode(input: Uint8Array): T;
}

/** What each up/ channel carries. */
export interface UpMessages {
  telemetry: TelemetryBatch;
  state: ReportedState;
  result: CommandResult;
  federated: FederatedReport;
}

/** What each down/ channel carries. */
export interface DownMessages {
  ack: TelemetryAck;
  desired: DesiredState;
  command: Command;
  federated: FederatedInvitation;
}

/**
 * The message of each channel, in one place for the agent, the simulator and the control
 * plane. Telemetry batches leave the agent hand-encoded (./telemetry-batch.ts) and reach
 * the control plane through a bounded decode; everything else can go through these.
 */
const UP_CODECS: { [C in UpChannel]: Codec<UpMessages[C]> } = {
  telemetry: TelemetryBatch,
  state: ReportedState,
  result: CommandResult,
  federated: FederatedReport,
};
const DOWN_CODECS: { [C in DownChannel]: Codec<DownMessages[C]> } = {
  ack: TelemetryAck,
  desired: DesiredState,
  command: Command,
  federated: FederatedInvitation,
};

export const encodeUp = <C extends UpChannel>(channel: C, message: UpMessages[C]): Uint8Array => UP_CODECS[channel].encode(message).finish();
export const decodeUp = <C extends UpChannel>(channel: C, payload: Uint8Array): UpMessages[C] => UP_CODECS[channel].decode(payload);
export const encodeDown = <C extends DownChannel>(channel: C, message: DownMessages[C]): Uint8Array => DOWN_CODECS[channel].encode(message).finish();
export const decodeDown = <C extends DownChannel>(channel: C, payload: Uint8Array): DownMessages[C] => DOWN_CODECS[channel].decode(payload);
