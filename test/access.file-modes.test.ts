import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startEnrolledAgent, startTestControlPlane } from './helpers/wired-agent.js';

const modeOf = (path: string): string => (statSync(path).mode & 0o777).toString(8);

/** A folder and empty database files as an older install (or a loose umask) left them: readable by everyone. */
function looseDataDir(dir: string, databases: readonly string[]): void {
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755);
  for (const file of databases) {
    // An empty file is a valid empty SQLite database, and an empty -wal a valid empty log.
    writeFileSync(join(dir, file), '');
    chmodSync(join(dir, file), 0o644);
  }
}

describe('file modes of the data folders', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-modes-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('access - a new control plane and agent create their folders 0700 and their databases 0600', async () => {
    const { cp, api } = await startTestControlPlane(dir);
    const agentDir = join(dir, 'agent');
    const agent = await startEnrolledAgent(cp, api, 'edge-modes-1', agentDir);
    try {
      expect(modeOf(join(dir, 'cp'))).toBe('700');
      expect(modeOf(agentDir)).toBe('700');
      for (const file of [join(dir, 'cp', 'control-plane.db'), join(agentDir, 'buffer.db')]) {
        for (const suffix of ['', '-wal', '-shm']) {
          if (suffix === '' || existsSync(`${file}${suffix}`)) expect(modeOf(`${file}${suffix}`), `${file}${suffix}`).toBe('600');
        }
      }
    } finally {
      await agent.shutdown();
      api.close();
      await cp.shutdown();
    }
  });

  it('access - folders and databases left world-readable are tightened to 0700 and 0600 at start', async () => {
    looseDataDir(join(dir, 'cp'), ['control-plane.db', 'control-plane.db-wal']);
    const agentDir = join(dir, 'agent');
    looseDataDir(agentDir, ['buffer.db', 'buffer.db-wal']);

    const { cp, api } = await startTestControlPlane(dir);
    const agent = await startEnrolledAgent(cp, api, 'edge-modes-2', agentDir);
    try {
      expect(modeOf(join(dir, 'cp'))).toBe('700');
      expect(modeOf(join(dir, 'cp', 'control-plane.db'))).toBe('600');
      expect(modeOf(join(dir, 'cp', 'control-plane.db-wal'))).toBe('600');
      expect(modeOf(agentDir)).toBe('700');
      expect(modeOf(join(agentDir, 'buffer.db'))).toBe('600');
      expect(modeOf(join(agentDir, 'buffer.db-wal'))).toBe('600');
    } finally {
      await agent.shutdown();
      api.close();
      await cp.shutdown();
    }
  });
});
