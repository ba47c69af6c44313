import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, createServer as createNetServer, type Server as NetServer } from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import { DriftlineError, listenFailed, type ListenerName } from '../errors.js';

/** Where a server listens: a TCP host and port (0: the OS picks), or a unix socket. */
export type HttpListenAddress = { host: string; port: number } | { socketPath: string };

export interface HttpServerOptions {
  /** Which listener this is: a failed bind is LISTEN_FAILED naming it. */
  listener: ListenerName;
  address: HttpListenAddress;
  /** Answers one request; what it throws goes to onError. */
  handle(req: IncomingMessage, res: ServerResponse): Promise<void>;
  onError(err: unknown, req: IncomingMessage, res: ServerResponse): void;
}

export interface HttpServer {
  readonly server: Server;
  /** http://host:port from the bound address, or unix:<path> for a unix socket. */
  readonly url: string;
  /** 0 on a unix socket. */
  readonly port: number;
  /**
   * Stops accepting, lets requests in flight finish for up to graceMs, then cuts what is left
   * (the drain step of a component in common/lifecycle.ts). Idempotent.
   */
  close(graceMs: number): Promise<void>;
}

/**
 * One HTTP server: listens (a stale unix socket left by a killed process is taken over, one in
 * use is not), sends each request to handle, and closes gracefully. The local API and the
 * artifact server both run on it; routes and bodies are theirs.
 */
export async function startHttpServer(options: HttpServerOptions): Promise<HttpServer> {
  const server = createServer((req, res) => {
    options.handle(req, res).catch((err: unknown) => options.onError(err, req, res));
  });
  const { url, port } = await listenHttp(server, options.listener, options.address);
  let closing: Promise<void> | undefined;
  return {
    server,
    url,
    port,
    close(graceMs) {
      closing ??= closeGracefully(server, graceMs);
      return closing;
    },
  };
}

async function listenHttp(server: Server, listener: ListenerName, address: HttpListenAddress): Promise<{ url: string; port: number }> {
  if ('socketPath' in address) {
    const { socketPath } = address;
    try {
      await listenOn(server, socketPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || !(await isStaleSocket(socketPath))) throw listenFailed(listener, socketPath, err);
      await unlink(socketPath);
      await listenOn(server, socketPath).catch((retryErr: unknown) => {
        throw listenFailed(listener, socketPath, retryErr);
      });
    }
    return { url: `unix:${socketPath}`, port: 0 };
  }
  const { host, port } = address;
  await listenOn(server, { host, port }).catch((err: unknown) => {
    throw listenFailed(listener, `${host}:${port}`, err);
  });
  const bound = server.address();
  if (bound === null || typeof bound === 'string') throw new DriftlineError('INTERNAL', `the ${listener} server has no TCP address`);
  return { url: `http://${urlHost(bound.address)}:${bound.port}`, port: bound.port };
}

/** A host as it goes in a URL: an IPv6 address in brackets. */
export function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/**
 * Binds a TCP address for a moment and lets it go, so that a port that is taken fails a start
 * before it does something it cannot undo; LISTEN_FAILED naming the listener when it is.
 */
export async function probeTcpPort(listener: ListenerName, host: string, port: number): Promise<void> {
  const probe = createNetServer();
  await listenOn(probe, { host, port }).catch((err: unknown) => {
    throw listenFailed(listener, `${host}:${port}`, err);
  });
  await new Promise<void>((resolve) => probe.close(() => resolve()));
}

function listenOn(server: Server | NetServer, target: string | { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if (typeof target === 'string') server.listen(target, done);
    else server.listen(target.port, target.host, done);
  });
}

/** A socket file nobody answers on is left over from a process that was killed; anything else is not ours to remove. */
async function isStaleSocket(path: string): Promise<boolean> {
  if (!(await lstat(path)).isSocket()) return false;
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => resolve(true));
  });
}

/** Stops accepting, lets requests in flight finish for up to graceMs, then cuts what is left. */
function closeGracefully(server: Server, graceMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const force = setTimeout(() => server.closeAllConnections(), graceMs);
    server.close((err) => {
      clearTimeout(force);
      if (err) reject(err);
      else resolve();
    });
    server.closeIdleConnections();
  });
}
