import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { readBody } from '../../common/http/body.js';
import { asDriftlineError, DriftlineError, type ErrorCode } from '../../common/errors.js';
import { roleAtLeast } from '../fleet/operator-tokens.js';
import type { OperatorCommand } from '../rollout/state-machine.js';
import { isActive } from '../rollout/plan.js';
import { isTerminal } from '../training/job-state-machine.js';
import { html, type SafeHtml } from './html.js';
import { BUILT_IN_NAV, page, type NavEntry } from './layout.js';
import {
  devicePage,
  driftPage,
  fleetPage,
  modelPage,
  modelsPage,
  ROLLOUT_COMMANDS,
  rolloutPage,
  rolloutsPage,
  rolloutStatus,
  trainingJobPage,
  trainingJobStatus,
  trainingPage,
} from './pages.js';
import type { ConsoleDeps } from './ports.js';
import { ConsoleSessions, csrfMatches, LoginLimiter, type ConsoleSession } from './sessions.js';

export const SESSION_COOKIE = 'driftline_session';

/** Every console response: scripts and styles only from this origin, never inline, never framed. */
export const CONTENT_SECURITY_POLICY =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const SECURITY_HEADERS: Record<string, string> = {
  'Content-Security-Policy': CONTENT_SECURITY_POLICY,
  'X-Content-Type-Options': 'nosniff',
  // same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on form POSTs, which the Origin check refuses.
  'Referrer-Policy': 'same-origin',
  'X-Frame-Options': 'DENY',
  'Cross-Origin-Opener-Policy': 'same-origin',
};

/** A form body is small: a token, a CSRF token, a reason. */
const FORM_LIMIT = { maxBytes: 8 * 1024, setting: '(fixed)', reason: 'a console form' };

const here = dirname(fileURLToPath(import.meta.url));
const uplotDir = dirname(createRequire(import.meta.url).resolve('uplot/dist/uPlot.iife.min.js'));

