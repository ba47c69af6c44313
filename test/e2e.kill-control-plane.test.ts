import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { vibrationRowSampler } from '../demo/model/vibration-data.js';
import { inferOnce } from './helpers/agent-traffic.js';
import { fleetApi } from './helpers/fleet-api.js';
import { freePort, startProcess, stopProcess, waitFor, type RunningProcess } from './helpers/processes.js';

const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const AGENT_STOPPED = /^driftline-agent: stopped device=(\S+) enqueued=(\d+) acknowledged=(\d+) buffered=(\d+) dropped=(\d+)$/;

describe('kill -9 of the control plane while telemetry flows', () => {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-kill-'));
  const processes: RunningProcess[] = [];
  afterAll(async () => {
    for (const p of processes) await stopProcess(p, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('stores every record the agent buffered exactly once after the restart', async () => {
    // Fixed ports: the restarted control plane must come back where the agent expects it.
    const ports = { grpc: await freePort(), http: await freePort(), mqtt: await freePort() };
    const serveArgs = ['serve', '--data-dir', join(dir, 'cp'), '--grpc-port', `${ports.grpc}`, '--http-port', `${ports.http}`, '--mqtt-port', `${ports.mqtt}`];
    const startControlPlane = async (): Promise<RunningProcess> => {
      const p = await startProcess('bin/driftline.js', serveArgs, LISTENING);
      processes.push(p);
      return p;
    };
    let controlPlane = await startControlPlane();
    const grpc = controlPlane.ready[1]!;
    const api = fleetApi(grpc, controlPlane.ready[4]!);

    // Fast reconnects keep the test short; the defaults are for fleets.
    const agentConfig = join(dir, 'agent.yaml');
    writeFileSync(agentConfig, 'mqtt:\n  reconnectMin: 100ms\n  reconnectMax: 500ms\nuplink:\n  ackTimeout: 2s\n  maxBatchRecords: 20\nshutdownGrace: 30s\n');
    const token = await api.createEnrollmentToken('edge-kill-1');
    const agent = await startProcess(
      'bin/driftline-agent.js',
      [
        'run',
        '--config',
        agentConfig,
        '--device-id',
        'edge-kill-1',
        '--enroll-token',
        token,
        '--server',
        grpc,
        '--data-dir',
        join(dir, 'agent'),
        '--local-port',
        '0',
      ],
      AGENT_READY,
    );
    processes.push(agent);
    const localApi = agent.ready[2]!;
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration');
    await waitFor(
      () => inferOnce(localApi, [1, 2, 3, 4, 5, 6, 7, 8]).then((r) => r.status),
      (s) => s === 200,
      { what: 'model active' },
    );
    api.close();

    // Inference is local, so traffic goes on while the control plane is down.
    const next = vibrationRowSampler(11);
    let sent = 0;
    let running = true;
    const traffic = (async () => {
      while (running) {
        const { status } = await inferOnce(localApi, next().features);
        expect(status).toBe(200);
        sent++;
      }
    })();

    await waitFor(
      () => sent,
      (n) => n >= 100,
      { what: 'traffic before the kill' },
    );
    controlPlane.child.kill('SIGKILL');
    await controlPlane.exited;
    const sentWhileDown = sent;
    await waitFor(
      () => sent,
      (n) => n >= sentWhileDown + 100,
      { what: 'traffic while the control plane is down' },
    );
    controlPlane = await startControlPlane();
    await waitFor(
      () => sent,
      (n) => n >= sentWhileDown + 250,
      { what: 'traffic after the restart' },
    );
    running = false;
    await traffic;

    await stopProcess(agent);
    expect(await agent.exited).toBe(0);
    const [, , enqueued, acknowledged, buffered, dropped] = (await agent.line(AGENT_STOPPED)).map(Number);
    expect({ buffered, dropped, acknowledged }).toEqual({ buffered: 0, dropped: 0, acknowledged: enqueued });
    expect(enqueued).toBeGreaterThan(sent);

    await stopProcess(controlPlane);
    const db = new Database(join(dir, 'cp', 'control-plane.db'), { readonly: true });
    const rows = db
      .prepare(
        `SELECT count(*) AS n, count(DISTINCT boot || ':' || seq) AS distinctIds, sum(kind = 'inference') AS inferences FROM telemetry_records WHERE device_id = ?`,
      )
      .get('edge-kill-1') as Record<string, number>;
    db.close();
    expect(rows).toEqual({ n: enqueued, distinctIds: enqueued, inferences: sent + 1 });
  });
});
