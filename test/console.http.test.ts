/**
 * The web console at the HTTP level (no browser): the session cookie's flags, expiry on a
 * ManualClock, sign-out, CSRF and Origin checks, roles, the security headers, and that a token
 * is never echoed back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { CONTENT_SECURITY_POLICY } from '../control-plane/console/console-http.js';
import { http, signIn, startConsoleRig, type ConsoleRig } from './helpers/console.js';

const MINUTE = 60_000;

describe('web console - sessions, cookies and CSRF over HTTP', () => {
  const clock = new ManualClock(Date.UTC(2026, 11, 3, 12, 0, 0));
  let rig: ConsoleRig;

  beforeAll(async () => {
    rig = await startConsoleRig({
      clock,
      devices: [{ id: 'edge-1', labels: { profile: 'jetson-orin-nano-jp6', site: 'plant-3' }, lastSeenMs: clock.now(), agentVersion: '0.1.0' }],
    });
  });
  afterAll(() => rig?.stop());

  it('sign-in - sets an HttpOnly, SameSite=Strict session cookie scoped to /ui with an expiry, not Secure on plain HTTP', async () => {
    const res = await http(rig.base, '/ui/login', { form: { token: rig.tokens.viewer }, headers: { Origin: rig.base } });
    expect(res.status).toBe(303);
    expect(res.headers.location).toBe('/ui/fleet');
    const cookie = ([] as string[]).concat(res.headers['set-cookie'] ?? [])[0]!;
    expect(cookie).toMatch(/^driftline_session=[A-Za-z0-9_-]{43};/);
    expect(cookie).toContain('HttpOnly');
    expect(cookie).toContain('SameSite=Strict');
    expect(cookie).toContain('Path=/ui');
    expect(cookie).toContain(`Max-Age=${8 * 3600}`);
    expect(cookie).not.toContain('Secure');
  });

  it('sign-in - never echoes the token, in the page, a header or the cookie, whether accepted or not', async () => {
    const refused = await http(rig.base, '/ui/login', { form: { token: `${rig.tokens.viewer}x` }, headers: { Origin: rig.base } });
    expect(refused.status).toBe(401);
    expect(refused.headers['driftline-error-code']).toBe('AUTH_INVALID');
    expect(refused.body).not.toContain(rig.tokens.viewer);
    const accepted = await http(rig.base, '/ui/login', { form: { token: rig.tokens.viewer }, headers: { Origin: rig.base } });
    expect(JSON.stringify(accepted.headers)).not.toContain(rig.tokens.viewer);
    const { cookie } = await signIn(rig.base, rig.tokens.viewer);
    const page = await http(rig.base, '/ui/fleet', { headers: { Cookie: cookie } });
    expect(page.status).toBe(200);
    expect(page.body).not.toContain(rig.tokens.viewer);
    expect(page.body).toContain('edge-1');
  });

  it('pages - carry a strict CSP, nosniff and a same-origin referrer policy, and are not cached', async () => {
    const { cookie } = await signIn(rig.base, rig.tokens.viewer);
    expect((await http(rig.base, '/ui/login')).headers['content-security-policy']).toBe(CONTENT_SECURITY_POLICY);
    for (const path of ['/ui/fleet', '/ui/models', '/ui/rollouts', '/ui/drift', '/ui/training', '/ui/devices/edge-1']) {
      const res = await http(rig.base, path, { headers: { Cookie: cookie } });
      expect(res.status, path).toBe(200);
      expect(res.headers['content-security-policy']).toBe(CONTENT_SECURITY_POLICY);
      expect(res.headers['content-security-policy']).toContain("frame-ancestors 'none'");
      expect(res.headers['x-content-type-options']).toBe('nosniff');
      expect(res.headers['referrer-policy']).toBe('same-origin');
      expect(res.headers['cache-control']).toBe('no-store');
      // No inline script, style or event handler anywhere: the CSP would block them.
      expect(res.body).not.toMatch(/<script(?![^>]*\bsrc=)/);
      expect(res.body).not.toMatch(/<style|\sstyle=|\son[a-z]+=/i);
    }
  });

  it('assets - uPlot is served from node_modules with a long cache lifetime', async () => {
    const res = await http(rig.base, '/ui/assets/uplot.iife.min.js');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toContain('text/javascript');
    expect(res.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    expect(res.body).toContain('uPlot');
    expect((await http(rig.base, '/ui/assets/server.ts')).status).toBe(404);
  });

  it('pages - send a visitor without a session to sign in, and refuse event streams with CONSOLE_SESSION_INVALID', async () => {
    const page = await http(rig.base, '/ui/fleet');
    expect(page.status).toBe(303);
    expect(page.headers.location).toBe('/ui/login');
    const stream = await http(rig.base, '/ui/events/rollouts/ro_x', { headers: { Cookie: 'driftline_session=forged' } });
    expect(stream.status).toBe(401);
    expect(stream.headers['driftline-error-code']).toBe('CONSOLE_SESSION_INVALID');
  });

  it('session - ends after the idle timeout and after its lifetime, whatever its use', async () => {
    const idle = await signIn(rig.base, rig.tokens.viewer);
    clock.advance(29 * MINUTE);
    expect((await http(rig.base, '/ui/fleet', { headers: { Cookie: idle.cookie } })).status).toBe(200);
    clock.advance(30 * MINUTE);
    expect((await http(rig.base, '/ui/fleet', { headers: { Cookie: idle.cookie } })).status).toBe(303);

    const busy = await signIn(rig.base, rig.tokens.viewer);
    for (let i = 0; i < 16; i++) {
      clock.advance(29 * MINUTE);
      expect((await http(rig.base, '/ui/models', { headers: { Cookie: busy.cookie } })).status).toBe(200);
    }
    // 16 × 29 min + 20 min = 8.07 h: past the 8 h lifetime, though used 20 min ago.
    clock.advance(20 * MINUTE);
    expect((await http(rig.base, '/ui/models', { headers: { Cookie: busy.cookie } })).status).toBe(303);
  });

  it('sign-out - deletes the session: its cookie no longer opens a page', async () => {
    const { cookie, csrf } = await signIn(rig.base, rig.tokens.viewer);
    const out = await http(rig.base, '/ui/logout', { form: { csrf }, headers: { Cookie: cookie, Origin: rig.base } });
    expect(out.status).toBe(303);
    expect(([] as string[]).concat(out.headers['set-cookie'] ?? [])[0]).toMatch(/^driftline_session=; .*Max-Age=0/);
    expect((await http(rig.base, '/ui/fleet', { headers: { Cookie: cookie } })).status).toBe(303);
  });

  it('CSRF - refuses a POST without the session token, with another session token, or from another origin', async () => {
    const a = await signIn(rig.base, rig.tokens.operator);
    const b = await signIn(rig.base, rig.tokens.operator);
    const none = await http(rig.base, '/ui/logout', { form: {}, headers: { Cookie: a.cookie, Origin: rig.base } });
    expect(none.status).toBe(403);
    expect(none.headers['driftline-error-code']).toBe('CONSOLE_CSRF_INVALID');
    const other = await http(rig.base, '/ui/logout', { form: { csrf: b.csrf }, headers: { Cookie: a.cookie, Origin: rig.base } });
    expect(other.headers['driftline-error-code']).toBe('CONSOLE_CSRF_INVALID');
    const foreign = await http(rig.base, '/ui/logout', { form: { csrf: a.csrf }, headers: { Cookie: a.cookie, Origin: 'http://evil.example' } });
    expect(foreign.status).toBe(403);
    expect(foreign.headers['driftline-error-code']).toBe('CONSOLE_CSRF_INVALID');
    const noOrigin = await http(rig.base, '/ui/logout', { form: { csrf: a.csrf }, headers: { Cookie: a.cookie } });
    expect(noOrigin.headers['driftline-error-code']).toBe('CONSOLE_CSRF_INVALID');
    // Still signed in: nothing was done.
    expect((await http(rig.base, '/ui/fleet', { headers: { Cookie: a.cookie } })).status).toBe(200);
  });

  it('roles - a viewer may not act on a rollout (ROLE_INSUFFICIENT), and a worker token does not sign in', async () => {
    const viewer = await signIn(rig.base, rig.tokens.viewer);
    const res = await http(rig.base, '/ui/rollouts/ro_any/pause', { form: { csrf: viewer.csrf }, headers: { Cookie: viewer.cookie, Origin: rig.base } });
    expect(res.status).toBe(403);
    expect(res.headers['driftline-error-code']).toBe('ROLE_INSUFFICIENT');
    const worker = await http(rig.base, '/ui/login', { form: { token: rig.tokens.worker }, headers: { Origin: rig.base } });
    expect(worker.status).toBe(401);
    expect(worker.headers['set-cookie']).toBeUndefined();
  });

  it('sign-in - refuses an address after too many failures (CONSOLE_LOGIN_RATE_LIMITED) until the window ends', async () => {
    clock.advance(16 * MINUTE);
    for (let i = 0; i < 5; i++) {
      const res = await http(rig.base, '/ui/login', { form: { token: 'dlt_wrong' }, headers: { Origin: rig.base } });
      expect(res.status).toBe(401);
    }
    const blocked = await http(rig.base, '/ui/login', { form: { token: rig.tokens.viewer }, headers: { Origin: rig.base } });
    expect(blocked.status).toBe(429);
    expect(blocked.headers['driftline-error-code']).toBe('CONSOLE_LOGIN_RATE_LIMITED');
    expect(blocked.headers['retry-after']).toBeDefined();
    clock.advance(15 * MINUTE);
    expect((await http(rig.base, '/ui/login', { form: { token: rig.tokens.viewer }, headers: { Origin: rig.base } })).status).toBe(303);
  });
});

describe('web console - behind a TLS-terminating proxy', () => {
  let rig: ConsoleRig;
  beforeAll(async () => {
    rig = await startConsoleRig({ config: { console: { secureCookie: true } } });
  });
  afterAll(() => rig?.stop());

  it('sign-in - marks the cookie Secure when console.secureCookie is set', async () => {
    const res = await http(rig.base, '/ui/login', { form: { token: rig.tokens.operator }, headers: { Origin: rig.base } });
    expect(([] as string[]).concat(res.headers['set-cookie'] ?? [])[0]).toContain('; Secure');
  });
});