/** Files the console serves; uPlot from node_modules, never from a CDN. */
const ASSETS: Record<string, { file: string; type: string }> = {
  'console.js': { file: join(here, 'assets', 'console.js'), type: 'text/javascript; charset=utf-8' },
  'console.css': { file: join(here, 'assets', 'console.css'), type: 'text/css; charset=utf-8' },
  'uplot.iife.min.js': { file: join(uplotDir, 'uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  'uplot.min.css': { file: join(uplotDir, 'uPlot.min.css'), type: 'text/css; charset=utf-8' },
};

export interface ConsoleHttp {
  /** Answers a request under /ui; false for any other path (the caller routes it). */
  handle(req: IncomingMessage, res: ServerResponse): Promise<boolean>;
  /** Ends open event streams (shutdown: they would hold the HTTP server's drain). */
  close(): void;
  readonly sessions: ConsoleSessions;
}

/**
 * The web console: server-rendered pages over the same core objects the gRPC services use,
 * a session cookie from an operator token, CSRF-checked forms for operator actions, and
 * Server-Sent Events from the rollout engine and training engine for live pages.
 */
export function createConsoleHttp(deps: ConsoleDeps): ConsoleHttp {
  const { config, logger } = deps;
  const sessions = new ConsoleSessions(deps.clock, { sessionTtlMs: config.sessionTtlMs, idleTimeoutMs: config.idleTimeoutMs });
  const limiter = new LoginLimiter(deps.clock, { maxFailures: config.maxFailedLogins, windowMs: config.loginWindowMs });
  const streams = new Set<() => void>();
  const nav: NavEntry[] = [...BUILT_IN_NAV, ...(deps.extraPages ?? []).map((p) => ({ path: p.path, title: p.title }))];
  const assetCache = new Map<string, Buffer>();

  const secure = (req: IncomingMessage): boolean => config.secureCookie || Boolean((req.socket as TLSSocket).encrypted);

  function send(res: ServerResponse, status: number, body: string | Buffer, headers: Record<string, string> = {}): void {
    res.writeHead(status, {
      ...SECURITY_HEADERS,
      'Content-Type': 'text/html; charset=utf-8',
      'Cache-Control': 'no-store',
      'Content-Length': String(Buffer.byteLength(body)),
      ...headers,
    });
    res.end(body);
  }

  function redirect(res: ServerResponse, location: string, headers: Record<string, string | string[]> = {}): void {
    res.writeHead(303, { ...SECURITY_HEADERS, Location: location, 'Cache-Control': 'no-store', 'Content-Length': '0', ...headers });
    res.end();
  }

  function refuse(res: ServerResponse, status: number, code: ErrorCode, message: string, session?: ConsoleSession): void {
    send(res, status, page({ title: 'Not allowed', session, nav, body: html`<p class="error" role="alert"><code>${code}</code> ${message}</p>` }), {
      'Driftline-Error-Code': code,
    });
  }

  function cookie(value: string, maxAgeS: number, req: IncomingMessage): string {
    return `${SESSION_COOKIE}=${value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=${maxAgeS}${secure(req) ? '; Secure' : ''}`;
  }

  function sessionOf(req: IncomingMessage): ConsoleSession | undefined {
    return sessions.get(parseCookies(req.headers.cookie)[SESSION_COOKIE]);
  }

  /** A session whose token was revoked since sign-in ends now. */
  async function liveSession(req: IncomingMessage): Promise<ConsoleSession | undefined> {
    const session = sessionOf(req);
    if (!session) return undefined;
    const token = (await deps.tokens.list()).find((t) => t.id === session.tokenId);
    if (!token || token.revoked) {
      sessions.deleteByToken(session.tokenId);
      return undefined;
    }
    return session;
  }

  /** POSTs come from this origin only: Origin (or, without it, Referer) must name the host the request came to. */
  function sameOrigin(req: IncomingMessage): boolean {
    const host = req.headers.host;
    const origin = req.headers.origin ?? (req.headers.referer ? safeOrigin(req.headers.referer) : undefined);
    if (!host || !origin || origin === 'null') return false;
    return origin === `http://${host}` || origin === `https://${host}`;
  }

  async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/x-www-form-urlencoded')
      throw new DriftlineError('REQUEST_INVALID', 'a console form is sent as application/x-www-form-urlencoded');
    return new URLSearchParams((await readBody(req, FORM_LIMIT)).toString('utf8'));
  }

  async function serveAsset(req: IncomingMessage, res: ServerResponse, name: string): Promise<void> {
    const asset = ASSETS[name];
    if (!asset) return send(res, 404, 'not found\n', { 'Content-Type': 'text/plain; charset=utf-8' });
    let body = assetCache.get(name);
    if (!body) {
      body = await readFile(asset.file);
      assetCache.set(name, body);
    }
    // uPlot's files are pinned by package-lock: a year; ours change with the control plane, so an hour and revalidation.
    const cache = name.startsWith('uplot') ? 'public, max-age=31536000, immutable' : 'public, max-age=3600';
    send(res, 200, req.method === 'HEAD' ? '' : body, { 'Content-Type': asset.type, 'Cache-Control': cache, 'Content-Length': String(body.length) });
  }

  function loginPage(message?: string): string {
    return page({
      title: 'Sign in',
      nav,
      body: html`${message ? html`<p class="error" role="alert">${message}</p>` : ''}
        <form class="login" method="post" action="/ui/login">
          <label for="token">Operator token</label>
          <input id="token" name="token" type="password" autocomplete="current-password" required maxlength="256" autofocus />
          <p class="hint">
            A token from <code>driftline tokens create</code>, or the admin token in the control plane's data folder (<code>admin.token</code>). It is sent
            once, in this form's body; the browser keeps only a session cookie.
          </p>
          <button type="submit">Sign in</button>
        </form>`,
    });
  }

  async function login(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const address = req.socket.remoteAddress ?? '';
    const wait = limiter.blockedFor(address);
    if (wait > 0) {
      req.resume();
      return send(res, 429, loginPage(`Too many failed sign-ins; try again in ${Math.ceil(wait / 60_000)} min.`), {
        'Driftline-Error-Code': 'CONSOLE_LOGIN_RATE_LIMITED',
        'Retry-After': String(Math.ceil(wait / 1000)),
      });
    }
    const form = await readForm(req);
    const secret = form.get('token')?.trim() ?? '';
    const token = secret && secret.length <= 256 ? await deps.tokens.authenticate(secret) : undefined;
    // A worker token reaches WorkerService and nothing else, the console included.
    if (!token || token.role === 'worker') {
      limiter.recordFailure(address);
      // Logged without the token, by address only.
      logger.warn({ address }, 'console sign-in refused');
      return send(res, 401, loginPage('That token was not accepted.'), { 'Driftline-Error-Code': secret ? 'AUTH_INVALID' : 'AUTH_MISSING' });
    }
    limiter.recordSuccess(address);
    const session = sessions.create(token);
    logger.info({ token: token.id, role: token.role }, 'console sign-in');
    redirect(res, '/ui/fleet', { 'Set-Cookie': cookie(session.id, Math.floor(config.sessionTtlMs / 1000), req) });
  }

  function events(req: IncomingMessage, res: ServerResponse, subscribe: (send: (event: string, data: unknown) => void, end: () => void) => () => void): void {
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      Connection: 'keep-alive',
      'X-Accel-Buffering': 'no',
    });
    res.write(': connected\n\n');
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      streams.delete(end);
      unsubscribe();
      res.end();
    };
    const sendEvent = (event: string, data: unknown): void => {
      if (!ended) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    streams.add(end);
    const unsubscribe = subscribe(sendEvent, end);
    req.once('close', end);
  }

  function rolloutEvents(req: IncomingMessage, res: ServerResponse, id: string, session: ConsoleSession): Promise<void> {
    return deps.rollouts.get(id).then(() =>
      events(req, res, (sendEvent, end) => {
        let last = '';
        let sending = Promise.resolve();
        const push = (): void => {
          sending = sending
            .then(async () => {
              if (!sessions.get(session.id)) return end();
              const r = await deps.rollouts.get(id);
              const body = (await rolloutStatus(deps, r, session)).text;
              if (body !== last) {
                last = body;
                sendEvent('rollout', { id: r.id, state: r.state, html: body });
              }
              if (!isActive(r.state)) end();
            })
            .catch((err: unknown) => {
              logger.warn({ err, rollout: id }, 'console rollout stream failed');
              end();
            });
        };
        const unsubscribe = deps.rollouts.subscribe((r) => {
          if (r.id === id) push();
        });
        // Device counts move between transitions, as in WatchRollout.
        const refresh = setInterval(push, config.watchIntervalMs);
        push();
        return () => {
          unsubscribe();
          clearInterval(refresh);
        };
      }),
    );
  }

  async function trainingEvents(req: IncomingMessage, res: ServerResponse, id: string): Promise<void> {
    const training = deps.training;
    if (!training) throw new DriftlineError('NOT_IMPLEMENTED', 'this control plane does not run training jobs');
    await training.get(id);
    events(req, res, (sendEvent, end) => {
      const stop = new AbortController();
      void (async () => {
        try {
          for await (const update of training.watch(id, { signal: stop.signal })) {
            if (stop.signal.aborted) break;
            sendEvent('job', {
              id,
              state: update.job.state,
              html: (await trainingJobStatus(update.job)).text,
              logLines: update.logLines.map((l) => `[${new Date(l.atMs).toISOString()}] #${l.attempt} ${l.text}`),
            });
            if (isTerminal(update.job.state)) break;
          }
        } catch (err) {
          if (!stop.signal.aborted) logger.warn({ err, job: id }, 'console training stream failed');
        }
        end();
      })();
      return () => stop.abort();
    });
  }

  async function rolloutCommand(
    req: IncomingMessage,
    res: ServerResponse,
    session: ConsoleSession,
    id: string,
    cmd: OperatorCommand,
    form: URLSearchParams,
  ): Promise<void> {
    if (!roleAtLeast(session.role, 'operator')) return refuse(res, 403, 'ROLE_INSUFFICIENT', 'rollout actions need the operator role', session);
    try {
      await deps.rollouts.command(
        id,
        cmd,
        { actor: session.tokenId, clientRequestId: '' },
        (form.get('reason') ?? '').slice(0, 500) || `${cmd} from the web console`,
      );
    } catch (err) {
      const e = asDriftlineError(err);
      if (e.code !== 'ROLLOUT_STATE_INVALID') throw err;
      return refuse(res, 409, e.code, e.message, session);
    }
    logger.info({ rollout: id, command: cmd, by: session.tokenId }, 'rollout command from the web console');
    redirect(res, `/ui/rollouts/${encodeURIComponent(id)}`);
  }

  async function route(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const path = url.pathname;
    const method = req.method ?? 'GET';
    if (path.startsWith('/ui/assets/')) {
      if (method !== 'GET' && method !== 'HEAD')
        return send(res, 405, 'method not allowed\n', { Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8' });
      return serveAsset(req, res, path.slice('/ui/assets/'.length));
    }
    if (method === 'POST') {
      // Before anything else: a form from another origin is refused whoever sent it.
      if (!sameOrigin(req)) {
        req.resume();
        return refuse(res, 403, 'CONSOLE_CSRF_INVALID', 'this form did not come from the console');
      }
      if (path === '/ui/login') return login(req, res);
      const session = await liveSession(req);
      if (!session) {
        req.resume();
        return refuse(res, 401, 'CONSOLE_SESSION_INVALID', 'sign in again');
      }
      const form = await readForm(req);
      if (!csrfMatches(session, form.get('csrf') ?? undefined))
        return refuse(res, 403, 'CONSOLE_CSRF_INVALID', 'the form lacks its CSRF token; reload the page', session);
      if (path === '/ui/logout') {
        sessions.delete(session.id);
        logger.info({ token: session.tokenId }, 'console sign-out');
        return redirect(res, '/ui/login', { 'Set-Cookie': cookie('', 0, req) });
      }
      const command = /^\/ui\/rollouts\/([^/]+)\/([a-z]+)$/.exec(path);
      if (command && ROLLOUT_COMMANDS.includes(command[2]!))
        return rolloutCommand(req, res, session, decodeURIComponent(command[1]!), command[2] as OperatorCommand, form);
      return refuse(res, 404, 'REQUEST_INVALID', 'no such action', session);
    }
    if (method !== 'GET' && method !== 'HEAD')
      return send(res, 405, 'method not allowed\n', { Allow: 'GET, HEAD, POST', 'Content-Type': 'text/plain; charset=utf-8' });
    if (path === '/ui/login') {
      if (sessionOf(req)) return redirect(res, '/ui/fleet');
      return send(res, 200, loginPage());
    }
    const session = await liveSession(req);
    if (!session) {
      if (path.startsWith('/ui/events/')) return refuse(res, 401, 'CONSOLE_SESSION_INVALID', 'sign in again');
      return redirect(res, '/ui/login');
    }
    const show = (title: string, body: SafeHtml, active: string, charts = false): void => send(res, 200, page({ title, body, session, nav, active, charts }));
    const param = (re: RegExp): string | undefined => {
      const m = re.exec(path);
      return m ? decodeURIComponent(m[1]!) : undefined;
    };
    if (path === '/ui' || path === '/ui/') return redirect(res, '/ui/fleet');
    if (path === '/ui/fleet') return show('Fleet', await fleetPage(deps, url), '/ui/fleet');
    let id: string | undefined;
    if ((id = param(/^\/ui\/devices\/([^/]+)$/))) return show(`Device ${id}`, await devicePage(deps, id), '/ui/fleet');
    if (path === '/ui/models') return show('Models', await modelsPage(deps), '/ui/models');
    if ((id = param(/^\/ui\/models\/([^/]+)$/))) return show(`Model ${id}`, await modelPage(deps, id), '/ui/models');
    if (path === '/ui/rollouts') return show('Rollouts', await rolloutsPage(deps), '/ui/rollouts');
    if ((id = param(/^\/ui\/rollouts\/([^/]+)$/))) return show(`Rollout ${id}`, await rolloutPage(deps, id, session), '/ui/rollouts');
    if (path === '/ui/drift') {
      const drift = await driftPage(deps, url);
      return show('Drift', drift.body, '/ui/drift', drift.charts);
    }
    if (path === '/ui/training') return show('Training', await trainingPage(deps), '/ui/training');
    if ((id = param(/^\/ui\/training\/([^/]+)$/))) return show(`Training job ${id}`, await trainingJobPage(deps, id), '/ui/training');
    if ((id = param(/^\/ui\/events\/rollouts\/([^/]+)$/))) return rolloutEvents(req, res, id, session);
    if ((id = param(/^\/ui\/events\/training\/([^/]+)$/))) return trainingEvents(req, res, id);
    const extra = (deps.extraPages ?? []).find((p) => path === p.path || (p.path.endsWith('/') && path.startsWith(p.path)));
    if (extra) return show(extra.title, await extra.render({ session, url }), extra.path);
    return send(res, 404, page({ title: 'Not found', session, nav, body: html`<p>No page at <code>${path}</code>.</p>` }));
  }

  return {
    sessions,
    async handle(req, res) {
      const url = new URL(req.url ?? '/', 'http://console');
      if (url.pathname !== '/ui' && !url.pathname.startsWith('/ui/')) return false;
      try {
        await route(req, res, url);
      } catch (err) {
        const e = asDriftlineError(err);
        const status = { not_found: 404, invalid: 400, forbidden: 403, unauthenticated: 401, exhausted: 413, conflict: 409 }[e.kind as string] ?? 500;
        if (status === 500) logger.error({ err, path: url.pathname }, 'console request failed');
        if (res.headersSent) res.destroy();
        else refuse(res, status, status === 500 ? 'INTERNAL' : e.code, status === 500 ? 'internal error' : e.message, sessionOf(req));
      }
      return true;
    },
    close() {
      for (const end of [...streams]) end();
    },
  };
}

function parseCookies(header: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return out;
}

function safeOrigin(referer: string): string | undefined {
  try {
    return new URL(referer).origin;
  } catch {
    return undefined;
  }
}
