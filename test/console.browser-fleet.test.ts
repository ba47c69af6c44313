/**
 * The fleet page at 10,000 devices, in chromium: seeded straight through the SQLite
 * repository, paginated and searched in SQL. First paint and search latency are measured and
 * printed (a JSON line), not asserted: this machine is shared and noisy.
 */
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEVICES_PER_PAGE } from '../control-plane/console/pages.js';
import { CHROMIUM, CHROMIUM_ARGS, hasChromium, startConsoleRig, type ConsoleRig } from './helpers/console.js';

const DEVICES = 10_000;
const SCREENSHOTS = join(process.cwd(), 'test-results', 'console');

if (!hasChromium) console.warn(`skipping the console fleet browser test: ${CHROMIUM} is not installed (apt-get install chromium)`);

describe.skipIf(!hasChromium)('web console - the fleet table at 10,000 devices', () => {
  let rig: ConsoleRig;
  let browser: Browser;

  beforeAll(async () => {
    const now = Date.now();
    rig = await startConsoleRig({
      devices: Array.from({ length: DEVICES }, (_, i) => ({
        id: `dev-${String(i).padStart(5, '0')}`,
        labels: { profile: i % 4 === 0 ? 'raspberry-pi-5' : 'jetson-orin-nano-jp6', site: `plant-${i % 10}` },
        // Every third device is offline (never seen).
        ...(i % 3 === 0 ? {} : { lastSeenMs: now, agentVersion: i % 2 === 0 ? '0.1.0' : '0.2.0' }),
      })),
    });
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
    mkdirSync(SCREENSHOTS, { recursive: true });
  });

  afterAll(async () => {
    await browser?.close();
    await rig?.stop();
  });

  it('fleet - counts, paginates and searches 10,000 devices', async () => {
    const context = await browser.newContext({ baseURL: rig.base, viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    await page.goto('/ui/login');
    await page.fill('#token', rig.tokens.viewer);
    const started = performance.now();
    await page.click('button[type="submit"]');
    await page.waitForURL('**/ui/fleet');
    await page.waitForSelector('table tbody tr');
    const firstPaintMs = performance.now() - started;

    const online = DEVICES - Math.ceil(DEVICES / 3);
    expect(await page.textContent('[data-testid="online-count"]')).toBe(online.toLocaleString('en-US'));
    expect(await page.textContent('[data-testid="device-total"]')).toContain(`${DEVICES.toLocaleString('en-US')} devices match; page 1 of 200`);
    expect(await page.locator('table tbody tr').count()).toBe(DEVICES_PER_PAGE);
    expect(await page.textContent('table tbody tr:first-child')).toContain('dev-00000');
    expect(await page.textContent('.cards')).toContain('raspberry-pi-5');
    await page.screenshot({ path: join(SCREENSHOTS, 'fleet-10000.png'), fullPage: false });

    await page.click('a[rel="next"]');
    await page.waitForURL('**/ui/fleet?page=2');
    expect(await page.textContent('table tbody tr:first-child')).toContain(`dev-${String(DEVICES_PER_PAGE).padStart(5, '0')}`);

    const searchStarted = performance.now();
    await page.fill('#q', 'dev-0999');
    await page.press('#q', 'Enter');
    await page.waitForURL('**/ui/fleet?q=dev-0999');
    const searchMs = performance.now() - searchStarted;
    // dev-09990 … dev-09999.
    expect(await page.locator('table tbody tr').count()).toBe(10);
    expect(await page.textContent('[data-testid="device-total"]')).toContain('10 devices match; page 1 of 1');

    // A label search, paginated too: plant-7 holds every tenth device.
    await page.goto('/ui/fleet?q=plant-7&page=3');
    expect(await page.textContent('[data-testid="device-total"]')).toContain('1,000 devices match; page 3 of 20');
    expect(await page.textContent('table tbody tr:first-child')).toContain('dev-01007');
    await context.close();
    console.log(JSON.stringify({ bench: 'console-fleet-table', devices: DEVICES, firstPaintMs: Math.round(firstPaintMs), searchMs: Math.round(searchMs) }));
  });
});
