import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { createOperatorClient, OperatorCallError, type OperatorClient, type OperatorClientOptions } from '../client/operator-client.js';
import { DriftlineError, ERROR_CODES, type ErrorKind, isErrorCode } from '../common/errors.js';
import { ERROR_CODE_METADATA_KEY } from '../common/grpc-error-code.js';
import { CliError, DEFAULT_SERVER, DEFAULT_TOKEN_FILE, EXIT, type ExitCode, usageError } from './cli-error.js';

export { CliError, DEFAULT_SERVER, DEFAULT_TOKEN_FILE, EXIT, EXIT_CODES_HELP, type ExitCode, usageError } from './cli-error.js';

const DEFAULT_TIMEOUT_S = 30;

/** The options every client command shares (commander's global options). */
export interface ConnectionOptions {
  server: string;
  token?: string;
  tokenFile?: string;
  tls?: boolean;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  timeout?: number;
}

const EXIT_BY_KIND: Record<ErrorKind, ExitCode> = {
  invalid: EXIT.usage,
  unauthenticated: EXIT.auth,
  forbidden: EXIT.auth,
  not_found: EXIT.notFound,
  conflict: EXIT.conflict,
  // What the control plane reports as exhausted is a model over its size limit: the input is at fault.
  exhausted: EXIT.usage,
  unavailable: EXIT.unavailable,
  deadline: EXIT.unavailable,
  internal: EXIT.internal,
};

const EXIT_BY_STATUS: Partial<Record<status, ExitCode>> = {
  [status.INVALID_ARGUMENT]: EXIT.usage,
  [status.OUT_OF_RANGE]: EXIT.usage,
  [status.RESOURCE_EXHAUSTED]: EXIT.usage,
  [status.UNAUTHENTICATED]: EXIT.auth,
  [status.PERMISSION_DENIED]: EXIT.auth,
  [status.NOT_FOUND]: EXIT.notFound,
  [status.ALREADY_EXISTS]: EXIT.conflict,
  [status.FAILED_PRECONDITION]: EXIT.conflict,
  [status.ABORTED]: EXIT.conflict,
  [status.UNAVAILABLE]: EXIT.unavailable,
  [status.DEADLINE_EXCEEDED]: EXIT.unavailable,
};

function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number' && (err as Partial<ServiceError>).metadata instanceof Metadata;
}

/**
 * Turns anything a command throws into what the operator sees. The control plane's own
 * code (trailer `driftline-error-code`) wins; the gRPC status is the fallback for errors
 * raised before the API layer, such as a connection that never opened.
 */
export function toCliError(err: unknown, server: string): CliError {
  if (err instanceof CliError) return err;
  if (err instanceof OperatorCallError) return fromCall(err.grpcStatus, err.trailerCode, err.message, server);
  if (err instanceof DriftlineError) return new CliError(err.code, err.message, EXIT_BY_KIND[err.kind]);
  if (isServiceError(err)) return fromCall(err.code, err.metadata.get(ERROR_CODE_METADATA_KEY)[0]?.toString() || undefined, err.details || err.message, server);
  return new CliError('INTERNAL', err instanceof Error ? err.message : String(err), EXIT.internal);
}

/**
 * A failed call: the control plane's own code (trailer) wins; the gRPC status is the fallback
 * for errors raised before the API layer, such as a connection that never opened.
 */
function fromCall(grpcStatus: status, trailer: string | undefined, details: string, server: string): CliError {
  const code = trailer ?? status[grpcStatus];
  const exitCode = isErrorCode(code) ? EXIT_BY_KIND[ERROR_CODES[code]] : (EXIT_BY_STATUS[grpcStatus] ?? EXIT.internal);
  if (!trailer && grpcStatus === status.UNAVAILABLE) return unreachable(details, server);
  if (code === 'AUTH_MISSING') {
    // No token went out: none of --token, DRIFTLINE_TOKEN, --token-file, and no default file.
    return new CliError(
      code,
      `no operator token: pass --token <token>, set DRIFTLINE_TOKEN, or point --token-file at a token file (looked for ${resolve(DEFAULT_TOKEN_FILE)}, which \`driftline serve\` writes under its data dir)`,
      exitCode,
    );
  }
  if (!trailer && grpcStatus === status.DEADLINE_EXCEEDED) {
    return new CliError(code, `the control plane at ${server} did not answer in time (see --timeout)`, exitCode);
  }
  return new CliError(code, details, exitCode);
}

