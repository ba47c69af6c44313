import type {
  handleClientStreamingCall,
  handleServerStreamingCall,
  handleUnaryCall,
  Metadata,
  ServerReadableStream,
  ServerWritableStream,
} from '@grpc/grpc-js';
import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import { roleAtLeast, type OperatorRole, type OperatorToken, type OperatorTokenStore } from '../fleet/operator-tokens.js';
import { toGrpcStatus } from './grpc-errors.js';

/**
 * Who may call: an operator role (that role or a higher one), `worker` (worker tokens only:
 * WorkerService), or anyone (the enrollment RPC authenticates by its own token).
 */
export type Access = OperatorRole | 'worker' | 'public';

export interface RpcContext {
  tokens: Pick<OperatorTokenStore, 'authenticate'>;
  logger: Logger;
}

/** The authenticated operator behind a call; undefined on public RPCs. */
export type Caller = OperatorToken | undefined;

/** Wraps a unary handler with authorization and the single error mapping. */
export function unary<Req, Res>(
  ctx: RpcContext,
  method: string,
  access: Access,
  fn: (request: Req, caller: Caller) => Res | Promise<Res>,
): handleUnaryCall<Req, Res> {
  return (call, callback) => {
    run(ctx, method, access, call, (caller) => fn(call.request, caller)).then(
      (response) => callback(null, response),
      (err: unknown) => callback(toGrpcStatus(err, ctx.logger, method)),
    );
  };
}

/** Wraps a client-streaming handler the same way; the handler reads the stream as an async iterable. */
export function clientStreaming<Req, Res>(
  ctx: RpcContext,
  method: string,
  access: Access,
  fn: (call: ServerReadableStream<Req, Res>, caller: Caller) => Promise<Res>,
): handleClientStreamingCall<Req, Res> {
  return (call, callback) => {
    // A cancelled call never ends its stream; failing it unblocks whoever is reading.
    call.on('cancelled', () => call.destroy(new DriftlineError('UPLOAD_INCOMPLETE', 'the client cancelled the call')));
    run(ctx, method, access, call, (caller) => fn(call, caller)).then(
      (response) => callback(null, response),
      (err: unknown) => callback(toGrpcStatus(err, ctx.logger, method)),
    );
  };
}

/** Wraps a server-streaming handler: authorization first, then the handler writes until it ends the call; failures become the status. */
export function serverStreaming<Req, Res>(
  ctx: RpcContext,
  method: string,
  access: Access,
  fn: (call: ServerWritableStream<Req, Res>, caller: Caller) => Promise<void>,
): handleServerStreamingCall<Req, Res> {
  return (call) => {
    run(ctx, method, access, call, (caller) => fn(call, caller)).catch((err: unknown) => {
      if (!call.cancelled) call.emit('error', toGrpcStatus(err, ctx.logger, method));
    });
  };
}

async function run<T>(ctx: RpcContext, method: string, access: Access, call: { metadata: Metadata }, fn: (caller: Caller) => T | Promise<T>): Promise<T> {
  const caller = access === 'public' ? undefined : await authorize(ctx.tokens, call.metadata, access);
  if (caller) ctx.logger.debug({ method, token: caller.id }, 'rpc');
  return fn(caller);
}

async function authorize(tokens: RpcContext['tokens'], metadata: Metadata, required: OperatorRole | 'worker'): Promise<OperatorToken> {
  const [header] = metadata.get('authorization');
  const m = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header.trim()) : null;
  if (!m) throw new DriftlineError('AUTH_MISSING', 'this call needs "authorization: Bearer <token>" metadata');
  const token = await tokens.authenticate(m[1]!);
  if (!token) throw new DriftlineError('AUTH_INVALID', 'the bearer token is unknown or revoked');
  // Worker tokens and operator tokens are disjoint: neither reaches the other's calls, whatever its rank.
  if (required === 'worker' ? token.role !== 'worker' : !roleAtLeast(token.role, required)) {
    throw new DriftlineError('ROLE_INSUFFICIENT', `this call needs the ${required} role; the token has ${token.role}`, {
      details: { required, role: token.role },
    });
  }
  return token;
}

/** Checks a request against a schema, listing every problem under REQUEST_INVALID. */
export function validate<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  const result = schema.safeParse(value);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join('.') || '(request)'}: ${i.message}`);
    throw new DriftlineError('REQUEST_INVALID', `invalid request: ${problems.join('; ')}`, { details: { problems } });
  }
  return result.data;
}

/**
 * Writes what a watch yields to a server-streaming call until the watch ends, the client leaves
 * or the control plane shuts down (`shutdown`), then ends the call if the client is still there.
 * Backpressure: a slow reader holds this watch, not the server's memory; leaving or shutdown
 * still ends it while it waits.
 */
export async function streamWatch<T, Res>(
  call: ServerWritableStream<unknown, Res>,
  shutdown: AbortSignal | undefined,
  watch: (signal: AbortSignal) => AsyncIterable<T>,
  toMessage: (update: T) => Res,
): Promise<void> {
  const left = new AbortController();
  const leave = (): void => left.abort();
  call.on('cancelled', leave);
  const signal = shutdown ? AbortSignal.any([left.signal, shutdown]) : left.signal;
  try {
    for await (const update of watch(signal)) {
      if (signal.aborted) break;
      if (!call.write(toMessage(update)))
        await new Promise<void>((resolve) => {
          const done = (): void => {
            signal.removeEventListener('abort', done);
            call.off('drain', done);
            resolve();
          };
          call.once('drain', done);
          signal.addEventListener('abort', done);
        });
    }
  } finally {
    call.off('cancelled', leave);
  }
  if (!call.cancelled) call.end();
}
