import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { Counter, type Registry } from 'prom-client';
import type { ErrorCode } from '../../common/errors.js';
import { startHttpServer, urlHost } from '../../common/http/server.js';
import type { Logger } from '../../common/logger.js';
import type { CredentialVerdict } from '../fleet/fleet-store.js';
import type { ArtifactStore } from './artifact-store.js';

export interface ArtifactServerOptions {
  host: string;
  port: number;
  artifacts: Pick<ArtifactStore, 'sizeOf' | 'read'>;
  verifyDeviceCredential(deviceId: string, secret: string): CredentialVerdict | Promise<CredentialVerdict>;
  /** Whether an authenticated device may download this artifact (see artifact-grants.ts). */
  mayDownload(deviceId: string, sha256: string): boolean | Promise<boolean>;
  /** Whether a bearer token is a live operator token (any role): `/metrics` names every device. */
  authenticateOperator(token: string): boolean | Promise<boolean>;
  metrics: Registry;
  /** Routes under /ui (the web console); answers false for a path it does not serve. */
  console?: { handle(req: IncomingMessage, res: ServerResponse): Promise<boolean> } | undefined;
  health: () => { ok: boolean; details: Record<string, unknown> };
  logger: Logger;
}

export interface ArtifactServer {
  readonly url: string;
  readonly port: number;
  /** Stops accepting, lets downloads in flight finish for graceMs, then cuts them (agents resume with Range). */
  close(graceMs?: number): Promise<void>;
}

/** Where a refusal's stable error code travels (also at the start of the plain-text body). */
export const ERROR_CODE_HEADER = 'Driftline-Error-Code';

const ARTIFACT_ROUTE = /^\/artifacts\/sha256\/([0-9a-f]{64})$/;

/**
 * Serves model artifacts to devices over plain HTTP(S) so downloads can resume with Range
 * and be cached by any proxy, plus the control plane's health and Prometheus endpoints.
 * Devices authenticate with the same id and secret they use for MQTT and get only what they
 * were told to install; `/metrics` wants an operator bearer token. Refusals carry a stable
 * code in the `Driftline-Error-Code` header and the body.
 */
export async function startArtifactServer(options: ArtifactServerOptions): Promise<ArtifactServer> {
  const { artifacts, logger } = options;
  const responses =
    (options.metrics.getSingleMetric('driftline_artifact_responses_total') as Counter<'status'> | undefined) ??
    new Counter({
      name: 'driftline_artifact_responses_total',
      help: 'Artifact HTTP responses by status code',
      labelNames: ['status'],
      registers: [options.metrics],
    });

  const send = (res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void => {
    res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body), ...headers });
    res.end(body);
  };
  const refuse = (res: ServerResponse, status: number, code: ErrorCode, message: string, headers: Record<string, string> = {}): void =>
    send(res, status, `${code}: ${message}\n`, { [ERROR_CODE_HEADER]: code, ...headers });

  async function serveArtifact(req: IncomingMessage, res: ServerResponse, sha256: string): Promise<void> {
    const credentials = parseBasicAuth(req.headers.authorization);
    if (!credentials || (await options.verifyDeviceCredential(credentials.user, credentials.password)) !== 'ok') {
      responses.inc({ status: 401 });
      return refuse(res, 401, credentials ? 'AUTH_INVALID' : 'AUTH_MISSING', 'device credentials required', {
        'WWW-Authenticate': 'Basic realm="driftline-artifacts", charset="UTF-8"',
      });
    }
    // Before the existence check, so a device cannot probe which artifacts the store holds.
    if (!(await options.mayDownload(credentials.user, sha256))) {
      responses.inc({ status: 403 });
      return refuse(res, 403, 'ARTIFACT_FORBIDDEN', 'this device was not sent this artifact');
    }
    const size = await artifacts.sizeOf(sha256);
    if (size === undefined) {
      responses.inc({ status: 404 });
      return refuse(res, 404, 'ARTIFACT_NOT_FOUND', 'no such artifact');
    }
    const headers: Record<string, string | number> = {
      'Content-Type': 'application/octet-stream',
      'Accept-Ranges': 'bytes',
      ETag: `"${sha256}"`,
      // The URL names the content, so it can never change.
      'Cache-Control': 'private, max-age=31536000, immutable',
    };
    const range = parseRange(req.headers.range, size);
    if (range === 'unsatisfiable') {
      responses.inc({ status: 416 });
      return send(res, 416, 'range not satisfiable\n', { 'Content-Range': `bytes */${size}` });
    }
    const status = range ? 206 : 200;
    res.writeHead(status, {
      ...headers,
      'Content-Length': range ? range.end - range.start + 1 : size,
      ...(range ? { 'Content-Range': `bytes ${range.start}-${range.end}/${size}` } : {}),
    });
    responses.inc({ status });
    if (req.method === 'HEAD' || size === 0) return void res.end();
    await pipeline(artifacts.read(sha256, range), res);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://artifacts').pathname;
    // The console takes its own methods (sign-in and actions are POST forms) and sets its own headers.
    if (options.console && (path === '/ui' || path.startsWith('/ui/')) && (await options.console.handle(req, res))) return;
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'method not allowed\n', { Allow: 'GET, HEAD' });
    if (path === '/healthz') {
      const { ok, details } = options.health();
      const body = JSON.stringify({ ok, details });
      res.writeHead(ok ? 200 : 503, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      return void res.end(req.method === 'HEAD' ? undefined : body);
    }
    if (path === '/metrics') {
      const token = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '')?.[1];
      if (!token || !(await options.authenticateOperator(token))) {
        return refuse(res, 401, token ? 'AUTH_INVALID' : 'AUTH_MISSING', 'metrics need an operator token (Authorization: Bearer)', {
          'WWW-Authenticate': 'Bearer realm="driftline-metrics"',
        });
      }
      const body = await options.metrics.metrics();
      res.writeHead(200, { 'Content-Type': options.metrics.contentType, 'Content-Length': Buffer.byteLength(body) });
      return void res.end(req.method === 'HEAD' ? undefined : body);
    }
    const match = ARTIFACT_ROUTE.exec(path);
    if (match) return serveArtifact(req, res, match[1]!);
    send(res, 404, 'not found\n');
  }

  const http = await startHttpServer({
    listener: 'http',
    address: { host: options.host, port: options.port },
    handle,
    onError(err, req, res) {
      // A client that goes away mid-download is routine; anything else is worth a log line.
      if ((err as NodeJS.ErrnoException).code !== 'ERR_STREAM_PREMATURE_CLOSE') logger.error({ err, url: req.url }, 'artifact request failed');
      if (!res.headersSent) send(res, 500, 'internal error\n');
      else res.destroy();
    },
  });
  const port = http.port;
  // The configured host, not the bound address: the URL devices are given names what the operator chose.
  const url = `http://${urlHost(options.host)}:${port}`;
  logger.info({ url }, 'artifact server listening');

  return {
    url,
    port,
    close: (graceMs = 0) => http.close(graceMs),
  };
}

function parseBasicAuth(header: string | undefined): { user: string; password: string } | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(header ?? '');
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon > 0 ? { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) } : undefined;
}

/**
 * One `bytes=` range (RFC 9110 14.1.2). A header this server does not honour (several
 * ranges, another unit, bad syntax) is ignored and the whole artifact is sent, as allowed.
 */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header?.trim() ?? '');
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (m[2] !== '' && Number(m[2]) < start) return undefined;
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}