/** grpc-js's "No connection established. Last error: ... Resolution note: " as one plain sentence per cause. */
function unreachable(details: string, server: string): CliError {
  if (/Name resolution failed|ENOTFOUND|EAI_AGAIN/.test(details)) {
    const host = server.replace(/:\d+$/, '');
    return new CliError('SERVER_UNRESOLVABLE', `cannot resolve ${host} (from --server or DRIFTLINE_SERVER): check the host name`, EXIT.unavailable);
  }
  if (/ECONNREFUSED/.test(details)) {
    return new CliError(
      'UNAVAILABLE',
      `cannot reach the control plane at ${server}: connection refused (is \`driftline serve\` running, and is ${server} its gRPC address?)`,
      EXIT.unavailable,
    );
  }
  const cause = /Last error: (?:Error: )?(.*?)(?:\.?\s*Resolution note:.*)?$/s.exec(details)?.[1]?.trim();
  return new CliError(
    'UNAVAILABLE',
    `cannot reach the control plane at ${server}${cause ? `: ${cause}` : ''} (is \`driftline serve\` running?)`,
    EXIT.unavailable,
  );
}

const URL_SCHEME = /^([a-z][a-z0-9+.-]*):\/\//i;

/**
 * --server is host:port as gRPC dials it. A URL or a host without a port is a usage error
 * naming the fix (grpc-js would read "http" as a host name, or dial port 443).
 */
export function checkServerAddress(server: string): void {
  const scheme = URL_SCHEME.exec(server);
  if (scheme) {
    const rest = server.slice(scheme[0].length).replace(/\/.*$/, '');
    const tls = /^(https|grpcs)$/i.test(scheme[1]!) ? ' with --tls' : '';
    throw new CliError('SERVER_ADDRESS_INVALID', `--server takes host:port, not a URL: use --server ${rest || 'host:7443'}${tls}`, EXIT.usage);
  }
  const m = /^(\[[^\]]+\]|[^:[\]]+)(?::(\d+))?$/.exec(server);
  if (!m)
    throw new CliError(
      'SERVER_ADDRESS_INVALID',
      `--server ${JSON.stringify(server)} is not host:port (an IPv6 address goes in brackets: [::1]:7443)`,
      EXIT.usage,
    );
  if (m[2] === undefined)
    throw new CliError(
      'SERVER_ADDRESS_INVALID',
      `--server ${server} has no port: use --server ${server}:${DEFAULT_SERVER.split(':').pop()} (driftline serve's default gRPC port)`,
      EXIT.usage,
    );
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw new CliError('SERVER_ADDRESS_INVALID', `--server ${server}: the port must be 1-65535`, EXIT.usage);
}

/** Token lookup order: --token, DRIFTLINE_TOKEN (both via commander), --token-file, ./.driftline/admin.token. */
export function resolveToken(options: Pick<ConnectionOptions, 'token' | 'tokenFile'>): string | undefined {
  if (options.token) return options.token;
  if (options.tokenFile) return readText(options.tokenFile, 'token file').trim();
  return existsSync(DEFAULT_TOKEN_FILE) ? readText(DEFAULT_TOKEN_FILE, 'token file').trim() : undefined;
}

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw usageError(`cannot read ${what} ${path}: ${(err as Error).message}`);
  }
}

export function tlsOf(options: ConnectionOptions): OperatorClientOptions['tls'] {
  if (Boolean(options.tlsCert) !== Boolean(options.tlsKey)) throw usageError('--tls-cert and --tls-key go together');
  if (!options.tls && !options.tlsCa && !options.tlsCert) return undefined;
  const read = (path: string | undefined, what: string) => (path ? Buffer.from(readText(path, what)) : undefined);
  return { ca: read(options.tlsCa, 'CA file'), key: read(options.tlsKey, 'key file'), cert: read(options.tlsCert, 'certificate file') };
}

/** One operator session against one control plane: the shared operator client built from the global options. */
export class Connection {
  /** The typed client every command calls through (bearer token, deadlines, errors by stable code). */
  readonly api: OperatorClient;

  constructor(private readonly options: ConnectionOptions) {
    checkServerAddress(options.server);
    const tls = tlsOf(options);
    const timeoutMs = options.timeout === undefined ? undefined : options.timeout * 1000;
    // Unary calls get a deadline by default; a streamed upload or watch only when --timeout is given.
    this.api = createOperatorClient({
      address: options.server,
      token: resolveToken(options),
      tls,
      timeoutMs: timeoutMs ?? DEFAULT_TIMEOUT_S * 1000,
      streamTimeoutMs: timeoutMs,
    });
  }

  get server(): string {
    return this.options.server;
  }

  close(): void {
    this.api.close();
  }
}
