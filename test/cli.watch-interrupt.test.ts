import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { RESTORE_TERMINAL } from '../cli/output.js';
import { REPO_ROOT } from './helpers/processes.js';

// A process with a live display (as `rollout status --watch` and the upload bar have), on a stream that says it is a terminal.
const CHILD = `
import { restoreTerminalOnSignal } from './cli/output.ts';
const terminal = { isTTY: true, write: (text) => process.stderr.write(text) };
restoreTerminalOnSignal(() => process.stderr.write('display stopped\\n'), terminal);
process.stderr.write('\\x1b[?25l\\x1b[?7l');
console.log('watching');
setInterval(() => {}, 1000);
`;

describe('CLI watch - Ctrl-C', () => {
  it('stops the display, shows the cursor and turns line wrap back on, then exits 130', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    await new Promise<void>((resolve) => createInterface({ input: child.stdout }).once('line', () => resolve()));
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(stderr).toContain('display stopped');
    expect(stderr.endsWith(RESTORE_TERMINAL)).toBe(true);
  });
});
