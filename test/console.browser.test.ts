/**
 * The web console in a real browser: Debian's chromium driven by playwright-core (no browser
 * download), against a running control plane. One browser for the file; a fresh context (its
 * own cookies) per test. Screenshots of each page land in test-results/console/.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { demoModelBytes } from './fixtures/models.js';
import { CHROMIUM, CHROMIUM_ARGS, hasChromium, startConsoleRig, type ConsoleRig } from './helpers/console.js';
import { rolloutApi, type RolloutApi } from './helpers/rollout-api.js';

export const SCREENSHOTS = join(process.cwd(), 'test-results', 'console');

if (!hasChromium) console.warn(`skipping the console browser tests: ${CHROMIUM} is not installed (apt-get install chromium)`);

describe.skipIf(!hasChromium)('web console - in chromium', () => {
  let rig: ConsoleRig;
  let browser: Browser;
  let api: RolloutApi;
  let rolloutId: string;
  const contexts: BrowserContext[] = [];

  /** A page in a context of its own, recording CSP violations and console errors. */
  async function newPage(
    options: { javaScriptEnabled?: boolean; viewport?: { width: number; height: number } } = {},
  ): Promise<{ page: Page; problems: string[] }> {
    const context = await browser.newContext({ baseURL: rig.base, viewport: options.viewport ?? { width: 1280, height: 900 }, ...options });
    contexts.push(context);
    const page = await context.newPage();
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    if (options.javaScriptEnabled !== false) {
      // Runs before the page's own scripts; init scripts are not subject to the page's CSP.
      await context.exposeBinding('reportViolation', (_source, text: string) => problems.push(`csp: ${text}`));
      await context.addInitScript(
        "document.addEventListener('securitypolicyviolation', (e) => window.reportViolation(e.violatedDirective + ' ' + e.blockedURI));",
      );
    }
    return { page, problems };
  }

  async function signInAs(page: Page, token: string): Promise<void> {
    await page.goto('/ui/login');
    await page.fill('#token', token);
    await page.click('button[type="submit"]');
    await page.waitForURL('**/ui/fleet');
  }

  const stateOf = async (page: Page): Promise<string> => (await page.textContent('[data-testid="rollout-state"]'))!.trim();

  beforeAll(async () => {
    const now = Date.now();
    rig = await startConsoleRig({
      devices: Array.from({ length: 4 }, (_, i) => ({
        id: `canary-${i}`,
        labels: { profile: 'jetson-orin-nano-jp6', site: 'canary' },
        lastSeenMs: now,
        agentVersion: '0.1.0',
      })),
    });
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
    api = rolloutApi(rig.cp.addresses.grpc, rig.cp.adminTokenFile);
    await api.upload('vibration', demoModelBytes(1), { 'driftline.profiles': 'jetson-*' });
    const rollout = await api.start({ model: 'vibration', version: 1, target: 'site=canary', wavePercents: [50, 100], bakeSeconds: 600, gates: ['none'] });
    rolloutId = rollout.id;
    mkdirSync(SCREENSHOTS, { recursive: true });
  });

  afterAll(async () => {
    for (const c of contexts) await c.close().catch(() => undefined);
    await browser?.close();
    api?.close();
    await rig?.stop();
  });

  it('keyboard - reaches the sign-in form from the top of the page and submits it with Enter', async () => {
    const { page } = await newPage();
    await page.goto('/ui/login');
    const reached: string[] = [];
    for (let i = 0; i < 8 && reached.at(-1) !== 'token'; i++) {
      await page.keyboard.press('Tab');
      reached.push(await page.evaluate<string>("document.activeElement?.id || document.activeElement?.className || document.activeElement?.tagName || ''"));
    }
    // The skip link comes first in the document, then the brand link, then the form's field.
    const trail = reached.join(' > ');
    expect(trail).toMatch(/skip-link > brand > token$/);
    await page.keyboard.type(rig.tokens.viewer);
    await page.keyboard.press('Enter');
    await page.waitForURL('**/ui/fleet');
    expect(await page.textContent('h1')).toBe('Fleet');
  });

  it('sign-in and sign-out - a signed-out browser is sent back to sign in', async () => {
    const { page } = await newPage();
    await signInAs(page, rig.tokens.viewer);
    expect(await page.textContent('.who')).toContain('console-viewer (viewer)');
    await page.click('.signout button');
    await page.waitForURL('**/ui/login');
    await page.goto('/ui/fleet');
    expect(new URL(page.url()).pathname).toBe('/ui/login');
    expect(await page.context().cookies()).toEqual([]);
  });

  it('sign-in - a wrong token is refused and the field does not keep it', async () => {
    const { page } = await newPage();
    await page.goto('/ui/login');
    await page.fill('#token', 'dlt_not-a-token');
    await page.click('button[type="submit"]');
    expect(await page.textContent('[role="alert"]')).toContain('not accepted');
    expect(await page.inputValue('#token')).toBe('');
    expect(await page.content()).not.toContain('dlt_not-a-token');
  });

  it('roles - a viewer sees no rollout buttons, and the server refuses the action anyway (403)', async () => {
    const { page } = await newPage();
    await signInAs(page, rig.tokens.viewer);
    await page.goto(`/ui/rollouts/${rolloutId}`);
    expect(await page.locator('.actions button').count()).toBe(0);
    const csrf = await page.getAttribute('.signout input[name="csrf"]', 'value');
    const res = await page.request.post(`/ui/rollouts/${rolloutId}/pause`, { form: { csrf: csrf! }, headers: { Origin: rig.base } });
    expect(res.status()).toBe(403);
    expect(res.headers()['driftline-error-code']).toBe('ROLE_INSUFFICIENT');
    expect((await api.get(rolloutId)).state).toBe('progressing');
  });

  it('CSRF - a POST without the session token is refused (403) and changes nothing', async () => {
    const { page } = await newPage();
    await signInAs(page, rig.tokens.operator);
    const res = await page.request.post(`/ui/rollouts/${rolloutId}/pause`, { form: { reason: 'no token' }, headers: { Origin: rig.base } });
    expect(res.status()).toBe(403);
    expect(res.headers()['driftline-error-code']).toBe('CONSOLE_CSRF_INVALID');
    expect((await api.get(rolloutId)).state).toBe('progressing');
  });

  it('rollouts - an operator pauses a rollout from its page, then sees it resume live, without a reload', async () => {
    const { page, problems } = await newPage();
    await signInAs(page, rig.tokens.operator);
    await page.goto(`/ui/rollouts/${rolloutId}`);
    expect(await stateOf(page)).toBe('progressing');
    await page.click('button:has-text("Pause")');
    await page.waitForURL(`**/ui/rollouts/${rolloutId}`);
    expect(await stateOf(page)).toBe('paused');
    expect((await api.get(rolloutId)).state).toBe('paused');
    const audit = await api.audit(rolloutId);
    expect(audit.at(-1)).toMatchObject({ action: 'pause', toState: 'paused' });

    // The page stays as it is (a marker on window survives only without a navigation) while
    // another operator resumes the rollout over gRPC: the SSE stream brings the new state.
    await page.evaluate('window.marker = 42');
    await page.waitForFunction("document.querySelector('[data-live]') !== null");
    await api.resume({ id: rolloutId });
    await page.waitForFunction("document.querySelector('[data-testid=\"rollout-state\"]')?.textContent?.trim() === 'progressing'", undefined, {
      timeout: 15_000,
    });
    expect(await page.evaluate('window.marker')).toBe(42);
    expect(await page.locator('button:has-text("Pause")').count()).toBe(1);
    await page.screenshot({ path: join(SCREENSHOTS, 'rollout.png'), fullPage: true });
    expect(problems).toEqual([]);
  });

  it('CSP - every page is served with the policy and renders without a violation or a console error', async () => {
    const { page, problems } = await newPage();
    await signInAs(page, rig.tokens.operator);
    const pages = {
      fleet: '/ui/fleet',
      device: '/ui/devices/canary-0',
      models: '/ui/models',
      model: '/ui/models/vibration',
      rollouts: '/ui/rollouts',
      drift: '/ui/drift',
      training: '/ui/training',
    };
    for (const [name, path] of Object.entries(pages)) {
      const res = await page.goto(path);
      expect(res!.status(), path).toBe(200);
      expect(res!.headers()['content-security-policy'], path).toContain("script-src 'self'");
      // console.js has run: times are in the viewer's zone, with UTC kept in the title.
      const time = page.locator('time[datetime]').first();
      if ((await time.count()) > 0) expect(await time.getAttribute('title'), path).toMatch(/UTC$/);
      await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
    }
    expect(problems).toEqual([]);
    // The detector itself: an inline script put in the page is blocked, and reported.
    await page.evaluate("const s = document.createElement('script'); s.textContent = 'window.ran = 1'; document.body.appendChild(s)");
    await expect.poll(() => problems.some((p) => p.startsWith('csp: script-src')), { timeout: 5_000 }).toBe(true);
    expect(await page.evaluate('window.ran')).toBeUndefined();
  });

  it('accessibility - pages read without JavaScript: the tables are rendered by the server', async () => {
    const { page } = await newPage({ javaScriptEnabled: false });
    await signInAs(page, rig.tokens.viewer);
    expect(await page.locator('table tbody tr').count()).toBe(4);
    expect(await page.textContent('table')).toContain('canary-0');
    await page.goto(`/ui/rollouts/${rolloutId}`);
    expect(await page.locator('#rollout-status table').first().textContent()).toContain('50 %');
    expect(await page.locator('time[datetime]').first().getAttribute('title')).toMatch(/UTC$/);
  });

  it('accessibility - a phone-sized viewport shows the page without horizontal scrolling of the body', async () => {
    const { page } = await newPage({ viewport: { width: 390, height: 844 } });
    await signInAs(page, rig.tokens.viewer);
    const overflow = await page.evaluate<number>('document.documentElement.scrollWidth - document.documentElement.clientWidth');
    expect(overflow).toBeLessThanOrEqual(0);
    await page.screenshot({ path: join(SCREENSHOTS, 'fleet-phone.png'), fullPage: true });
  });
});
