import { readFileSync } from 'node:fs';
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { DriftlineError } from '../../common/errors.js';
import { errorCodeOf } from '../../common/grpc-error-code.js';
import { EnrollmentServiceClient, type EnrollResponse } from '../../common/proto/driftline/v1/fleet.js';

export interface EnrollOptions {
  server: string;
  tls: boolean;
  caFile?: string | undefined;
  token: string;
  deviceId: string;
  firmwareProfile: string;
  agentVersion: string;
  timeoutMs: number;
}

/** Presents the one-time token to the control plane and receives the device's credential. */
export async function enrollOverGrpc(options: EnrollOptions): Promise<EnrollResponse> {
  const channel =
    options.tls || options.caFile ? credentials.createSsl(options.caFile ? readFileSync(options.caFile) : undefined) : credentials.createInsecure();
  const client = new EnrollmentServiceClient(options.server, channel);
  try {
    return await new Promise<EnrollResponse>((resolve, reject) => {
      client.enroll(
        { token: options.token, deviceId: options.deviceId, firmwareProfile: options.firmwareProfile, agentVersion: options.agentVersion },
        new Metadata(),
        { deadline: Date.now() + options.timeoutMs },
        (err, response) => (err ? reject(err) : resolve(response)),
      );
    });
  } catch (err) {
    const serviceError = err as ServiceError;
    const code = errorCodeOf(serviceError);
    if (code) throw new DriftlineError(code, `enrollment refused: ${serviceError.details}`, { cause: err });
    throw new DriftlineError('UPLINK_UNAVAILABLE', `cannot enroll at ${options.server}: ${serviceError.details ?? String(err)}`, { cause: err });
  } finally {
    client.close();
  }
}
