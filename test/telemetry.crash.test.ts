/**
 * kill -9 of the agent while it records telemetry under inference load, and while it
 * uploads a backlog (with the control plane, which hosts the broker, killed and restarted
 * during the same drain). Control plane and agent are real processes with real SQLite
 * files. The accounting comes from the two files: the buffer's sequence numbers are its
 * AUTOINCREMENT rowids, and SQLite hands them out without gaps to committed transactions
 * only, so the records the buffer ever committed are exactly seq 1..sqlite_sequence. Each
 * of them must be in the control plane's store exactly once, or be counted as dropped.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { vibrationRowSampler } from '../demo/model/vibration-data.js';
import { inferOnce } from './helpers/agent-traffic.js';
import { fleetApi } from './helpers/fleet-api.js';
import { freePort, startProcess, stopProcess, waitFor, type RunningProcess } from './helpers/processes.js';

const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const AGENT_STOPPED = /^driftline-agent: stopped device=(\S+) enqueued=(\d+) acknowledged=(\d+) buffered=(\d+) dropped=(\d+)$/;
const DEVICE = 'edge-crash-1';

interface BufferFile {
  /** The highest seq the buffer ever committed. */
  committed: number;
  /** Records still waiting for an ack. */
  pending: number;
  boot: number;
  dropped: number;
}

