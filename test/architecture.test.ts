import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/processes.js';

const bin = (name: string): string => join(REPO_ROOT, 'node_modules', '.bin', name);

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

describe('architecture', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'driftline-arch-'));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it('generated wire types match proto/ (run `npm run proto:gen` after editing a .proto)', () => {
    execFileSync(bin('buf'), ['generate', '--output', scratch], { cwd: REPO_ROOT, stdio: 'pipe' });
    const fresh = join(scratch, 'common', 'proto');
    const committed = join(REPO_ROOT, 'common', 'proto');
    expect(filesUnder(committed)).toEqual(filesUnder(fresh));
    for (const file of filesUnder(fresh)) {
      expect(readFileSync(join(committed, file), 'utf8'), `common/proto/${file} is stale`).toBe(readFileSync(join(fresh, file), 'utf8'));
    }
  });

  it('the proto files pass buf lint', () => {
    const result = spawnSync(bin('buf'), ['lint'], { cwd: REPO_ROOT, encoding: 'utf8' });
    expect(result.stdout + result.stderr).toBe('');
    expect(result.status).toBe(0);
  });

  it('layers hold: no cycles, core code imports no transport, runtime or database, agent and control plane meet only in common/', () => {
    const result = spawnSync(
      bin('depcruise'),
      [
        '--config',
        '.dependency-cruiser.cjs',
        '--output-type',
        'err',
        'agent',
        'control-plane',
        'common',
        'cli',
        'client',
        'simulator',
        'demo',
        'worker',
        'trainers',
      ],
      {
        cwd: REPO_ROOT,
        encoding: 'utf8',
      },
    );
    expect(result.stdout + result.stderr).toContain('no dependency violations found');
    expect(result.status).toBe(0);
  });
});

describe('types', () => {
  it('the whole project typechecks under strict TypeScript', () => {
    const result = spawnSync(bin('tsc'), ['-p', '.'], { cwd: REPO_ROOT, encoding: 'utf8' });
    expect(result.stdout + result.stderr).toBe('');
    expect(result.status).toBe(0);
  }, 120_000);
});
