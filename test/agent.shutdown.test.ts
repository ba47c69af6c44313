import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startAgent } from '../agent/agent.js';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { loadAgentConfig } from '../agent/config.js';
import { writeIdentity } from '../agent/enrollment/identity.js';
import { agentPaths } from '../agent/paths.js';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { holdPort } from './helpers/processes.js';

const dir = mkdtempSync(join(tmpdir(), 'driftline-agent-shutdown-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('agent shutdown', () => {
  it('ends within its configured shutdownGrace when telemetry cannot drain, and what was not acknowledged stays buffered', async () => {
    // A broker that is not there: nothing the agent records can be acknowledged.
    const held = await holdPort();
    await held.release();
    const dataDir = join(dir, 'offline');
    writeIdentity(dataDir, {
      deviceId: 'edge-offline',
      credential: { kind: 'mqtt-password', username: 'edge-offline', password: 'secret' },
      uplinkUrl: `mqtt://127.0.0.1:${held.port}`,
      artifactBaseUrl: `http://127.0.0.1:${held.port}`,
      enrolledAtMs: 0,
    });
    const clock = new ManualClock(Date.now());
    // Ten minutes of grace: on real timers the drain alone would outlast the test.
    const config = loadAgentConfig({
      env: {},
      flags: { dataDir, localApi: { port: 0 }, shutdownGrace: '10m', mqtt: { reconnectMin: '1s', reconnectMax: '1s' } },
    });
    const agent = await startAgent(config, { logger: silentLogger(), clock });
    await agent.reportState();
    let stopped = false;
    const stopping = agent.shutdown().then(() => (stopped = true));
    // The grace is the clock's: advancing it past the grace ends the shutdown, whatever is still in flight.
    for (let i = 0; i < 1_000 && !stopped; i++) await clock.advanceAsync(60_000);
    await stopping;
    expect(agent.state).toBe('stopped');
    expect(agent.stats().bufferDepth).toBeGreaterThan(0);
    const buffer = SqliteBuffer.open({ file: agentPaths(dataDir).buffer, synchronous: 'FULL' });
    expect(buffer.depth()).toBe(agent.stats().bufferDepth);
    await buffer.close();
  });
});