describe('telemetry survives kill -9 of the agent and of the control plane', () => {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-telemetry-crash-'));
  const agentDir = join(dir, 'agent');
  const storeFile = join(dir, 'cp', 'control-plane.db');
  const processes: RunningProcess[] = [];
  let serveArgs: string[];
  let controlPlane: RunningProcess;
  let grpc: string;
  let agent: RunningProcess;
  let starts = 0;

  const startControlPlane = async (): Promise<RunningProcess> => {
    const p = await startProcess('bin/driftline.js', serveArgs, LISTENING);
    processes.push(p);
    return p;
  };
  const startAgentProcess = async (enrollArgs: string[] = []): Promise<RunningProcess> => {
    const p = await startProcess(
      'bin/driftline-agent.js',
      ['run', '--config', join(dir, 'agent.yaml'), '--server', grpc, '--data-dir', agentDir, '--local-port', '0', ...enrollArgs],
      AGENT_READY,
    );
    processes.push(p);
    starts++;
    return p;
  };
  const killAgent = async (): Promise<void> => {
    agent.child.kill('SIGKILL');
    expect(await agent.exited).toBe(null);
  };

  const readBuffer = (): BufferFile => {
    const db = new Database(join(agentDir, 'buffer.db'), { readonly: true });
    try {
      const committed = (db.prepare(`SELECT seq FROM sqlite_sequence WHERE name = 'outbox'`).get() as { seq: number } | undefined)?.seq ?? 0;
      const pending = (db.prepare('SELECT count(*) AS n FROM outbox').get() as { n: number }).n;
      const state = (key: string): string | undefined =>
        (db.prepare('SELECT value FROM agent_state WHERE key = ?').get(key) as { value: string } | undefined)?.value;
      const drops = JSON.parse(state('buffer.drops') ?? '{}') as Record<string, Record<string, number>>;
      const dropped = Object.values(drops).reduce((n, reasons) => n + Object.values(reasons).reduce((a, b) => a + b, 0), 0);
      return { committed, pending, boot: Number(state('boot')), dropped };
    } finally {
      db.close();
    }
  };
  const readStore = (): { n: number; distinctSeqs: number; minSeq: number | null; maxSeq: number | null; boots: number } => {
    const db = new Database(storeFile, { readonly: true });
    try {
      return db
        .prepare(
          `SELECT count(*) AS n, count(DISTINCT seq) AS distinctSeqs, min(seq) AS minSeq, max(seq) AS maxSeq, count(DISTINCT boot) AS boots FROM telemetry_records WHERE device_id = ?`,
        )
        .get(DEVICE) as ReturnType<typeof readStore>;
    } finally {
      db.close();
    }
  };
  const storedCount = (): number => readStore().n;

  /**
   * Checks the buffer file against the store, once the agent has drained: stopped cleanly, or
   * idle (no inference traffic). An idle agent still makes system and drift records every 2 s,
   * so the idle check reads the buffer, then the store, until it finds a moment with nothing
   * in flight between the two.
   */
  const expectEveryCommittedRecordStoredOnce = async (how: 'stop' | 'idle'): Promise<void> => {
    let buffer: BufferFile;
    let store: ReturnType<typeof readStore>;
    if (how === 'stop') {
      await stopProcess(agent);
      expect(await agent.exited).toBe(0);
      const [, , , , buffered, dropped] = (await agent.line(AGENT_STOPPED)).map(Number);
      expect({ buffered, dropped }).toEqual({ buffered: 0, dropped: 0 });
      [buffer, store] = [readBuffer(), readStore()];
    } else {
      [buffer, store] = await waitFor(
        () => [readBuffer(), readStore()] as const,
        ([b, s]) => b.pending === 0 && s.n === b.committed,
        { what: 'the agent drained' },
      );
    }
    expect(buffer).toMatchObject({ pending: 0, dropped: 0, boot: starts });
    // Every seq the buffer committed, across all boots, is in the store once; nothing else is.
    expect(store).toEqual({ n: buffer.committed, distinctSeqs: buffer.committed, minSeq: 1, maxSeq: buffer.committed, boots: starts });
  };

  /** Inference traffic on the agent's local API until stopped or until the agent dies. */
  const traffic = (localApi: string, seed: number) => {
    const next = vibrationRowSampler(seed);
    const state = { ok: 0, running: true, failed: false };
    const done = (async () => {
      while (state.running) {
        try {
          if ((await inferOnce(localApi, next().features)).status === 200) state.ok++;
        } catch {
          state.failed = true;
          return;
        }
      }
    })();
    return {
      state,
      stop: async () => {
        state.running = false;
        await done;
      },
      done,
    };
  };

  beforeAll(async () => {
    // Fixed ports: a restarted control plane must come back where the agent expects it.
    const ports = { grpc: await freePort(), http: await freePort(), mqtt: await freePort() };
    serveArgs = ['serve', '--data-dir', join(dir, 'cp'), '--grpc-port', `${ports.grpc}`, '--http-port', `${ports.http}`, '--mqtt-port', `${ports.mqtt}`];
    controlPlane = await startControlPlane();
    grpc = controlPlane.ready[1]!;
    // Small batches, one in flight, and a bandwidth cap: a backlog takes a few seconds to
    // drain, so a kill lands in the middle of it. Fast reconnects keep the test short.
    writeFileSync(
      join(dir, 'agent.yaml'),
      [
        'mqtt:\n  reconnectMin: 100ms\n  reconnectMax: 400ms\n  keepalive: 2s',
        'uplink:\n  ackTimeout: 2s\n  maxBatchRecords: 10\n  maxInflightBatches: 1\n  maxBytesPerSecond: 8KiB',
        // System metrics and drift windows every 2 s: their records are committed, killed and resent like the rest.
        `schedule:\n  uplinkCheck: '* * * * * *'\n  system: '*/2 * * * * *'\n  driftWindow: '*/2 * * * * *'`,
        'shutdownGrace: 30s\n',
      ].join('\n'),
    );
    const api = fleetApi(grpc, controlPlane.ready[4]!);
    const token = await api.createEnrollmentToken(DEVICE);
    agent = await startAgentProcess(['--device-id', DEVICE, '--enroll-token', token]);
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration');
    await waitFor(
      () => inferOnce(agent.ready[2]!, [1, 2, 3, 4, 5, 6, 7, 8]).then((r) => r.status),
      (s) => s === 200,
      { what: 'model active' },
    );
    api.close();
  });

  afterAll(async () => {
    for (const p of processes) await stopProcess(p, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('crash - kill -9 of the agent while it records under inference load loses no committed record', async () => {
    // Two clients keep the recorder busy: group commits are going on when the kill lands.
    // Telemetry is committed after the answer (acknowledged to nobody), so the wait is for the
    // buffer file's own commits, not for answers: on a loaded machine commits trail answers.
    let loads = [traffic(agent.ready[2]!, 1), traffic(agent.ready[2]!, 2)];
    await waitFor(
      () => readBuffer().committed,
      (n) => n >= 150,
      { what: 'telemetry committed under inference load before the kill' },
    );
    expect(loads.every((l) => !l.state.failed)).toBe(true);
    await killAgent();
    await Promise.all(loads.map((l) => l.done));
    expect(loads.every((l) => l.state.failed)).toBe(true);
    const afterKill = readBuffer();
    expect(afterKill.committed).toBeGreaterThanOrEqual(150);

    // The same data folder, a new boot: the model comes back from disk and the records left behind go up.
    agent = await startAgentProcess();
    expect(readBuffer().boot).toBe(2);
    loads = [traffic(agent.ready[2]!, 3)];
    await waitFor(
      () => loads[0]!.state.ok,
      (n) => n >= 50,
      { what: 'inference traffic after the restart' },
    );
    await loads[0]!.stop();
    await expectEveryCommittedRecordStoredOnce('idle');
  });

  it('crash - kill -9 of the agent and of the control plane in the middle of draining a backlog loses no committed record', async () => {
    // The agent of the first test (boot 2) goes on.
    // The control plane goes away; inference goes on and builds a backlog.
    controlPlane.child.kill('SIGKILL');
    await controlPlane.exited;
    const load = traffic(agent.ready[2]!, 4);
    await waitFor(
      () => load.state.ok,
      (n) => n >= 200,
      { what: 'a backlog while the control plane is down' },
    );
    await load.stop();
    // Their records are committed a window after the answers.
    await waitFor(
      () => readBuffer().pending,
      (n) => n >= 200,
      { what: 'the backlog committed' },
    );

    // Back up: the drain starts; the control plane is killed again in the middle of it.
    const before = storedCount();
    controlPlane = await startControlPlane();
    await waitFor(storedCount, (n) => n >= before + 30, { what: 'the drain under way' });
    controlPlane.child.kill('SIGKILL');
    await controlPlane.exited;
    controlPlane = await startControlPlane();
    const resumed = storedCount();
    await waitFor(storedCount, (n) => n >= resumed + 30, { what: 'the drain resumed after the control plane restart' });

    // And now the agent dies mid-drain: part of the backlog is stored, part is still buffered.
    await killAgent();
    const atKill = readBuffer();
    expect(atKill.pending).toBeGreaterThan(0);
    expect(storedCount()).toBeGreaterThan(before);

    agent = await startAgentProcess();
    await waitFor(
      () => readBuffer().pending,
      (n) => n === 0,
      { what: 'the rest of the backlog drained after the restart' },
    );
    await expectEveryCommittedRecordStoredOnce('stop');
  });
});
