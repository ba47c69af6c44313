import { isErrorCode, type ErrorCode } from './errors.js';

/**
 * Trailing metadata key carrying the stable Driftline error code of a refused gRPC call. The
 * control plane's API layer sets it (control-plane/api/grpc-errors.ts); the operator client
 * (client/) and the agent's enrollment read it back with `errorCodeOf`, and branch on it, never on messages.
 */
export const ERROR_CODE_METADATA_KEY = 'driftline-error-code';

/** What of a gRPC error this needs: grpc-js's ServiceError has it (typed structurally, so common/ imports no transport). */
interface WithTrailers {
  metadata?: { get(key: string): Array<string | Buffer> } | undefined;
}

/** The trailer's code as it came (any string), or undefined when the call carried none (it failed before the API layer). */
export function trailerCodeOf(err: unknown): string | undefined {
  const metadata = (err as WithTrailers | null | undefined)?.metadata;
  if (!metadata || typeof metadata.get !== 'function') return undefined;
  const value = metadata.get(ERROR_CODE_METADATA_KEY)[0];
  const code = typeof value === 'string' ? value : value?.toString('utf8');
  return code || undefined;
}

/** The trailer's code when it is one of the registry's. */
export function errorCodeOf(err: unknown): ErrorCode | undefined {
  const code = trailerCodeOf(err);
  return code !== undefined && isErrorCode(code) ? code : undefined;
}
