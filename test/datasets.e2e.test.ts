/**
 * Datasets end to end: a wired agent captures samples and its application posts labels; the
 * control plane joins them; the operator CLI (the compiled binary, over real gRPC) creates,
 * shows and exports a snapshot, and switches raw capture off (`datasets capture --off`, `models push --no-raw-capture`).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSnapshotFolder, SPLITS } from '../common/datasets/snapshot-layout.js';
import type { ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { vibrationRowSampler } from '../demo/model/vibration-data.js';
import { inferOnce } from './helpers/agent-traffic.js';
import type { FleetApi } from './helpers/fleet-api.js';
import { REPO_ROOT, waitFor } from './helpers/processes.js';
import { startEnrolledAgent, startTestControlPlane, type WiredAgent } from './helpers/wired-agent.js';

const BIN = join(REPO_ROOT, 'bin/driftline.js');
const DEVICE = 'edge-datasets';
const LABELLED = 24;

describe('datasets from a wired agent, through the CLI', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let agent: WiredAgent;
  let token: string;

  const driftline = (...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => {
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env.DRIFTLINE_TOKEN;
    return new Promise((resolve) => {
      execFile(process.execPath, [BIN, '--server', cp.addresses.grpc, '--token', token, ...args], { cwd: dir, env }, (error, stdout, stderr) =>
        resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
      );
    });
  };
  const codeOf = (stderr: string): string | undefined => /^error \[([A-Z_]+)\]/m.exec(stderr)?.[1];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-datasets-e2e-'));
    ({ cp, api } = await startTestControlPlane(dir));
    token = readFileSync(cp.adminTokenFile, 'utf8').trim();
    agent = await startEnrolledAgent(cp, api, DEVICE, join(dir, 'agent'), { capture: { sampleRate: 1, errors: false } });
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration', [DEVICE]);
    const next = vibrationRowSampler(3);
    await waitFor(
      () => inferOnce(agent.localApiUrl, next().features).then((r) => r.status),
      (s) => s === 200,
      { what: 'model active on the agent' },
    );
  });

  afterAll(async () => {
    await agent?.shutdown();
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('joins each captured sample with the label posted for its response id, and the CLI creates, shows and exports the snapshot', async () => {
    const next = vibrationRowSampler(5);
    const answered: Array<{ id: string; label: number }> = [];
    for (let i = 0; i < LABELLED * 2; i++) {
      const { status, body } = await inferOnce(agent.localApiUrl, next().features);
      expect(status).toBe(200);
      if (i % 2 === 0) answered.push({ id: body.id as string, label: i % 3 });
    }
    const feedback = await fetch(`${agent.localApiUrl}/v2/models/vibration/feedback`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ items: answered }),
    });
    expect(feedback.status).toBe(202);
    await waitFor(
      () => cp.samples.stats('vibration'),
      (s) => s.labelled >= LABELLED && s.rows >= LABELLED * 2,
      { what: 'samples and their labels joined at the control plane' },
    );

    const created = await driftline('--json', 'datasets', 'create', '--model', 'vibration', '--labelled-only');
    expect(created.code, created.stderr).toBe(0);
    const dataset = JSON.parse(created.stdout) as { id: string; rows: number; sha256: string; splits: Record<string, { labelled: number }> };
    expect(dataset.rows).toBe(LABELLED);
    expect(SPLITS.reduce((n, s) => n + dataset.splits[s]!.labelled, 0)).toBe(LABELLED);

    const shown = await driftline('datasets', 'show', dataset.id);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(/SPLIT\s+ROWS\s+LABELLED\s+LABEL BALANCE/);
    expect(shown.stdout).toMatch(/FEATURE\s+MEAN\s+STD\s+MIN\s+MAX/);

    const folder = join(dir, 'export');
    const exported = await driftline('datasets', 'export', dataset.id, '--out', folder);
    expect(exported.code, exported.stderr).toBe(0);
    const { manifest, splits } = readSnapshotFolder(folder);
    expect(manifest.id).toBe(dataset.id);
    const labels = new Map(answered.map((a) => [a.id, a.label]));
    // Each row's label is the one posted for that response: the sample's request id joined it.
    const total = SPLITS.reduce((n, s) => n + splits[s].ids.length, 0);
    expect(total).toBe(LABELLED);
    const counts = [0, 0, 0];
    for (const s of SPLITS) for (const y of splits[s].y) counts[Number(y)]!++;
    const posted = [0, 0, 0];
    for (const label of labels.values()) posted[label]!++;
    expect(counts).toEqual(posted);

    const tarFile = join(dir, 'snapshot.tar');
    const asTar = await driftline('--json', 'datasets', 'export', dataset.id, '--out', tarFile);
    expect(asTar.code, asTar.stderr).toBe(0);
    expect(JSON.parse(asTar.stdout)).toMatchObject({ sha256: dataset.sha256 });

    const listed = JSON.parse((await driftline('--json', 'datasets', 'list')).stdout) as { datasets: Array<{ id: string }> };
    expect(listed.datasets.map((d) => d.id)).toEqual([dataset.id]);
  });

  it('a model marked "no raw capture" refuses datasets create and the samples the agent sends', async () => {
    const off = await driftline('datasets', 'capture', 'vibration', '--off');
    expect(off.code, off.stderr).toBe(0);
    const refused = await driftline('datasets', 'create', '--model', 'vibration');
    expect(codeOf(refused.stderr)).toBe('DATASET_RAW_CAPTURE_OFF');
    expect(refused.stderr).toMatch(/federated learning/);
    const before = (await cp.samples.stats('vibration')).rows;
    expect((await inferOnce(agent.localApiUrl, vibrationRowSampler(9)().features)).status).toBe(200);
    await waitFor(
      () =>
        driftline('--json', 'datasets', 'samples', '--model', 'vibration').then(
          (r) => JSON.parse(r.stdout) as { models: Array<{ refused: Record<string, number> }> },
        ),
      (s) => (s.models[0]?.refused.SAMPLE_RAW_CAPTURE_OFF ?? 0) >= 1,
      { what: 'the sample refused at ingest and counted' },
    );
    expect((await cp.samples.stats('vibration')).rows).toBe(before);
  });

  it('models push --no-raw-capture marks the model: models get shows it, its samples are refused and never kept, datasets create refuses it', async () => {
    const file = join(dir, 'sealed.onnx');
    writeFileSync(file, buildDemoModel({}).bytes);
    const pushed = await driftline('--json', 'models', 'push', file, '--name', 'sealed', '--no-raw-capture');
    expect(pushed.code, pushed.stderr).toBe(0);
    expect(JSON.parse(pushed.stdout)).toMatchObject({ name: 'sealed', version: 1, rawCapture: false });
    const got = await driftline('--json', 'models', 'get', 'sealed');
    expect(got.code, got.stderr).toBe(0);
    expect(JSON.parse(got.stdout)).toMatchObject({ name: 'sealed', rawCapture: false, versions: [{ version: 1 }] });
    expect((await driftline('models', 'get', 'sealed')).stdout).toMatch(/raw capture: off/);

    const deployed = await driftline('models', 'deploy', 'sealed', '--device', DEVICE);
    expect(deployed.code, deployed.stderr).toBe(0);
    const next = vibrationRowSampler(11);
    await waitFor(
      () => inferOnce(agent.localApiUrl, next().features, 'sealed').then((r) => r.status),
      (s) => s === 200,
      { what: 'the "no raw capture" model active on the agent' },
    );
    await waitFor(
      () =>
        driftline('--json', 'datasets', 'samples', '--model', 'sealed').then(
          (r) => JSON.parse(r.stdout) as { models: Array<{ rows: number; rawCapture: boolean; refused: Record<string, number> }> },
        ),
      (s) => (s.models[0]?.refused.SAMPLE_RAW_CAPTURE_OFF ?? 0) >= 1,
      { what: "the agent's sample of the model refused at ingest and counted" },
    );
    expect((await cp.samples.stats('sealed')).rows).toBe(0);
    const refused = await driftline('datasets', 'create', '--model', 'sealed');
    expect(codeOf(refused.stderr)).toBe('DATASET_RAW_CAPTURE_OFF');
    expect(refused.stderr).toMatch(/federated learning/);
  });
});
