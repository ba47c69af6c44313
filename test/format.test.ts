import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as prettier from 'prettier';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/processes.js';

/**
 * Every committed source file is as prettier (.prettierrc.json: 160-character lines) writes it,
 * so a diff shows behaviour, never layout. `npm run format` rewrites what this test names.
 */
describe('format', () => {
  it('every tracked TypeScript, JavaScript and JSON file is formatted (npm run format fixes it)', async () => {
    const tracked = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '*.ts', '*.mjs', '*.cjs', '*.js', '*.json'], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
    })
      .split('\n')
      .filter(Boolean);
    const ignorePath = join(REPO_ROOT, '.prettierignore');
    const unformatted: string[] = [];
    for (const file of tracked) {
      const path = join(REPO_ROOT, file);
      const info = await prettier.getFileInfo(path, { ignorePath });
      if (info.ignored || !info.inferredParser) continue;
      const options = await prettier.resolveConfig(path);
      let source: string;
      try {
        source = readFileSync(path, 'utf8');
      } catch {
        continue; // listed by git but deleted in the work tree
      }
      if (!(await prettier.check(source, { ...options, filepath: path }))) unformatted.push(file);
    }
    expect(unformatted, `not formatted; run npm run format`).toEqual([]);
  }, 120_000);
});
