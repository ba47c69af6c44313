import { status, type ServiceError } from '@grpc/grpc-js';
import { DriftlineError, type ErrorCode } from '../common/errors.js';
import { errorCodeOf, trailerCodeOf } from '../common/grpc-error-code.js';

/** The code of a call that failed without the control plane's own code (it never reached the API layer). */
const CODE_BY_STATUS: Partial<Record<status, ErrorCode>> = {
  [status.UNAVAILABLE]: 'API_UNAVAILABLE',
  [status.DEADLINE_EXCEEDED]: 'API_DEADLINE_EXCEEDED',
  [status.CANCELLED]: 'API_CANCELLED',
  [status.UNAUTHENTICATED]: 'AUTH_INVALID',
  [status.PERMISSION_DENIED]: 'ROLE_INSUFFICIENT',
  [status.INVALID_ARGUMENT]: 'REQUEST_INVALID',
  [status.RESOURCE_EXHAUSTED]: 'PAYLOAD_TOO_LARGE',
  [status.UNIMPLEMENTED]: 'NOT_IMPLEMENTED',
};

/**
 * A refused or failed operator call, as a DriftlineError: `code` is the control plane's stable
 * code from the `driftline-error-code` trailer, or, for a call that never reached the API
 * layer (no connection, a local deadline), one derived from the gRPC status. The status,
 * the trailer as sent and grpc-js's details stay readable for callers that word their own
 * messages (the CLI) or assert on the wire (tests).
 */
export class OperatorCallError extends DriftlineError {
  override readonly name = 'OperatorCallError';

  constructor(
    code: ErrorCode,
    message: string,
    /** The gRPC status of the call. */
    readonly grpcStatus: status,
    /** The `driftline-error-code` trailer as sent, undefined when the call carried none. */
    readonly trailerCode: string | undefined,
    /** The method, `/driftline.v1.DeviceService/ListDevices`. */
    readonly method: string,
    cause: unknown,
  ) {
    super(code, message, { cause });
  }
}

function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number' && 'details' in err;
}

/** Maps what grpc-js rejects a call with; anything that is not a gRPC error (a local failure) passes through. */
export function toOperatorCallError(err: unknown, method: string): unknown {
  if (err instanceof DriftlineError || !isServiceError(err)) return err;
  const trailerCode = trailerCodeOf(err);
  const code = errorCodeOf(err) ?? CODE_BY_STATUS[err.code as status] ?? 'INTERNAL';
  return new OperatorCallError(code, err.details || err.message, err.code, trailerCode, method, err);
}

/** The control plane itself refused the call with one of these codes (its trailer said so). */
export function refusedWith(err: unknown, ...codes: ErrorCode[]): err is OperatorCallError {
  return err instanceof OperatorCallError && err.trailerCode !== undefined && (codes as string[]).includes(err.trailerCode);
}
