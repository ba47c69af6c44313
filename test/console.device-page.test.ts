/**
 * The fleet's paginated device query and summary (the web console's fleet page) on a real
 * SQLite file, and the console's HTML escaping.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import { escapeHtml, html } from '../control-plane/console/html.js';
import { FleetStore } from '../control-plane/fleet/fleet-store.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { SqliteFleetRepository } from '../control-plane/store/sqlite/fleet-repository.js';

describe('fleet store - a page of devices, searched in SQL', () => {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-device-page-'));
  const db = openDatabase(join(dir, 'fleet.db'));
  const repository = new SqliteFleetRepository(db);
  const fleet = new FleetStore(repository);

  beforeAll(async () => {
    await repository.transaction(async (tx) => {
      for (let i = 0; i < 120; i++)
        await tx.saveEnrolledDevice({
          id: `d-${String(i).padStart(3, '0')}`,
          labels: { profile: i < 100 ? 'jetson' : 'pi', site: `s${i % 3}` },
          secretHash: 'x',
          enrolledAtMs: 1,
        });
      await tx.saveEnrolledDevice({ id: 'odd_one', labels: { note: '50%' }, secretHash: 'x', enrolledAtMs: 1 });
      await tx.recordSeen('d-000', 1000);
      await tx.recordSeen('d-001', 10);
      await tx.decommission('d-119');
    });
  });
  afterAll(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('page - returns one page by id with the total, decommissioned devices left out', async () => {
    const first = await fleet.page({ offset: 0, limit: 50 });
    expect(first.total).toBe(120);
    expect(first.devices).toHaveLength(50);
    expect(first.devices[0]!.id).toBe('d-000');
    const last = await fleet.page({ offset: 100, limit: 50 });
    expect(last.devices.map((d) => d.id)).toEqual([...Array.from({ length: 19 }, (_, i) => `d-${100 + i}`), 'odd_one']);
    expect((await fleet.page({ offset: 0, limit: 500, includeDecommissioned: true })).total).toBe(121);
  });

  it('page - searches ids and labels, with LIKE wildcards taken literally', async () => {
    expect((await fleet.page({ search: 'd-01' })).total).toBe(10);
    expect((await fleet.page({ search: 's1' })).total).toBe(40);
    expect((await fleet.page({ search: '50%' })).devices.map((d) => d.id)).toEqual(['odd_one']);
    // "_" matches only an underscore, not any one character.
    expect((await fleet.page({ search: 'd_0' })).total).toBe(0);
    expect((await fleet.page({ search: 'odd_' })).total).toBe(1);
  });

  it('page - refuses a bad page or search with REQUEST_INVALID', async () => {
    for (const query of [{ limit: 0 }, { limit: 501 }, { offset: -1 }, { offset: 1.5 }, { search: 'x'.repeat(129) }]) {
      const err = await fleet.page(query).catch((e: unknown) => e);
      expect(err, JSON.stringify(query)).toBeInstanceOf(DriftlineError);
      expect((err as DriftlineError).code).toBe('REQUEST_INVALID');
    }
  });

  it('summary - counts online devices and devices by profile', async () => {
    const summary = await fleet.summary(100);
    expect(summary.enrolled).toBe(120);
    expect(summary.online).toBe(1);
    expect(summary.byProfile).toEqual({ jetson: 100, pi: 19, '': 1 });
    expect(summary.byAgentVersion).toEqual({ '': 120 });
  });
});

describe('console html - every interpolated value is escaped', () => {
  it('html - escapes text and attribute values, and keeps nested html as markup', () => {
    const evil = `"><script>alert('x')</script>&\``;
    const out = html`<a title="${evil}">${evil}</a>${html`<b>${'<i>'}</b>`}${[html`<br />`, '<hr>']}${null}${undefined}${false}`.text;
    expect(out).toBe(
      '<a title="&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#96;">&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#96;</a><b>&lt;i&gt;</b><br />&lt;hr&gt;',
    );
    expect(escapeHtml(0)).toBe('0');
  });
});
