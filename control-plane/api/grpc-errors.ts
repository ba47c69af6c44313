import { Metadata, status, type ServerErrorResponse, type StatusObject } from '@grpc/grpc-js';
import { DriftlineError, type ErrorKind } from '../../common/errors.js';
import { ERROR_CODE_METADATA_KEY } from '../../common/grpc-error-code.js';
import type { Logger } from '../../common/logger.js';

/** Trailing metadata key carrying the stable Driftline error code (defined once in common/, where the clients read it). */
export { ERROR_CODE_METADATA_KEY };

const STATUS_BY_KIND: Record<ErrorKind, status> = {
  invalid: status.INVALID_ARGUMENT,
  unauthenticated: status.UNAUTHENTICATED,
  forbidden: status.PERMISSION_DENIED,
  not_found: status.NOT_FOUND,
  conflict: status.FAILED_PRECONDITION,
  exhausted: status.RESOURCE_EXHAUSTED,
  unavailable: status.UNAVAILABLE,
  deadline: status.DEADLINE_EXCEEDED,
  internal: status.INTERNAL,
};

/**
 * The one place a thrown error becomes a gRPC status. Anything that is not a
 * DriftlineError is a bug: it is logged with its stack and reaches the caller only as
 * INTERNAL, so no stack trace or library message leaks.
 */
export function toGrpcStatus(err: unknown, logger: Logger, method: string): Partial<StatusObject> & Pick<ServerErrorResponse, 'metadata'> {
  const known = err instanceof DriftlineError ? err : undefined;
  if (!known || known.kind === 'internal') logger.error({ err, method }, 'rpc failed');
  else logger.debug({ code: known.code, method }, 'rpc refused');
  const code = known?.code ?? 'INTERNAL';
  const metadata = new Metadata();
  metadata.set(ERROR_CODE_METADATA_KEY, code);
  return {
    code: known ? STATUS_BY_KIND[known.kind] : status.INTERNAL,
    details: known?.message ?? 'internal error',
    metadata,
  };
}
