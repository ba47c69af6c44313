import { Metadata, type ServiceError } from '@grpc/grpc-js';
import { OperatorCallError } from '../../client/operator-client.js';
import { trailerCodeOf } from '../../common/grpc-error-code.js';

type Callback<T> = (err: ServiceError | null, res: T) => void;

/** Turns a callback-style unary gRPC call into a promise (for tests that speak to a generated client directly, bad metadata included). */
export const rpc = <T>(invoke: (cb: Callback<T>) => unknown): Promise<T> =>
  new Promise((resolve, reject) => invoke((err, res) => (err ? reject(err) : resolve(res))));

/** The gRPC status and the stable Driftline code from the trailing metadata of a call that must fail (through the operator client or a generated one). */
export async function refusalOf(call: Promise<unknown>): Promise<{ status: number; code: string }> {
  const outcome = await call.then(
    () => undefined,
    (err: unknown) => err as OperatorCallError | ServiceError,
  );
  if (!outcome) throw new Error('expected the call to be refused, but it succeeded');
  if (outcome instanceof OperatorCallError) return { status: outcome.grpcStatus, code: String(outcome.trailerCode) };
  return { status: outcome.code, code: String(trailerCodeOf(outcome)) };
}

/** `authorization: Bearer <token>` metadata, for a generated client called directly (the operator client adds it itself). */
export function bearer(token: string): Metadata {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}
