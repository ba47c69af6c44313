/**
 * A label the local API acknowledged (202) survives kill -9 of the agent: the answer waits
 * for the label's group commit. Real control plane and agent processes, real SQLite files.
 * The agent commits at most once a second (buffer.commitDelay) and batches its uploads
 * slowly, so a label acknowledged before its commit would still be waiting in memory when
 * the kill lands.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { inferOnce } from './helpers/agent-traffic.js';
import { fleetApi } from './helpers/fleet-api.js';
import { startProcess, stopProcess, waitFor, type RunningProcess } from './helpers/processes.js';

const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const DEVICE = 'edge-feedback-crash';
const row = [4.1, 12, 2.9, 3.2, 2.5, 0.9, 0.4, 41];

describe('feedback survives kill -9 of the agent', () => {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-feedback-crash-'));
  const agentDir = join(dir, 'agent');
  const processes: RunningProcess[] = [];
  let grpc: string;
  let agent: RunningProcess;

  const startAgent = async (enrollArgs: string[] = []): Promise<RunningProcess> => {
    const p = await startProcess(
      'bin/driftline-agent.js',
      ['run', '--config', join(dir, 'agent.yaml'), '--server', grpc, '--data-dir', agentDir, '--local-port', '0', ...enrollArgs],
      AGENT_READY,
    );
    processes.push(p);
    return p;
  };

  beforeAll(async () => {
    const controlPlane = await startProcess(
      'bin/driftline.js',
      ['serve', '--data-dir', join(dir, 'cp'), '--grpc-port', '0', '--http-port', '0', '--mqtt-port', '0'],
      LISTENING,
    );
    processes.push(controlPlane);
    grpc = controlPlane.ready[1]!;
    writeFileSync(
      join(dir, 'agent.yaml'),
      ['buffer:\n  commitDelay: 1s', 'uplink:\n  batchDelay: 5s', 'mqtt:\n  reconnectMin: 100ms\n  reconnectMax: 400ms', 'shutdownGrace: 5s\n'].join('\n'),
    );
    const api = fleetApi(grpc, controlPlane.ready[4]!);
    agent = await startAgent(['--device-id', DEVICE, '--enroll-token', await api.createEnrollmentToken(DEVICE)]);
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration');
    await waitFor(
      () => inferOnce(agent.ready[2]!, row).then((r) => r.status),
      (s) => s === 200,
      { what: 'model active' },
    );
    api.close();
  });

  afterAll(async () => {
    for (const p of processes) await stopProcess(p, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('feedback - a label answered 202 is in the store after the agent is killed with SIGKILL right after the answer and restarted', async () => {
    const answered = await inferOnce(agent.ready[2]!, row);
    expect(answered.status).toBe(200);
    const id = answered.body.id as string;
    const response = await fetch(`${agent.ready[2]}/v2/models/vibration/feedback`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ id, label: 1 }),
    });
    expect(response.status).toBe(202);
    agent.child.kill('SIGKILL');
    expect(await agent.exited).toBe(null);

    agent = await startAgent();
    const db = new Database(join(dir, 'cp', 'control-plane.db'), { readonly: true });
    try {
      const rows = await waitFor(
        () => db.prepare(`SELECT record FROM telemetry_records WHERE device_id = ? AND kind = 'label'`).all(DEVICE) as Array<{ record: Buffer }>,
        (r) => r.length > 0,
        { what: 'the acknowledged label stored by the control plane', timeoutMs: 30_000 },
      );
      const labels = rows.map((r) => TelemetryRecord.decode(r.record).body).map((b) => (b?.$case === 'label' ? b.value : undefined));
      expect(labels).toEqual([expect.objectContaining({ requestId: id, label: 1 })]);
    } finally {
      db.close();
    }
  });
});
