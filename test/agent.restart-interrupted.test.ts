import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { startAgent } from '../agent/agent.js';
import { loadAgentConfig } from '../agent/config.js';
import type { ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { inferOnce } from './helpers/agent-traffic.js';
import type { FleetApi } from './helpers/fleet-api.js';
import { waitFor } from './helpers/processes.js';
import { startEnrolledAgent, startTestControlPlane } from './helpers/wired-agent.js';

const row = [4.1, 12, 2.9, 3.2, 2.5, 0.9, 0.4, 41];

/**
 * The whole agent, restarted on a data folder whose model install was cut off mid-activation
 * (a kill -9 or a power cut), must come up: finishing or refusing that install reports the
 * device's state from inside start-up, before the agent is ready. (The model manager's own
 * kill -9 tests run it without the composition root around it.)
 */
describe('agent restart after an interrupted model activation', () => {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-restart-interrupted-'));
  const agentDir = join(dir, 'agent');
  let cp: ControlPlane | undefined;
  let api: FleetApi | undefined;
  afterAll(async () => {
    api?.close();
    await cp?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  it('restart - refuses an activation interrupted more often than models.activationRetries, keeps the old model serving and logs only the refusal', async () => {
    ({ cp, api } = await startTestControlPlane(dir));
    const first = await startEnrolledAgent(cp, api, 'edge-interrupted', agentDir);
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration', ['edge-interrupted']);
    await waitFor(
      () => inferOnce(first.localApiUrl, row).then((r) => r.status),
      (s) => s === 200,
      { what: 'v1 active on the agent' },
    );
    await first.shutdown();

    // What a restart finds after the activation of the next release died twice: its install still 'activating'.
    const db = new Database(join(agentDir, 'buffer.db'));
    const key = 'models.slot.vibration';
    const persisted = JSON.parse((db.prepare('SELECT value FROM agent_state WHERE key = ?').get(key) as { value: string }).value) as {
      active: { name: string; version: number; sha256: string };
      appliedRevision: number;
    };
    const desired = { revision: persisted.appliedRevision + 1, model: { name: 'vibration', version: 2, sha256: 'ab'.repeat(32) } };
    db.prepare('UPDATE agent_state SET value = ? WHERE key = ?').run(
      JSON.stringify({ ...persisted, install: { state: 'activating', desired, interruptedActivations: 5 } }),
      key,
    );
    db.close();

    const lines: Array<{ level: number; msg: string; code?: string; err?: { message?: string } }> = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const config = loadAgentConfig({ env: {}, flags: { deviceId: 'edge-interrupted', server: cp.addresses.grpc, dataDir: agentDir, localApi: { port: 0 } } });
    const restarted = await startAgent(config, { logger });
    try {
      // The one error logged is the refusal itself, with its stable code.
      expect(lines.filter((l) => l.level >= 50).map((l) => `${l.msg}: ${l.code ?? l.err?.message ?? ''}`)).toEqual([
        'model update refused; the running model stays: RELEASE_ACTIVATION_INTERRUPTED',
      ]);
      expect((await inferOnce(restarted.localApiUrl, row)).status).toBe(200);
      const health = (await (await fetch(`${restarted.localApiUrl}/healthz`)).json()) as { details: { activeModel: { name: string; version: number } | null } };
      expect(health.details.activeModel).toMatchObject({ name: 'vibration', version: 1 });
    } finally {
      await restarted.shutdown();
    }
  }, 120_000);
});
