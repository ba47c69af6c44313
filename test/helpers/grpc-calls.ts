import { Metadata, type ServiceError } from '@grpc/grpc-js';
import { ERROR_CODE_METADATA_KEY } from '../../control-plane/api/grpc-errors.js';

type Callback<T> = (err: ServiceError | null, res: T) => void;

/** Turns a callback-style unary gRPC call into a promise. */
export const rpc = <T>(invoke: (cb: Callback<T>) => unknown): Promise<T> =>
  new Promise((resolve, reject) => invoke((err, res) => (err ? reject(err) : resolve(res))));

/** The gRPC status and the stable Driftline code from the trailing metadata of a call that must fail. */
export async function refusalOf(call: Promise<unknown>): Promise<{ status: number; code: string }> {
  const outcome = await call.then(
    () => undefined,
    (err: unknown) => err as ServiceError,
  );
  if (!outcome) throw new Error('expected the call to be refused, but it succeeded');
  return { status: outcome.code, code: String(outcome.metadata?.get(ERROR_CODE_METADATA_KEY)[0]) };
}

/** `authorization: Bearer <token>` metadata. */
export function bearer(token: string): Metadata {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}
