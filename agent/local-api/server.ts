import { probeTcpPort, startHttpServer } from '../../common/http/server.js';
import { localApiRoutes, type LocalApiRouteOptions } from './routes.js';

const DEFAULT_SHUTDOWN_GRACE_MS = 5_000;

export interface LocalApiOptions extends LocalApiRouteOptions {
  host?: string;
  port?: number;
  /** Listen on this unix socket instead of TCP. */
  socketPath?: string;
  /** How long close() lets requests in flight finish before cutting connections. */
  shutdownGraceMs?: number;
}

export interface LocalApi {
  /** http://host:port, or unix:<path> for a unix socket. */
  url: string;
  /** 0 on a unix socket. */
  port: number;
  /** Stops accepting and lets requests in flight finish for up to graceMs (shutdownGraceMs when absent), then cuts them. */
  close(graceMs?: number): Promise<void>;
}

/**
 * The device's inference API for applications, in the shape of the Open Inference
 * Protocol v2 (KServe) over HTTP/JSON, on loopback or a unix socket only: the routes
 * (routes.ts, over the protocol mapping in inference-protocol.ts) on common/http's server.
 */
export async function startLocalApi(options: LocalApiOptions): Promise<LocalApi> {
  const routes = localApiRoutes(options);
  const http = await startHttpServer({
    listener: 'local-api',
    address: options.socketPath !== undefined ? { socketPath: options.socketPath } : { host: options.host ?? '127.0.0.1', port: options.port ?? 0 },
    handle: routes.handle,
    onError: routes.onError,
  });
  options.logger.info({ url: http.url }, 'local inference API listening');
  return {
    url: http.url,
    port: http.port,
    close: (graceMs) => http.close(graceMs ?? options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS),
  };
}

/**
 * Binds the local API's TCP address for a moment and lets it go: run before enrollment, a port
 * that is taken fails the start before a one-time enrollment token is spent. (A unix socket is
 * checked when the API starts: a stale one is removed then.)
 */
export async function checkLocalApiPort(options: { host?: string | undefined; port?: number | undefined; socketPath?: string | undefined }): Promise<void> {
  if (options.socketPath !== undefined || !options.port) return;
  await probeTcpPort('local-api', options.host ?? '127.0.0.1', options.port);
}
